"""DDP and FSDP2 on CPU (gloo, 2 processes): the loss curve equals the 1-process run at the same
global batch, and a run resumed from its checkpoint equals the uninterrupted one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lm_helpers import records, tiny_config

from focus_optim.lm import distributed
from focus_optim.lm.train import Trainer, train

pytestmark = [pytest.mark.distributed]

OPTS = (
    "batch_size=2",
    "grad_accum=4",
    "max_steps=6",
    "eval_interval=3",
    "ckpt_interval=3",
    "sampling='random'",
)
UNEVEN_EVAL = (*OPTS, "optimizer=focus", "max_steps=3", "eval_sequences=9")


def _worker(
    rank: int,
    world_size: int,
    rendezvous: str,
    data_dir: str,
    out_dir: str,
    optimizers: tuple[str, ...],
    fsdp_optimizers: tuple[str, ...],
    zero_optimizers: tuple[str, ...],
) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))  # as torchrun
    torch.set_num_threads(1)
    # A file rendezvous (no free-port race between choosing a port and binding it); the trainers
    # then find the process group already there, as under torchrun.
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    data, out = Path(data_dir), Path(out_dir)
    try:
        for name in optimizers:  # one process group for all runs (spawning is the slow part)
            Trainer(tiny_config(data, out / name, *OPTS, f"optimizer={name}")).run()
        # 1-bit Adam: local gradients under no_sync() after its freeze step, rank-local optimizer
        # state; stopping at step 3 and resuming must reproduce the uninterrupted run exactly
        onebit = (*OPTS, "optimizer=onebit_adam", "optimizer_args.freeze_step=2", "decay_steps=6")
        Trainer(tiny_config(data, out / "onebit_full", *onebit)).run()
        Trainer(tiny_config(data, out / "onebit_cut", *onebit, "max_steps=3")).run()
        # as if killed after writing the rank files of a later checkpoint but before its ckpt.pt
        (out / "onebit_cut" / f"ckpt.optim.rank{rank}.step6.pt").write_bytes(b"partial")
        Trainer(tiny_config(data, out / "onebit_cut", *onebit), resume=True).run()
        # a checkpoint written before the rank files were named by step still resumes
        Trainer(tiny_config(data, out / "onebit_legacy", *onebit, "max_steps=3")).run()
        legacy = out / "onebit_legacy" / f"ckpt.optim.rank{rank}.pt"
        (out / "onebit_legacy" / f"ckpt.optim.rank{rank}.step3.pt").rename(legacy)
        Trainer(tiny_config(data, out / "onebit_legacy", *onebit), resume=True).run()
        # FSDP2: every block sharded; the optimizers step on their shards (Muon gathers matrices)
        for name in fsdp_optimizers:
            Trainer(
                tiny_config(data, out / f"fsdp_{name}", *OPTS, f"optimizer={name}", "parallel='fsdp'")
            ).run()
        # compiled: the warm-up backward must not leave gradients in FSDP's unsharded buffers
        compiled = (*OPTS, "optimizer=adamw", "parallel='fsdp'", "compile=true", "model_args.ce_chunk=100")
        Trainer(tiny_config(data, out / "fsdp_adamw_compiled", *compiled)).run()
        # 9 val windows: rank 0 evaluates 3 batches, rank 1 two (FSDP's forwards are collectives)
        Trainer(tiny_config(data, out / "fsdp_uneven_eval", *UNEVEN_EVAL, "parallel='fsdp'")).run()
        fsdp_cut = (*OPTS, "optimizer=focus", "parallel='fsdp'", "decay_steps=6")
        Trainer(tiny_config(data, out / "fsdp_cut", *fsdp_cut, "max_steps=3")).run()
        Trainer(tiny_config(data, out / "fsdp_cut", *fsdp_cut), resume=True).run()
        Trainer(tiny_config(data, out / "fsdp_half", *fsdp_cut, "max_steps=3")).run()  # resumed below
        # ZeRO-1: optimizer state sharded over the ranks (torch's ZeroRedundancyOptimizer)
        for name in zero_optimizers:
            Trainer(tiny_config(data, out / f"zero_{name}", *OPTS, f"optimizer={name}", "zero=true")).run()
        zero_cut = (*OPTS, "optimizer=focus", "zero=true", "decay_steps=6")
        Trainer(tiny_config(data, out / "zero_cut", *zero_cut, "max_steps=3")).run()
        Trainer(tiny_config(data, out / "zero_cut", *zero_cut), resume=True).run()
        Trainer(tiny_config(data, out / "zero_half", *zero_cut, "max_steps=3")).run()  # resumed below
        dist.barrier()  # every rank done before any tears the process group down
    finally:
        distributed.shutdown()
    # Everything is written: skip interpreter finalization, where gloo's worker threads can abort a
    # finished process (pytorch/pytorch#179291), which mp.spawn would report as a failed rank.
    os._exit(0)


def test_two_processes_match_one(synthetic_data, tmp_path):
    optimizers, fsdp_optimizers = ("adamw", "focus", "muon"), ("focus", "muon", "conda")
    zero_optimizers = ("focus", "muon")
    for name in {*optimizers, *fsdp_optimizers, *zero_optimizers}:
        train(tiny_config(synthetic_data, tmp_path / "single" / name, *OPTS, f"optimizer={name}"))
    train(tiny_config(synthetic_data, tmp_path / "single" / "uneven_eval", *UNEVEN_EVAL))
    out = str(tmp_path / "ddp")
    rendezvous = (tmp_path / "rendezvous").as_uri()
    args = (2, rendezvous, str(synthetic_data), out, optimizers, fsdp_optimizers, zero_optimizers)
    mp.spawn(_worker, args=args, nprocs=2)

    runs = (
        [(name, name, "ddp") for name in optimizers]
        + [("adamw", "fsdp_adamw_compiled", "fsdp")]
        + [(name, f"fsdp_{name}", "fsdp") for name in fsdp_optimizers]
        + [(name, f"zero_{name}", "ddp") for name in zero_optimizers]
    )
    for name, run, parallel in runs:
        single, ddp = tmp_path / "single" / name, tmp_path / "ddp" / run
        for kind, key in (("train", "loss"), ("val", "val_loss"), ("train", "grad_norm")):
            one = [(r["step"], r[key]) for r in records(single, kind)]
            two = [(r["step"], r[key]) for r in records(ddp, kind)]
            assert [s for s, _ in one] == [s for s, _ in two]
            torch.testing.assert_close([v for _, v in two], [v for _, v in one], rtol=1e-5, atol=1e-6)
        start = next(r for r in records(ddp, "event") if r["event"] == "start")
        assert start["world_size"] == 2 and start["tokens_per_step"] == 2 * 4 * 64
        assert start["parallel"] == parallel and start["zero"] == run.startswith("zero_")
        state = torch.load(ddp / "ckpt.pt", weights_only=True)
        assert len(state["rng"]) == 2 and state["world_size"] == 2
        assert (state["optimizer_fqn"] is not None) == (parallel == "fsdp")

    # an uneven split of the val windows over the ranks: the same val loss as one process
    one, two = (records(tmp_path / d, "val") for d in ("single/uneven_eval", "ddp/fsdp_uneven_eval"))
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 3]
    losses = [[r["val_loss"] for r in run] for run in (two, one)]
    torch.testing.assert_close(*losses, rtol=1e-5, atol=1e-6)

    # an FSDP checkpoint holds the whole state: it resumes exactly, and also in one process
    full, cut = tmp_path / "ddp" / "fsdp_focus", tmp_path / "ddp" / "fsdp_cut"
    assert [(r["step"], r["loss"]) for r in records(cut, "train")] == [
        (r["step"], r["loss"]) for r in records(full, "train")
    ]
    # ... and in one process (the same global batches; float round-off from the ranks' sums)
    half = tmp_path / "ddp" / "fsdp_half"
    train(tiny_config(synthetic_data, half, *OPTS, "optimizer=focus", "decay_steps=6"), resume=True)
    assert [(r["event"], r["step"]) for r in records(half, "event") if r["event"] == "resume"] == [
        ("resume", 3)
    ]
    torch.testing.assert_close(
        [r["loss"] for r in records(half, "train")],
        [r["loss"] for r in records(full, "train")],
        rtol=1e-5,
        atol=1e-6,
    )
    state = torch.load(full / "ckpt.pt", weights_only=True)
    single_state = torch.load(tmp_path / "single" / "focus" / "ckpt.pt", weights_only=True)
    for key, value in single_state["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=1e-5, atol=1e-6)

    # a ZeRO checkpoint holds the consolidated state: it resumes exactly, and also in one process
    full, cut, half = (tmp_path / "ddp" / name for name in ("zero_focus", "zero_cut", "zero_half"))
    assert [(r["step"], r["loss"]) for r in records(cut, "train")] == [
        (r["step"], r["loss"]) for r in records(full, "train")
    ]
    train(tiny_config(synthetic_data, half, *OPTS, "optimizer=focus", "decay_steps=6"), resume=True)
    torch.testing.assert_close(
        [r["loss"] for r in records(half, "train")],
        [r["loss"] for r in records(full, "train")],
        rtol=1e-5,
        atol=1e-6,
    )

    full, cut = tmp_path / "ddp" / "onebit_full", tmp_path / "ddp" / "onebit_cut"
    legacy = tmp_path / "ddp" / "onebit_legacy"
    losses = [[(r["step"], r["loss"]) for r in records(d, "train")] for d in (full, cut, legacy)]
    assert len(losses[0]) == 6 and losses[0] == losses[1] == losses[2]
    assert torch.load(cut / "ckpt.pt", weights_only=True)["optimizer_per_rank"] is True
    # each rank keeps the files of the last checkpoint only
    kept = sorted(f.name for f in cut.glob("ckpt.optim.*"))
    assert kept == [f"ckpt.optim.rank{r}.step6.pt" for r in (0, 1)]
