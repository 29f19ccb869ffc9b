"""FOCUS (or any registered optimizer) on an FSDP2-sharded GPT, checkpointed with torch's DCP.

    torchrun --nproc-per-node 2 examples/fsdp_train.py --out runs/fsdp --steps 200
    torchrun --nproc-per-node 2 examples/fsdp_train.py --out runs/fsdp --steps 200 --optimizer muon --lr 0.02

Every block and the model are sharded with ``fully_shard`` (gloo on CPU, NCCL on GPUs; the same on
several nodes with torchrun's rendezvous flags). The optimizer steps on its shards (see
``focus_optim.optim._dtensor``). Every ``--save-every`` steps the model, optimizer and step go to
``OUT/ckpt-STEP`` through ``torch.distributed.checkpoint`` (each rank writes its own shards; then
``OUT/latest.json`` points to it), so a killed run resumes with the same command and continues
exactly where it stopped. ``latest.json`` also records the settings the checkpoint depends on (the
optimizer, its effective hyperparameters with the lr, the model config): a command whose settings
differ is refused before anything is loaded (use a new ``--out``). The task: predict the
next token of sequences that repeat a random 8-token motif (learnable, so the loss falls fast).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

from focus_optim import make_optimizer
from focus_optim.atomic import write_json_atomic
from focus_optim.lm.model import GPT, model_config
from focus_optim.optim.registry import parse_optimizer_spec
from focus_optim.sweep import dotted_diff


def batch(step: int, rank: int, size: int, block: int, vocab: int, device: str) -> torch.Tensor:
    """``size`` sequences of ``block + 1`` tokens, each a random 8-token motif repeated."""
    gen = torch.Generator().manual_seed(1_000_003 * step + rank)
    motif = torch.randint(vocab, (size, 8), generator=gen)
    return motif.repeat(1, (block + 1) // 8 + 1)[:, : block + 1].to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizer", default="focus", help="NAME[:KEY=VALUE,...] from the registry")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per rank and step")
    parser.add_argument("--save-every", type=int, default=50)
    args = parser.parse_args()
    settings = checkpoint_settings(args)
    mismatch = resume_mismatch(args.out, settings)  # before any process group or load
    if mismatch:
        if os.environ.get("RANK", "0") == "0":  # (every rank reads the same file: one says it)
            print(f"{Path(sys.argv[0]).name}: error: {mismatch}", file=sys.stderr)
        sys.exit(2)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    train(args, device, settings)
    # The model, optimizer and state dicts (whose DTensors hold the process group through their
    # mesh) are gone with train's frame; collect them while the interpreter is alive, or gloo's
    # worker threads may free tensors during interpreter shutdown and abort a finished run.
    gc.collect()
    dist.destroy_process_group()


MODEL = "tiny"


def checkpoint_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a checkpoint of this command depends on, as JSON values: the optimizer, its effective
    hyperparameters (registry defaults, the ones given, the lr) and the model config. (A loaded
    optimizer state would crash under another optimizer, and would silently override a changed
    hyperparameter with the stored one.)"""
    spec, hparams = parse_optimizer_spec(args.optimizer)
    settings = {
        "optimizer": spec.name,
        "hyperparameters": {**spec.hyperparameters(), **hparams, "lr": args.lr},
        "model": {"preset": MODEL, **asdict(model_config(MODEL))},
    }
    result: dict[str, Any] = json.loads(json.dumps(settings, sort_keys=True, default=repr))
    return result


def resume_mismatch(out: Path, settings: dict[str, Any]) -> str | None:
    """Why the checkpoint in ``out`` cannot be resumed with ``settings`` (one line), or None."""
    latest = out / "latest.json"
    if not latest.exists():
        return None
    stored = json.loads(latest.read_text())
    if "settings" not in stored:  # written before settings were recorded: nothing to check
        return None
    diffs = dotted_diff(stored["settings"], settings)
    if any(key == "optimizer" for key, _, _ in diffs):  # (its hyperparameters differ too: not listed)
        diffs = [d for d in diffs if d[0] == "optimizer"]
    if not diffs:
        return None
    diff = "; ".join(f"{k}: stored {old!r}, this run {new!r}" for k, old, new in diffs)
    return (
        f"{out} holds a checkpoint (step {stored['step']}) of other settings ({diff}); "
        "use a new --out to start this run (or the stored settings to resume that one)"
    )


def train(args: argparse.Namespace, device: str, settings: dict[str, Any]) -> None:
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial weights on every rank
    cfg = model_config(MODEL)
    model = GPT(cfg).to(device)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    spec, hparams = parse_optimizer_spec(args.optimizer)
    opt = make_optimizer(spec.name, model, lr=args.lr, **hparams)

    latest, start = args.out / "latest.json", 0
    if latest.exists():
        start = json.loads(latest.read_text())["step"]
        model_sd, optim_sd = get_state_dict(model, opt)
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.out / f"ckpt-{start}")
        set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)  # loaded in place
        if rank == 0:
            print(f"resumed at step {start}")

    log = []
    for step in range(start, args.steps):
        tokens = batch(step, rank, args.batch_size, cfg.block_size, cfg.vocab_size, device)
        loss = model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        log.append({"step": step + 1, "loss": mean.item() / dist.get_world_size()})
        if rank == 0 and ((step + 1) % 10 == 0 or step + 1 == args.steps):
            print(f"step {step + 1:5d}  loss {log[-1]['loss']:.4f}", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            model_sd, optim_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=args.out / f"ckpt-{step + 1}")
            dist.barrier()  # every rank's shards written before the checkpoint counts
            if rank == 0:
                with (args.out / "loss.jsonl").open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in log)
                # the pointer last, atomically, with what the checkpoint depends on
                write_json_atomic(latest, {"step": step + 1, "settings": settings})
                for old in args.out.glob("ckpt-*"):
                    if old.name != f"ckpt-{step + 1}":
                        shutil.rmtree(old)
            log = []
            dist.barrier()


if __name__ == "__main__":
    main()
