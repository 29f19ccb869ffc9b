"""Config loading/overrides and the deterministic, rank-disjoint batch loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from focus_optim.lm.config import TrainConfig, apply_overrides, load_config, parse_value
from focus_optim.lm.loader import TrainLoader, WindowSampler, val_windows


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('optimizer = "focus"\nlr = 1\n[optimizer_args]\nbetas = [0.9, 0.99]\ngamma = 0.2\n')
    cfg = load_config(path, ["lr=6e-4", "optimizer_args.gamma=0.3", "compile=true", "out_dir=runs/x"])
    assert cfg.optimizer == "focus" and cfg.lr == 6e-4 and cfg.compile is True and cfg.out_dir == "runs/x"
    assert cfg.optimizer_args == {"betas": (0.9, 0.99), "gamma": 0.3}
    assert isinstance(load_config(path).lr, float)  # TOML `lr = 1` is an int
    assert parse_value("adamw") == "adamw" and parse_value("[1, 2]") == [1, 2] and parse_value('"3"') == "3"
    assert parse_value("(0.9,0.95)") == [0.9, 0.95] and parse_value("(a") == "(a"  # --optimizers' tuple form


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown config key 'learning_rate'; valid: .*\blr\b"):
        load_config(None, ["learning_rate=1e-3"])
    path = tmp_path / "c.toml"
    path.write_text("lr = 1e-3\nwarmup = 10\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\): warmup; valid: .*warmup_steps"):
        load_config(path)
    with pytest.raises(ValueError, match="Unknown config key"):
        TrainConfig.from_dict({"batchsize": 3})
    with pytest.raises(ValueError, match="Invalid dtype"):
        load_config(None, ["dtype=fp8"])
    with pytest.raises(ValueError, match=r"Invalid compile_mode 'fast'.*max-autotune-no-cudagraphs"):
        load_config(None, ["compile_mode='fast'"])
    assert load_config(None, ["compile_mode='max-autotune'"]).compile_mode == "max-autotune"
    with pytest.raises(ValueError, match="Invalid batch_size"):
        load_config(None, ["batch_size='many'"])
    with pytest.raises(ValueError, match="expected key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ValueError, match=r"Invalid zero = true with parallel = 'fsdp'.*FSDP shards"):
        load_config(None, ["zero=true", "parallel='fsdp'"])
    assert load_config(None, ["zero=true"]).zero is True
    with pytest.raises(
        ValueError, match=r"Invalid inductor_args key 'coordinate_descent'.*torch._inductor.config"
    ):
        load_config(None, ["inductor_args.coordinate_descent=true"])
    tuned = load_config(None, ["inductor_args.coordinate_descent_tuning=true"])
    assert tuned.inductor_args == {"coordinate_descent_tuning": True}
    with pytest.raises(ValueError, match=r"only optimizer_args, model_args, inductor_args are tables"):
        load_config(None, ["lr.x=1"])


@pytest.mark.parametrize(
    "override",
    [
        "grad_clip=-1",
        "eval_sequences=0",
        "peak_flops=0",
        "decay_steps=-1",
        "eval_interval=-2",
        "ckpt_interval=-1",
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(override):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=rf"Invalid {key} \S+ \(allowed: [>=]"):
        load_config(None, [override])


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64])
def test_a_seed_out_of_range_names_seed_and_the_range(seed):
    with pytest.raises(
        ValueError, match=rf"Invalid seed {seed} \(allowed: an integer in 0 \.\. 2\*\*63 - 1\)"
    ):
        load_config(None, [f"seed={seed}"])


def test_the_largest_seed_is_one_every_seeded_generator_takes():
    from focus_optim.lm.train import _seed_all

    cfg = load_config(None, [f"seed={2**63 - 1}"])
    _seed_all(cfg.seed + 1 + 7)  # what rank 7 of a run seeds its streams with
    for sampling in ("shuffle", "random"):
        WindowSampler(100, 8, cfg.seed, sampling).starts(0, 4)


@pytest.mark.parametrize("key", ["lr", "decay_embeddings"])
def test_optimizer_args_cannot_hold_what_the_trainer_passes_itself(tmp_path, key):
    want = rf"Invalid optimizer_args key '{key}': it is set by the config key '{key}' \({key} = "
    with pytest.raises(ValueError, match=want):
        load_config(None, [f"optimizer_args.{key}=0.1"])
    path = tmp_path / "c.toml"
    path.write_text(f"optimizer_args = {{ {key} = 0.1, weight_decay = 0.1 }}\n")
    with pytest.raises(ValueError, match=want):
        load_config(path)


def test_config_files_base_chains_are_checked(tmp_path):
    own = tmp_path / "self.toml"
    own.write_text('base = "self.toml"\nlr = 1e-3\n')
    with pytest.raises(
        ValueError, match=r"self\.toml: the base files form a cycle \(.*self\.toml -> .*self\.toml\)"
    ):
        load_config(own)
    (tmp_path / "a.toml").write_text('base = "sub/b.toml"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.toml").write_text('base = "../a.toml"\n')
    with pytest.raises(ValueError, match=r"a\.toml -> .*b\.toml -> .*a\.toml\)"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "ok.toml").write_text('base = "sub/c.toml"\nlr = 2e-3\n')
    (tmp_path / "sub" / "c.toml").write_text('base = "d.toml"\nlr = 1e-3\nseed = 3\n')
    (tmp_path / "sub" / "d.toml").write_text("seed = 4\nmax_steps = 5\n")
    ok = load_config(tmp_path / "ok.toml")  # a chain without a cycle still works
    assert (ok.lr, ok.seed, ok.max_steps) == (2e-3, 3, 5)
    for text in ("base = 5\n", "[base]\nfile = 'x.toml'\n", 'base = ""\n'):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(
            ValueError, match=r"bad\.toml: invalid base .* \(allowed: the path of another TOML"
        ):
            load_config(path)


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"latin1\.toml: not a TOML file \(not UTF-8 text: invalid continuation byte"
    ):
        load_config(path)
    path.write_bytes('name = "caf\xe9"\n'.encode())
    assert load_config(path).name == "caf\xe9"


def test_a_missing_config_file_or_base_is_named_with_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError, match=rf"^config file nope\.toml does not exist \(relative to {tmp_path}\)$"
    ):
        load_config("nope.toml")
    with pytest.raises(FileNotFoundError, match=rf"^config file {tmp_path} is not a file$"):
        load_config(tmp_path)
    (tmp_path / "child.toml").write_text('base = "gone.toml"\n')
    with pytest.raises(FileNotFoundError, match=r"gone\.toml does not exist"):
        load_config("child.toml")


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("max_steps", "abc", "an integer"), ("lr", "fast", "a number"), ("compile", 3, "true or false")],
)
def test_a_value_of_the_wrong_type_names_the_type_in_words(key, value, allowed):
    with pytest.raises(ValueError, match=rf"^Invalid {key}: {value!r} \(allowed: {allowed}\)$"):
        TrainConfig.from_dict({key: value})


def test_cli_flags_keep_strings_strings():
    import argparse

    from focus_optim.lm.cli import TRAIN_FLAGS, _config_args, _load

    parser = argparse.ArgumentParser()
    _config_args(parser, TRAIN_FLAGS)
    flags = ["--out-dir", "2024", "--model", "1", "--lr", "1e-3", "--max-steps", "7", "--compile"]
    args = parser.parse_args(flags)
    cfg = _load(args, TRAIN_FLAGS)
    assert (cfg.out_dir, cfg.model, cfg.lr, cfg.max_steps, cfg.compile) == ("2024", "1", 1e-3, 7, True)
    with pytest.raises(ValueError, match=r"Invalid lr: 'fast'"):
        _load(parser.parse_args(["--lr", "fast"]), TRAIN_FLAGS)


def _tokens(tmp_path, n=5000):
    path = tmp_path / "train.bin"
    np.arange(n, dtype=np.uint16).tofile(path)
    return path


@pytest.mark.parametrize("sampling", ["shuffle", "random"])
def test_ranks_read_disjoint_parts_of_the_same_global_batch(tmp_path, sampling):
    path = _tokens(tmp_path)
    kw = dict(batch_size=3, block_size=16, grad_accum=4, seed=5, sampling=sampling)
    single = TrainLoader(path, **kw)
    ranks = [TrainLoader(path, rank=r, world_size=2, **kw) for r in range(2)]
    try:
        for _ in range(3):  # three optimizer steps
            one = torch.cat([single.next()[0] for _ in range(4)])
            two = torch.cat([torch.cat([ld.next()[0] for _ in range(2)]) for ld in ranks])
            assert sorted(map(tuple, one.tolist())) == sorted(map(tuple, two.tolist()))
    finally:
        for ld in (single, *ranks):
            ld.close()


def test_loader_batches_are_shifted_windows_and_resumable(tmp_path):
    path = _tokens(tmp_path)
    first = TrainLoader(path, batch_size=2, block_size=8, seed=1)
    batches = [first.next() for _ in range(5)]
    first.close()
    x, y = batches[0]
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    resumed = TrainLoader(path, batch_size=2, block_size=8, seed=1, consumed=3)
    for want in batches[3:]:
        got = resumed.next()
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    resumed.close()


def test_a_failing_reader_thread_raises_instead_of_hanging(tmp_path, monkeypatch):
    path = _tokens(tmp_path)
    real = TrainLoader.cpu_batch

    def failing(self, j):
        if j == 3:
            raise OSError("disk gone")
        return real(self, j)

    monkeypatch.setattr(TrainLoader, "cpu_batch", failing)
    loader = TrainLoader(path, batch_size=2, block_size=8, seed=1)
    try:
        for _ in range(2):
            loader.next()  # batches 0, 1 (2 is already on its way)
        for _ in range(2):  # the failure surfaces, naming the file, and stays
            with pytest.raises(RuntimeError, match=r"train.bin failed: OSError\('disk gone'\)"):
                loader.next()
    finally:
        loader.close()


def test_shuffle_visits_every_window_once_per_epoch():
    s = WindowSampler(n_tokens=1001, block_size=10, seed=3, sampling="shuffle")
    assert s.n_windows == 100
    epoch0, epoch1 = s.starts(0, 100), s.starts(100, 100)
    assert sorted(epoch0.tolist()) == list(range(0, 1000, 10)) == sorted(epoch1.tolist())
    assert not np.array_equal(epoch0, epoch1)
    assert np.array_equal(s.starts(95, 10), np.concatenate([epoch0[95:], epoch1[:5]]))
    r = WindowSampler(n_tokens=1001, block_size=10, seed=3, sampling="random").starts(0, 10_000)
    assert r.min() >= 0 and r.max() <= 1001 - 11 and len(np.unique(r)) > 900


def test_val_windows_are_fixed_and_in_range():
    w = val_windows(n_tokens=1000, block_size=10, max_sequences=7)
    assert len(w) == 7 and w[0] == 0 and w[-1] == 980 and np.all(np.diff(w) > 0)
    assert len(val_windows(1000, 10, 10_000)) == 99


def test_every_shipped_config_builds_its_model_and_optimizer():
    from pathlib import Path

    from focus_optim.lm.model import model_config
    from focus_optim.optim.registry import check_values

    configs = sorted((Path(__file__).resolve().parents[2] / "configs" / "lm").glob("*.toml"))
    assert len(configs) >= 10
    for path in configs:
        cfg = load_config(path)
        model_config(cfg.model, **cfg.model_args)
        args = {k: v for k, v in cfg.optimizer_args.items() if k != "fused"}  # fused: CUDA in the configs
        check_values(cfg.optimizer, {"lr": cfg.lr, **args})


def test_paper_configs_are_appendix_a3_and_the_authors_model():
    """480 x 1024-token batches, 2000 warmup steps, clip 1.0, float16 and the model of the authors'
    GPT-2 code for every run of Figures 3a-d and 7; FOCUS betas (0.9, 0.99), gamma 0.2, wd 0.2 in
    the code's order."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "lm"
    runs = {}  # every run of the paper's Figures 3a-d and 7: (optimizer, lr, steps, weight decay)
    for path in sorted(root.glob("gpt2_paper_*.toml")):
        cfg = load_config(path)
        runs[path.stem] = (cfg.optimizer, cfg.lr, cfg.max_steps, cfg.optimizer_args["weight_decay"])
        assert cfg.out_dir == f"runs/lm/{path.stem}"
        assert (cfg.model, cfg.batch_size * cfg.grad_accum, cfg.warmup_steps) == ("gpt2", 480, 2000)
        assert (cfg.grad_clip, cfg.dtype, cfg.decay_embeddings) == (1.0, "float16", False)
        assert cfg.model_args == {"scale_attn_by_inverse_layer_idx": True, "gelu": "tanh"}
    assert sorted(runs.values()) == sorted(
        [("focus", 6e-4, 100_000, 0.2), ("focus", 6e-4, 50_000, 0.2), ("focus", 1e-3, 20_000, 0.2)]
        + [("signum", lr, 100_000, 0.2) for lr in (6e-4, 1e-4)]
        + [("adamw", lr, 100_000, 0.1) for lr in (6e-4, 3e-4, 1e-4)]
        + [("adamw", 6e-4, 100_000, 0.2)]
    )
    focus = load_config(root / "gpt2_paper_focus.toml")
    assert focus.optimizer == "focus" and focus.lr == 6e-4
    want = {"betas": (0.9, 0.99), "gamma": 0.2, "weight_decay": 0.2, "decay_mode": "reference"}
    assert {k: focus.optimizer_args[k] for k in want} == want
