"""Trainer: exact resume, non-finite handling, optimizers by name, protocol hooks, schedule."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from lm_helpers import kill_after_batches, records, tiny_config

from focus_optim.lm import checkpoint
from focus_optim.lm.model import GPT
from focus_optim.lm.schedule import WarmupCosine
from focus_optim.lm.train import NonFiniteLossError, Trainer, train
from focus_optim.optim import registry
from focus_optim.optim.adamw import AdamW


def _losses(out_dir):
    train_recs = [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in records(out_dir, "train")]
    return train_recs, [(r["step"], r["val_loss"]) for r in records(out_dir, "val")]


def test_resume_equals_uninterrupted_bit_for_bit(synthetic_data, tmp_path, monkeypatch):
    # FOCUS with its parameter EMA exercises optimizer state; decay_steps spans the interruption
    opts = (
        "optimizer=focus",
        "optimizer_args.betas=[0.9, 0.99]",
        "optimizer_args.gamma=0.2",
        "optimizer_args.weight_decay=0.1",
        "max_steps=10",
        "ckpt_interval=3",
        "eval_interval=3",
    )
    full = tiny_config(synthetic_data, tmp_path / "full", *opts)
    train(full)

    # the interrupted run crashes while fetching the first micro-batch of step 8 (checkpoint at 6)
    cut = tiny_config(synthetic_data, tmp_path / "cut", *opts)
    restore = kill_after_batches(monkeypatch, 7 * 2)
    with pytest.raises(KeyboardInterrupt):
        train(cut)
    restore()
    assert checkpoint.load(tmp_path / "cut" / "ckpt.pt")["step"] == 6
    assert max(r["step"] for r in records(tmp_path / "cut", "train")) == 7  # logged past the checkpoint

    train(cut, resume=True)
    got_train, got_val = _losses(tmp_path / "cut")
    want_train, want_val = _losses(tmp_path / "full")
    assert [s for s, *_ in got_train] == list(range(1, 11))
    assert got_train == want_train  # exact float equality of every logged loss, lr and grad norm
    assert got_val == want_val
    a, b = checkpoint.load(tmp_path / "full" / "ckpt.pt"), checkpoint.load(tmp_path / "cut" / "ckpt.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k])


def test_resume_with_a_longer_run_follows_the_new_schedule(synthetic_data, tmp_path):
    """As nanoGPT's ``get_lr``: the schedule comes from the config the run is resumed with."""
    out = tmp_path / "run"
    train(tiny_config(synthetic_data, out, "max_steps=4", "lr=2e-3"))
    train(tiny_config(synthetic_data, out, "max_steps=8", "lr=3e-3"), resume=True)
    lrs = {r["step"]: r["lr"] for r in records(out, "train")}
    assert sorted(lrs) == list(range(1, 9))
    first, longer = WarmupCosine(2, 4, 0.05), WarmupCosine(2, 8, 0.05)  # tiny_config: 2 warmup steps
    for step in range(1, 5):
        assert lrs[step] == pytest.approx(2e-3 * first(step - 1), rel=1e-12)
    for step in range(5, 9):  # not the old schedule's floor (0.05 x 2e-3)
        assert lrs[step] == pytest.approx(3e-3 * longer(step - 1), rel=1e-12)
    assert lrs[5] > 10 * 0.05 * 2e-3


def test_a_finished_run_resumed_reports_its_final_val_loss(synthetic_data, tmp_path):
    cfg = tiny_config(synthetic_data, tmp_path / "run", "max_steps=3")
    final = train(cfg)["val_loss"]
    assert final is not None and math.isfinite(final)
    again = train(cfg, resume=True)  # e.g. a sweep killed after the run ended, before storing it
    assert again["val_loss"] == final and again["step"] == 3


def test_a_new_run_into_a_used_directory_is_refused_and_changes_nothing(synthetic_data, tmp_path):
    cfg = tiny_config(synthetic_data, tmp_path / "run", "max_steps=2")
    train(cfg)
    files = {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir() if f.is_file()}
    other = tiny_config(synthetic_data, tmp_path / "run", "max_steps=2", "lr=5e-3")
    with pytest.raises(ValueError, match=r"already holds a run .* --resume"):
        train(other)
    assert {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir() if f.is_file()} == files


def test_checkpoint_contents_are_weights_only_and_complete(synthetic_data, tmp_path):
    cfg = tiny_config(synthetic_data, tmp_path / "run", max_steps=2)
    train(cfg)
    state = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "loader", "step", "config"} <= set(state)
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert state["loader"]["chunks"] == 2 and state["step"] == 2
    assert state["config"]["optimizer"] == "adamw"
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(synthetic_data, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_data, tmp_path / "run", "max_steps=8", "ckpt_interval=2", "log_interval=3")
    real_forward, calls = GPT.forward, {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        if torch.is_grad_enabled():  # training micro-batches only (not evaluation)
            calls["n"] += 1
            if calls["n"] > 4 * 2:  # from step 5 on
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan .* at step 5.*last good checkpoint"):
        train(cfg)
    state = checkpoint.load(tmp_path / "run" / "ckpt.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    events = [r["event"] for r in records(tmp_path / "run", "event")]
    assert events[-1] == "nonfinite"


def test_nonfinite_skip_policy_skips_the_update(synthetic_data, tmp_path, monkeypatch):
    cfg = tiny_config(synthetic_data, tmp_path / "run", "max_steps=4", "nonfinite='skip'", "eval_interval=0")
    real_forward, calls = GPT.forward, {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = real_forward(self, idx, targets, **kw)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] in (5, 6):  # both micro-batches of step 3
                return out * float("inf")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    summary = train(cfg)
    assert summary["step"] == 4 and math.isfinite(summary["val_loss"])
    train_recs = records(tmp_path / "run", "train")
    assert [r.get("skipped", False) for r in train_recs] == [False, False, True, False]
    assert any(r.get("event") == "skip" for r in records(tmp_path / "run", "event"))


@pytest.mark.parametrize(
    ("name", "args"),
    [
        (
            "focus",
            (
                "optimizer_args.betas=[0.9, 0.99]",
                "optimizer_args.gamma=0.2",
                "optimizer_args.weight_decay=0.2",
            ),
        ),
        ("adamw", ("optimizer_args.betas=[0.9, 0.95]", "optimizer_args.weight_decay=0.1")),
        ("signum", ("optimizer_args.momentum=0.9", "optimizer_args.weight_decay=0.2")),
    ],
)
def test_optimizers_by_name_reduce_the_loss(synthetic_data, tmp_path, name, args):
    cfg = tiny_config(
        synthetic_data,
        tmp_path / name,
        f"optimizer={name}",
        *args,
        "max_steps=12",
        "eval_interval=12",
        "ckpt_interval=0",
        "save_final=false",
        lr=3e-3,
    )
    summary = train(cfg)
    val = [r["val_loss"] for r in records(tmp_path / name, "val")]
    assert val[0] > math.log(512) - 0.2 and val[-1] < val[0] - 0.3, val
    assert summary["tokens"] == 12 * 4 * 2 * 64


def test_decay_embeddings_switch(synthetic_data, tmp_path):
    for flag in (True, False):
        cfg = tiny_config(
            synthetic_data,
            tmp_path / str(flag),
            max_steps=0,
            decay_embeddings=flag,
            optimizer_args={"weight_decay": 0.1},
        )
        trainer = Trainer(cfg)
        wte = trainer.raw_model.transformer.wte.weight
        group = next(g for g in trainer.optimizer.param_groups if any(p is wte for p in g["params"]))
        assert (group["weight_decay"] == 0.1) is flag
        trainer.loader.close()


def test_warmup_cosine_schedule_like_nanogpt():
    f = WarmupCosine(warmup_steps=10, decay_steps=110, min_ratio=0.05)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.05 + 0.5 * 0.95)
    assert f(110) == f(500) == pytest.approx(0.05)


class _ProtocolAdamW(AdamW):
    """AdamW that records the training-loop protocol calls (a stand-in for Sophia / 1-bit Adam)."""

    calls: list = []

    def step_kwargs(self, tokens):
        return {"closure": None} if tokens > 0 else {}

    def step(self, closure=None):
        type(self).calls.append(("step",))
        return super().step(closure)

    def hessian_due(self, iteration):
        return iteration % 2 == 1

    def update_hessian(self):
        type(self).calls.append(("update_hessian", all(p.grad is not None for p in self._params())))

    def needs_grad_sync(self):
        return False

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]


def test_training_loop_protocol_hooks(synthetic_data, tmp_path, monkeypatch):
    spec = registry.OptimizerSpec(
        name="protocol_adamw", target=f"{__name__}:_ProtocolAdamW", source="test", description="test"
    )
    monkeypatch.setitem(registry.REGISTRY, "protocol_adamw", spec)
    sampled = {"n": 0}

    def sampled_label_loss(logits):
        sampled["n"] += 1
        assert logits.ndim == 3 and logits.shape[-1] == 512  # full-sequence logits
        labels = torch.distributions.Categorical(logits=logits.detach()).sample()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())

    monkeypatch.setitem(
        sys.modules, "focus_optim.optim.sophia", types.SimpleNamespace(sampled_label_loss=sampled_label_loss)
    )
    _ProtocolAdamW.calls = []
    cfg = tiny_config(
        synthetic_data,
        tmp_path / "run",
        "optimizer=protocol_adamw",
        "max_steps=4",
        "ckpt_interval=0",
        "eval_interval=0",
    )
    trainer = Trainer(cfg)
    trainer.run()
    kinds = [c[0] for c in _ProtocolAdamW.calls]
    assert kinds == ["step", "step", "update_hessian", "step", "step", "update_hessian"]
    assert all(c[1] for c in _ProtocolAdamW.calls if c[0] == "update_hessian")
    assert sampled["n"] == 2 * 2  # two Hessian passes of grad_accum=2 fresh micro-batches each
    assert trainer.loader.consumed == 4 * 2 + 2 * 2  # they consumed fresh data


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit, from inside torch.compile
def test_compiled_run_matches_eager(synthetic_data, tmp_path):
    """torch.compile (warmed up before the clock starts) trains the same model as eager mode;
    ``inductor_args`` reach Inductor's config before it compiles."""
    import torch._inductor.config as inductor_config

    opts = (
        "max_steps=3",
        "eval_interval=3",
        "ckpt_interval=0",
        "save_final=false",
        "model_args.ce_chunk=100",
    )
    # (not pytest's monkeypatch: its undo leaves the option deleted from Inductor's config)
    with inductor_config.patch(coordinate_descent_tuning=False):  # the default, restored on exit
        train(tiny_config(synthetic_data, tmp_path / "eager", *opts))
        assert inductor_config.coordinate_descent_tuning is False
        tuned = "inductor_args.coordinate_descent_tuning=true"
        train(tiny_config(synthetic_data, tmp_path / "compiled", *opts, "compile=true", tuned))
        assert inductor_config.coordinate_descent_tuning is True
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    torch.testing.assert_close([r[1] for r in compiled[0]], [r[1] for r in eager[0]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close([v for _, v in compiled[1]], [v for _, v in eager[1]], rtol=1e-4, atol=1e-5)
    assert [r["event"] for r in records(tmp_path / "compiled", "event")][:2] == ["start", "compiled"]


def test_float16_with_grad_scaler_and_tensorboard(synthetic_data, tmp_path):
    cfg = tiny_config(synthetic_data, tmp_path / "run", "dtype='float16'", "tensorboard=true", max_steps=4)
    trainer = Trainer(cfg)
    assert trainer.scaler.is_enabled()
    summary = trainer.run()
    assert summary["step"] == 4 and math.isfinite(summary["val_loss"])
    assert all(math.isfinite(r["loss"]) for r in records(tmp_path / "run", "train"))
    assert "scale" in checkpoint.load(tmp_path / "run" / "ckpt.pt")["scaler"]
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("before, after", [("float32", "float16"), ("float16", "float32")])
def test_a_run_resumes_across_float16_and_back(synthetic_data, tmp_path, before, after):
    """A float32 run saves an empty (disabled) GradScaler state: resumed in float16 the scaler
    starts afresh (torch's load would refuse the empty state); a float16 run resumed in float32
    drops its scale. Either way the run continues to its end with finite losses."""
    out = tmp_path / "run"
    train(tiny_config(synthetic_data, out, f"dtype='{before}'", max_steps=3))
    saved = checkpoint.load(out / "ckpt.pt")["scaler"]
    assert ("scale" in saved) == (before == "float16")
    summary = train(tiny_config(synthetic_data, out, f"dtype='{after}'", max_steps=6), resume=True)
    assert summary["step"] == 6 and math.isfinite(summary["val_loss"])
    losses = {r["step"]: r["loss"] for r in records(out, "train")}
    assert sorted(losses) == list(range(1, 7)) and all(map(math.isfinite, losses.values()))
    assert ("scale" in checkpoint.load(out / "ckpt.pt")["scaler"]) == (after == "float16")


def test_steps_the_grad_scaler_skips_are_logged_as_skipped(synthetic_data, tmp_path):
    trainer = Trainer(tiny_config(synthetic_data, tmp_path / "run", "dtype='float16'", max_steps=6))
    # a scale that overflows float16 gradients: the scaler skips and halves it until it fits
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    trainer.run()
    train_recs = records(tmp_path / "run", "train")
    skipped = [r["step"] for r in train_recs if r.get("skipped")]
    assert skipped and skipped == [r["step"] for r in train_recs if not math.isfinite(float(r["grad_norm"]))]
    events = [r for r in records(tmp_path / "run", "event") if r["event"] == "skip"]
    assert [e["step"] for e in events] == skipped and {e["by"] for e in events} == {"grad_scaler"}


def test_resuming_a_finished_run_keeps_one_end_event_and_drops_a_killed_checkpoint_write(
    synthetic_data, tmp_path
):
    from focus_optim.atomic import temp_name

    out = tmp_path / "run"
    cfg = tiny_config(synthetic_data, out, "max_steps=3")
    train(cfg)
    torn = temp_name(out / "ckpt.pt")  # a checkpoint write killed midway (SIGKILL: no cleanup)
    torn.write_bytes(b"PK\x03\x04 half a checkpoint")
    train(cfg, resume=True)
    train(cfg, resume=True)
    events = [r["event"] for r in records(out, "event")]
    assert events.count("end") == 1 and events[-1] == "end"
    assert events[0] == "start" and events.count("resume") == 2
    assert not torn.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_resumed_run_tells_tensorboard_to_drop_what_the_killed_run_logged_past_its_checkpoint(
    synthetic_data, tmp_path, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    opts = ("tensorboard=true", "max_steps=8", "ckpt_interval=3", "eval_interval=3")
    out = tmp_path / "cut"
    restore = kill_after_batches(monkeypatch, 7 * 2)  # dies fetching step 8's batch; checkpoint at 6
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(synthetic_data, out, *opts))
    restore()
    first = sorted((out / "tb").glob("events.out.tfevents.*"))
    train(tiny_config(synthetic_data, out, *opts), resume=True)
    resumed = [p for p in sorted((out / "tb").glob("events.out.tfevents.*")) if p not in first]
    assert len(resumed) == 1
    marks = [
        (e.step, e.session_log.status)
        for e in EventFileLoader(str(resumed[0])).Load()
        if e.HasField("session_log")
    ]
    assert marks[0] == (7, 1)  # SessionLog.START at step 7: TensorBoard drops the old run's steps >= 7

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == [r["step"] for r in records(out, "train")] == list(range(1, 9))
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(
        [r["loss"] for r in records(out, "train")]
    )


def test_sophia_hessian_pass_in_float16_is_scaled_like_the_training_backward(
    synthetic_data, tmp_path, monkeypatch
):
    """Small sampled-label gradients underflow in a float16 backward unless it is scaled: the
    refreshed Hessian then matches float32's (here with the sampled loss scaled down by 1e-4)."""
    import focus_optim.optim.sophia as sophia

    real = sophia.sampled_label_loss
    monkeypatch.setattr(sophia, "sampled_label_loss", lambda logits: real(logits) * 1e-4)
    hessians = {}
    for dtype in ("float32", "float16"):
        opts = ("optimizer=sophia", f"dtype='{dtype}'", "max_steps=10", "ckpt_interval=0", "eval_interval=0")
        trainer = Trainer(tiny_config(synthetic_data, tmp_path / dtype, *opts))
        trainer.run()
        hessians[dtype] = [
            float(trainer.optimizer.state[p]["hessian"].norm()) for p in trainer.raw_model.parameters()
        ]
    want, got = hessians["float32"], hessians["float16"]
    assert all(w > 0 for w in want)
    assert all(0.5 * w < g < 2 * w for w, g in zip(want, got, strict=True))
    assert sum(got) == pytest.approx(sum(want), rel=0.05)


def test_an_overflowing_float16_hessian_pass_is_skipped_and_logged(synthetic_data, tmp_path):
    opts = ("optimizer=sophia", "dtype='float16'", "max_steps=10", "ckpt_interval=0", "eval_interval=0")
    trainer = Trainer(tiny_config(synthetic_data, tmp_path / "run", *opts))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)  # still overflowing at step 10
    trainer.run()
    skips = [r for r in records(tmp_path / "run", "event") if r.get("by") == "hessian_overflow"]
    assert [r["step"] for r in skips] == [9]  # the refresh after the 10th step (step counted after it)
    states = [trainer.optimizer.state.get(p, {}) for p in trainer.raw_model.parameters()]
    assert all("hessian" not in st or not st["hessian"].any() for st in states)  # never refreshed
