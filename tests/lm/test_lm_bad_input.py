"""Bad input to ``lm train``: damaged checkpoints, logs, token files and meta.json are named in a
clean error, and the run directory is left exactly as it was."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_helpers import VOCAB, tiny_config, tiny_overrides

from focus_optim.lm import checkpoint
from focus_optim.lm.cli import main as lm_main
from focus_optim.lm.data import DataError, load_meta
from focus_optim.lm.loader import TokenError, TrainLoader, gather
from focus_optim.lm.train import train


@pytest.fixture(scope="module")
def finished_run(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run (checkpoint, log, config) to copy and damage."""
    out = tmp_path_factory.mktemp("lmrun") / "run"
    train(tiny_config(synthetic_data, out, "max_steps=2", "ckpt_interval=1", "eval_interval=1"))
    return out


def _files(run: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _without(key: str):
    def damage(good: bytes) -> bytes:
        state = torch.load(io.BytesIO(good), weights_only=True)
        del state[key]
        return _torch_bytes(state)

    return damage


NOT_OURS = "not a checkpoint of focus-optim lm train"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda good: good[: len(good) // 2], r"is corrupt or .*\(RuntimeError: PytorchStreamReader"),
        (lambda good: good[:10], r"is corrupt or .*\(RuntimeError: PytorchStreamReader"),
        # Seeded: about one unseeded garbage file in ten trips an IndexError or KeyError inside the
        # unpickler instead; the message must still name the file, but the test must not flake.
        (lambda good: np.random.default_rng(0).bytes(4096), r"is corrupt or .*\(UnpicklingError"),
        (lambda good: np.random.default_rng(17).bytes(4096), r"is corrupt or .*\(IndexError"),
        (lambda good: b"", r"is corrupt or .*\(EOFError: empty or truncated\)"),
        (lambda good: _torch_bytes([1, 2]), r"is not .* \(it holds a list, not a dict\)"),
        (lambda good: _torch_bytes({"step": 1}), r"is not .* \(no 'model'; it holds step\)"),
        (_without("loader"), r"is not .* \(no 'loader\.chunks'"),
        (_without("optimizer"), r"is not .* \(no 'optimizer'"),
    ],
)
def test_a_damaged_checkpoint_is_named_and_left_as_it_is(finished_run, tmp_path, damage, reason):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "ckpt.pt"
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    before = _files(run)
    cfg = tiny_config(Path(json.loads((run / "config.json").read_text())["config"]["data_dir"]), run)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(ckpt)) + " " + reason) as err:
        train(cfg, resume=True)
    assert NOT_OURS in str(err.value) and "left as it is" in str(err.value)
    assert _files(run) == before  # nothing deleted, overwritten or appended


def test_the_cli_reports_a_corrupt_checkpoint_in_one_line(synthetic_data, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "ckpt.pt").write_bytes(b"")
    argv = ["train", "--resume"] + [a for kv in tiny_overrides(synthetic_data, run) for a in ("--set", kv)]
    assert lm_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"focus-optim lm train: error: {run / 'ckpt.pt'} is corrupt")
    assert "Traceback" not in err and (run / "ckpt.pt").read_bytes() == b""


def test_resuming_with_another_model_names_the_checkpoint_and_changes_nothing(
    synthetic_data, finished_run, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _files(run)
    cfg = tiny_config(synthetic_data, run, "max_steps=4", "model_args.n_layer=3")
    with pytest.raises(ValueError, match=r"ckpt\.pt holds another model than this config builds") as err:
        train(cfg, resume=True)
    msg = str(err.value)
    assert "missing transformer.h.2." in msg and "written with model_args={} (now {'n_layer': 3})" in msg
    wide = tiny_config(synthetic_data, run, "max_steps=4", "model_args.n_embd=64")
    with pytest.raises(ValueError, match=r"shape \S+ \(\d+, 32\) vs \(\d+, 64\)"):
        train(wide, resume=True)
    assert _files(run) == before


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1]\n", r"log\.jsonl:\d+: not a run-log record \(a JSON list, expected an object\)"),
        (b'{"kind": "train", "step": "x"}\n', r"log\.jsonl:\d+: not a run-log record \(step 'x'"),
        (b"\xff\xfe\n", r"log\.jsonl is not a run log \(not UTF-8 text"),
    ],
)
def test_a_damaged_log_stops_a_resume_and_is_kept(synthetic_data, finished_run, tmp_path, line, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with open(run / "log.jsonl", "ab") as f:
        f.write(line)
    before = _files(run)
    with pytest.raises(ValueError, match=message) as err:
        train(tiny_config(synthetic_data, run, "max_steps=4"), resume=True)
    assert str(run / "log.jsonl") in str(err.value)
    assert _files(run) == before  # the log is not cut, config.json not rewritten


@pytest.mark.parametrize("split", ["train", "val"])
def test_token_ids_outside_the_vocabulary_name_the_file(synthetic_data, tmp_path, split):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    path = data / f"{split}.bin"
    path.write_bytes(b"\xff" * path.stat().st_size)
    with pytest.raises(TokenError, match=rf"{re.escape(str(path))} holds token id 65535 at token \d+, "):
        train(tiny_config(data, tmp_path / "run", "max_steps=2"))
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_the_loader_checks_each_batch_against_the_vocabulary(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, _ = gather(tokens, np.array([0, 3990]), 8, vocab_size=4000)  # the last id read is 3998
    assert x[1, 0] == 3990
    with pytest.raises(TokenError, match=r"train\.bin holds token id 4000 at token 4000, outside .*4000"):
        gather(tokens, np.array([0, 3995]), 8, vocab_size=4000)
    np.full(5000, 65535, dtype=np.uint16).tofile(path)
    # a ValueError (the CLI's clean error), not the RuntimeError of a failing reader thread
    with pytest.raises(TokenError, match=r"train\.bin holds token id 65535"):
        TrainLoader(path, batch_size=2, block_size=8, seed=1, vocab_size=VOCAB)


GOOD_META = {"vocab_size": VOCAB, "train_tokens": 20_000, "val_tokens": 3_000}  # write_synthetic's


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ([], r"is corrupt \(a JSON list, expected an object\)"),
        ({}, r"is corrupt \(vocab_size: missing; expected an integer >= 1\)"),
        ({**GOOD_META, "vocab_size": "x"}, r"is corrupt \(vocab_size: 'x'; expected an integer"),
        ({**GOOD_META, "vocab_size": True}, r"is corrupt \(vocab_size: True; expected an integer"),
        ({**GOOD_META, "train_tokens": "a"}, r"is corrupt \(train_tokens: 'a'; expected an integer >= 0\)"),
        ({**GOOD_META, "val_tokens": None}, r"is corrupt \(val_tokens: None"),
        ({**GOOD_META, "split": 5}, r"is corrupt \(split: a int, expected a dict\)"),
        ({**GOOD_META, "sources": [1]}, r"is corrupt \(sources: expected a list of objects\)"),
    ],
)
def test_a_malformed_meta_json_is_named(synthetic_data, tmp_path, meta, message):
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    assert json.loads((data / "meta.json").read_text()) == GOOD_META
    (data / "meta.json").write_text(json.dumps(meta))
    pattern = re.escape(str(data / "meta.json")) + " " + message
    with pytest.raises(DataError, match=pattern):
        load_meta(data)
    with pytest.raises(DataError, match=pattern):
        train(tiny_config(data, tmp_path / "run", "max_steps=1"))
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_the_lm_cli_reports_paths_that_are_not_files_or_directories(tmp_path, capsys):
    """``python -m focus_optim.lm.cli`` (what torchrun runs) catches what ``focus-optim`` does."""
    assert lm_main(["train", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("focus-optim lm train: error: ") and str(tmp_path) in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"kind": "val", "step": 0, "val_loss": 3.0}) + "\n")
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    assert lm_main(["compare", str(run), "--out", str(blocker / "x"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("focus-optim lm compare: error: ") and str(blocker) in err
    assert blocker.read_text() == "a file, not a directory"


@pytest.mark.parametrize(
    "block, message",
    [
        (10**9, r"block_size: 1000000000 \(allowed: at most 19998, as the train split holds 20000 tokens\)"),
        (5_000, r"block_size: 5000 \(allowed: at most 2998, as the val split holds 3000 tokens\)"),
    ],
)
def test_a_block_size_the_data_cannot_fill_is_refused_before_the_model_is_built(
    synthetic_data, tmp_path, monkeypatch, block, message
):
    """(A 10**9-token context would first allocate its position embedding: hundreds of GB.)"""
    import focus_optim.lm.train as train_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(train_module, "GPT", no_model)
    with pytest.raises(ValueError, match=message):
        train(tiny_config(synthetic_data, tmp_path / "run", f"model_args.block_size={block}"))
    assert not (tmp_path / "run" / "ckpt.pt").exists()
