"""``focus-optim lm train``: GPT-2 training with any registered optimizer, nanoGPT style.

One optimizer step (``Trainer.train_step``)::

    for each of this rank's micro-batches:            # grad_accum / world_size of them
        loss = model(x, y) / local_accum              # under autocast (bf16 default)
        scaler.scale(loss).backward()                 # DDP all-reduces on the last one only
    scaler.unscale_(opt); clip_grad_norm_(params, 1.0)
    scaler.step(opt, **protocol.step_kwargs(opt, tokens=tokens_per_step))   # Sophia: bs
    scaler.update(); opt.zero_grad(); scheduler.step()
    if protocol.hessian_due(opt, step): hessian pass  # Sophia-G: sampled labels on fresh batches

Optimizers that all-reduce by themselves (1-bit Adam after its freeze step) report
``protocol.needs_grad_sync(opt) == False``; then every micro-step runs under DDP's ``no_sync()``.

Run directory (``out_dir``): ``config.json``, ``log.jsonl`` (see :mod:`~focus_optim.lm.runlog`),
``ckpt.pt`` (see :mod:`~focus_optim.lm.checkpoint`) and ``tb/``. ``resume=True`` reloads
``ckpt.pt`` and continues the exact run: with the same world size the logged losses equal those of
an uninterrupted run bit for bit. A non-finite loss (or gradient norm) stops the run with a
:class:`NonFiniteLossError` before any further checkpoint is written, unless ``nonfinite="skip"``,
which drops that step's update and goes on.

Launch on several GPUs/nodes with torchrun (see ``docs/lm.md``); each rank reads a disjoint
part of the same global batch (:mod:`~focus_optim.lm.loader`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..atomic import remove_stale_temps, write_json_atomic
from ..optim import _dtensor, make_optimizer, protocol, zero_redundancy
from ..optim.registry import get_spec
from . import checkpoint, distributed
from .config import TrainConfig
from .data import load_meta
from .loader import TrainLoader, check_split_lengths, gather, open_tokens, val_windows
from .model import GPT, model_config
from .progress import progress
from .runlog import RunLogger
from .schedule import warmup_cosine

CKPT_NAME = checkpoint.CKPT_NAME
EVAL_CHUNK = 8192  # rows of logits at a time during evaluation
PTDTYPE = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: What every ``ckpt.pt`` holds (types checked before resuming; see :meth:`Trainer.save`).
CKPT_FIELDS: dict[str, Any] = {
    "model": dict,
    "scheduler.last_epoch": int,
    "scheduler._step_count": int,
    "scaler": dict,
    "rng": list,
    "loader.chunks": int,
    "step": int,
    "tokens": int,
    "train_time": (int, float),
    "world_size": int,
    "config": dict,
}


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the last checkpoint written is still good."""


class Trainer:
    """Builds model, optimizer, scheduler and loaders from a :class:`TrainConfig`; ``run()`` trains."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.dist = distributed.init(cfg.device)
        self.device = self.dist.device
        if cfg.grad_accum % self.dist.world_size:
            raise ValueError(
                f"grad_accum ({cfg.grad_accum}) must be a multiple of the world size ({self.dist.world_size})"
            )
        self.local_accum = cfg.grad_accum // self.dist.world_size
        self.out_dir = Path(cfg.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out_dir / CKPT_NAME
        if not resume and self.ckpt_path.exists():  # never overwrite a run's checkpoint by accident
            raise ValueError(
                f"{self.out_dir} already holds a run ({self.ckpt_path}): continue it with --resume, "
                "or train into a new --out-dir"
            )
        if self.dist.is_main:  # a checkpoint write killed midway left its temp file (one writer a run)
            remove_stale_temps(self.out_dir)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            set_sdpa_backend(cfg.sdpa_backend)

        # model, optimizer, schedule (same seed on every rank: identical initial weights)
        self.meta = load_meta(cfg.data_dir)
        self.model_cfg = model_config(cfg.model, **cfg.model_args)
        if self.model_cfg.vocab_size < self.meta["vocab_size"]:
            raise ValueError(
                f"model vocab_size {self.model_cfg.vocab_size} < the data's {self.meta['vocab_size']}; "
                "set model_args.vocab_size"
            )
        check_split_lengths(self.meta["train_tokens"], self.meta["val_tokens"], self.model_cfg.block_size)
        _seed_all(cfg.seed)
        self.raw_model = GPT(self.model_cfg).to(self.device)
        self.fsdp = self.dist.ddp and cfg.parallel == "fsdp"
        if self.fsdp:  # before the optimizer: it holds the sharded parameters
            distributed.shard_model(self.raw_model)
        self.optimizer = make_optimizer(
            cfg.optimizer,
            self.raw_model,
            decay_embeddings=cfg.decay_embeddings,
            lr=cfg.lr,
            **self._optimizer_args(),
        )
        self.zero = self.dist.ddp and cfg.zero
        if self.zero:  # each rank keeps and updates the state of ~1/W of the parameters
            self.optimizer = zero_redundancy(self.optimizer)
        decay_steps = cfg.decay_steps or cfg.max_steps
        self.scheduler = warmup_cosine(self.optimizer, cfg.warmup_steps, decay_steps, cfg.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.dtype == "float16")
        self.autocast = torch.autocast(
            self.device.type, dtype=PTDTYPE[cfg.dtype], enabled=cfg.dtype != "float32"
        )
        _seed_all(cfg.seed + 1 + self.dist.rank)  # per-rank streams (e.g. Sophia's sampled labels)

        self.step, self.tokens, self.train_time, chunks = 0, 0, 0.0, 0
        self._last_val: float | None = None
        self.resumed = resume and self.ckpt_path.exists()
        if resume and not self.resumed:
            self._print(f"no checkpoint at {self.ckpt_path}; starting from scratch")
        if self.resumed:
            chunks = self._load(checkpoint.load(self.ckpt_path, CKPT_FIELDS))

        self.model: torch.nn.Module = self.raw_model
        if cfg.compile:
            if cfg.inductor_args:  # process-wide, read when the first step compiles
                import torch._inductor.config as inductor_config

                for key, value in cfg.inductor_args.items():
                    setattr(inductor_config, key, value)
            # (torch.compile of a module returns a module, an OptimizedModule; its stub says a callable)
            self.model = cast(torch.nn.Module, torch.compile(self.model, mode=cfg.compile_mode))
        if self.dist.ddp and not self.fsdp:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids, gradient_as_bucket_view=True)

        T = self.model_cfg.block_size
        self.tokens_per_step = cfg.batch_size * cfg.grad_accum * T
        self.loader = TrainLoader(
            Path(cfg.data_dir) / "train.bin",
            batch_size=cfg.batch_size,
            block_size=T,
            grad_accum=cfg.grad_accum,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            seed=cfg.seed,
            sampling=cfg.sampling,
            device=self.device,
            consumed=chunks * self.local_accum,
            vocab_size=self.meta["vocab_size"],
        )
        self.val_tokens = open_tokens(Path(cfg.data_dir) / "val.bin")
        self.val_starts = val_windows(len(self.val_tokens), T, cfg.eval_sequences)
        self.flops_per_token = self.raw_model.flops_per_token()
        self.logger = RunLogger(
            self.out_dir,
            enabled=self.dist.is_main,
            tensorboard=cfg.tensorboard,
            purge_after=self.step if self.resumed else None,
        )
        self._pending: list[tuple[int, float, torch.Tensor, torch.Tensor, bool]] = []

    # --- the loop --------------------------------------------------------------------------------
    def _optimizer_args(self) -> dict[str, Any]:
        """The config's optimizer arguments; under DDP, Muon and ROOT also share their per-matrix
        Newton-Schulz work over the replicas (``distributed=True``; FSDP shares it by itself, and
        so does ZeRO, where each rank updates its own matrices)."""
        args = dict(self.cfg.optimizer_args)
        takes = get_spec(self.cfg.optimizer).hyperparameters()
        if self.dist.ddp and not self.fsdp and not self.cfg.zero and "distributed" in takes:
            args.setdefault("distributed", True)
        return args

    def run(self) -> dict[str, Any]:
        """Train to ``max_steps``; returns a summary (final val loss, steps, tokens, time)."""
        cfg = self.cfg
        try:  # the log first: one that cannot be read stops the run before anything is written
            if self.resumed:
                self.logger.truncate_after(self.step)
            self._write_config()
        except BaseException:
            self.logger.close()
            self.loader.close()
            raise
        if self.resumed:
            self.logger.log({"kind": "event", "event": "resume", "step": self.step})
        else:
            self.logger.start_fresh()
            self.logger.log({"kind": "event", "event": "start", "step": 0, **self._run_facts()})
        bar = progress(
            cfg.max_steps,
            initial=self.step,
            desc=self.label,
            unit="step",
            enabled=self.dist.is_main and cfg.progress,
        )
        try:
            if cfg.compile:
                self._compile_warmup()
            if not self.resumed:
                self._evaluate_and_log(bar)
            self._mark = time.perf_counter()
            while self.step < cfg.max_steps:
                loss, gnorm, skipped, lr = self.train_step()
                self.step += 1
                self.tokens += self.tokens_per_step
                self._pending.append((self.step, lr, loss, gnorm, skipped))
                bar.update(1)
                last = self.step == cfg.max_steps
                eval_due = last or (cfg.eval_interval > 0 and self.step % cfg.eval_interval == 0)
                ckpt_due = cfg.ckpt_interval > 0 and self.step % cfg.ckpt_interval == 0
                if last or eval_due or ckpt_due or self.step % cfg.log_interval == 0:
                    self._flush(bar)
                if eval_due:
                    self._evaluate_and_log(bar)
                if ckpt_due or (last and cfg.save_final):
                    self.save()
                if eval_due or ckpt_due:
                    self._mark = time.perf_counter()  # evaluation and checkpoints are not training time
        except BaseException:
            self.logger.close()
            raise
        finally:
            bar.close()
            self.loader.close()
        summary = {
            "step": self.step,
            "tokens": self.tokens,
            "train_time": self.train_time,
            "val_loss": self._last_val,
        }
        if self.device.type == "cuda":
            summary["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.logger.log({"kind": "event", "event": "end", **summary})
        self.logger.close()
        return summary

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
        """One optimizer step; returns (mean loss, grad norm, skipped, lr) without a host sync."""
        cfg, opt = self.cfg, self.optimizer
        lr = float(opt.param_groups[0]["lr"])
        sync = protocol.needs_grad_sync(opt)
        loss_sum = torch.zeros((), device=self.device)
        for k in range(self.local_accum):
            x, y = self.loader.next()
            with self._grad_sync(sync and k == self.local_accum - 1), self.autocast:
                loss = self.model(x, y) / self.local_accum
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip or math.inf)
        gnorm = _dtensor.full(gnorm)  # a DTensor under FSDP
        skipped = cfg.nonfinite == "skip" and self._nonfinite_anywhere(loss_sum, gnorm)
        if skipped:
            opt.zero_grad(set_to_none=True)
            self.scaler.update()
        else:
            self.scaler.step(opt, **protocol.step_kwargs(opt, tokens=self.tokens_per_step))
            self.scaler.update()
            opt.zero_grad(set_to_none=True)
        self.scheduler.step()
        if not skipped and protocol.hessian_due(opt, self.step):
            self.hessian_step()
        return loss_sum, gnorm.detach(), skipped, lr

    def _compile_warmup(self) -> None:
        """Compile before the clock starts: forward + backward on the first training batch (read,
        not consumed), then drop the gradients. No state changes, so the run is unaffected, and
        ``train_time`` (the wall-time axis of the plots) excludes compilation."""
        t0 = time.perf_counter()
        x, y = (t.to(self.device) for t in self.loader.cpu_batch(0))
        # FSDP keeps an unsynchronised backward's gradients in its own unsharded buffers, where
        # zero_grad would not reach them: there the warm-up backward reduces, and they are dropped
        with self._grad_sync(self.fsdp), self.autocast:
            loss = self.model(x, y)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self.logger.log({"kind": "event", "event": "compiled", "step": self.step, "seconds": seconds})
        self._print(f"compiled in {seconds:.1f}s")

    def hessian_step(self) -> None:
        """Sophia-G's Gauss-Newton-Bartlett refresh: labels sampled from the model on fresh batches,
        the same accumulation divisor, the same grad-norm clip, then ``update_hessian()``.

        In float16 the backward is scaled by the ``GradScaler``'s current scale, as the training
        backward is (unscaled, small sampled-label gradients underflow to zero in float16), and
        unscaled before the clip; a refresh whose gradients overflow is skipped and logged. The
        scaler's own state is left alone: its skip-and-halve logic belongs to the training step."""
        from ..optim.sophia import sampled_label_loss  # written alongside Sophia; imported lazily

        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        for k in range(self.local_accum):
            x, _ = self.loader.next()
            with self._grad_sync(k == self.local_accum - 1), self.autocast:
                loss = sampled_label_loss(self.model(x)) / self.local_accum
            (loss * scale if scale != 1.0 else loss).backward()
        params = list(self.raw_model.parameters())
        if scale != 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(1.0 / scale)
            gnorm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or math.inf)
            if not math.isfinite(float(_dtensor.full(gnorm))):
                self.optimizer.zero_grad(set_to_none=True)
                self.logger.log(
                    {"kind": "event", "event": "skip", "step": self.step, "by": "hessian_overflow"}
                )
                return
        elif self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        protocol.update_hessian(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed val windows, split across ranks.

        Runs the eager model (no compile, no DDP) and the chunked loss, so evaluation neither
        compiles a second graph nor materialises full logits next to the training memory."""
        cfg, T, vocab = self.cfg, self.model_cfg.block_size, self.meta["vocab_size"]
        starts = self.val_starts[self.dist.rank :: self.dist.world_size]
        # Under FSDP each forward is a collective (its all-gathers): every rank runs as many as
        # rank 0, which holds the most windows, a rank out of windows on a stand-in weighted 0.
        most = len(self.val_starts[:: self.dist.world_size]) if self.fsdp else len(starts)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for i in range(0, most, cfg.batch_size):
            chunk = starts[i : i + cfg.batch_size]
            weight = len(chunk)
            if weight == 0:
                chunk = self.val_starts[:1]
            xy = gather(self.val_tokens, chunk, T, vocab_size=vocab)
            x, y = (t.to(self.device, non_blocking=True) for t in xy)
            with self.autocast:
                loss = self.raw_model(x, y, ce_chunk=EVAL_CHUNK)  # the root's forward: FSDP hooks run
            total[0] += loss.double() * weight
            total[1] += weight
        if self.dist.ddp:
            dist.all_reduce(total)
        return (total[0] / total[1]).item()

    # --- logging -----------------------------------------------------------------------------------
    def _flush(self, bar: Any) -> None:
        """Fetch the pending per-step losses (one host sync), log them, stop on non-finite values."""
        if not self._pending:
            return
        losses = torch.stack([p[2] for p in self._pending])
        norms_t = torch.stack([p[3] for p in self._pending]).float()
        bad_norms = (~torch.isfinite(norms_t)).float()
        if self.dist.ddp:  # every rank must take the same stop decision
            dist.all_reduce(losses)
            losses /= self.dist.world_size
            dist.all_reduce(bad_norms)
        values, norms, bad_norm = losses.tolist(), norms_t.tolist(), bad_norms.tolist()
        n, dt = len(self._pending), time.perf_counter() - self._mark
        tok_s = n * self.tokens_per_step / max(dt, 1e-9)
        mfu = self.flops_per_token * tok_s / (self.cfg.peak_flops * self.dist.world_size)
        first_step, start_time = self._pending[0][0], self.train_time
        self.train_time += dt
        for i, (step, lr, _, _, skipped) in enumerate(self._pending):
            loss, gnorm = values[i], norms[i]
            record = {
                "kind": "train",
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": gnorm,
                "tokens": self.tokens - (self.step - step) * self.tokens_per_step,
                "train_time": start_time + dt * (i + 1) / n,
                "tok_per_s": tok_s,
                "mfu": mfu,
            }
            # fp16: GradScaler skips a step whose (unscaled) gradients hold an inf or NaN, i.e.
            # exactly when the grad norm is not finite, and lowers its scale
            by_scaler = self.scaler.is_enabled() and bad_norm[i] > 0 and not skipped
            if skipped or by_scaler:
                record["skipped"] = True
                event = {"kind": "event", "event": "skip", "step": step, "loss": loss, "grad_norm": gnorm}
                self.logger.log({**event, "by": "grad_scaler" if by_scaler else "nonfinite"})
            bad = not math.isfinite(loss) or (not self.scaler.is_enabled() and bad_norm[i] > 0)
            self.logger.log(record)
            if bad and not skipped:
                self._stop_nonfinite(step, loss, gnorm)
        self._pending.clear()
        self._mark = time.perf_counter()
        bar.set_postfix_str(
            f"loss {values[-1]:.4f} val {self._last_val or float('nan'):.4f} "
            f"{tok_s / 1e3:.0f}K tok/s mfu {100 * mfu:.1f}% (steps {first_step}-{self.step})"
        )

    def _stop_nonfinite(self, step: int, loss: float, gnorm: float) -> None:
        self.logger.log(
            {"kind": "event", "event": "nonfinite", "step": step, "loss": loss, "grad_norm": gnorm}
        )
        good = (
            f"the last good checkpoint is {self.ckpt_path}"
            if self.ckpt_path.exists()
            else "no checkpoint was written"
        )
        raise NonFiniteLossError(
            f"non-finite loss {loss} (grad norm {gnorm}) at step {step} of {self.label}; stopping. {good} "
            "(resume with --resume, lower the lr, or set nonfinite='skip' to skip such steps)"
        )

    def _evaluate_and_log(self, bar: Any) -> None:
        self._last_val = self.evaluate()
        self.logger.log(
            {
                "kind": "val",
                "step": self.step,
                "val_loss": self._last_val,
                "tokens": self.tokens,
                "train_time": self.train_time,
            }
        )
        if self.dist.is_main:
            bar.write(f"{self.label} step {self.step}: val loss {self._last_val:.4f}")

    def _run_facts(self) -> dict[str, Any]:
        return {
            "world_size": self.dist.world_size,
            "parallel": ("fsdp" if self.fsdp else "ddp") if self.dist.ddp else "none",
            "zero": self.zero,
            "device": str(self.device),
            "params": self.raw_model.num_params(non_embedding=False),
            "flops_per_token": self.flops_per_token,
            "tokens_per_step": self.tokens_per_step,
            "train_tokens": self.meta["train_tokens"],
            "val_tokens_evaluated": int(len(self.val_starts) * self.model_cfg.block_size),
        }

    # --- checkpoints -------------------------------------------------------------------------------
    def save(self) -> None:
        """Write ``ckpt.pt`` atomically (rank 0), after checking the pending losses are finite.

        Optimizers that communicate by themselves (``needs_grad_sync``, e.g. 1-bit Adam) may hold
        rank-local state: under DDP every rank then also writes ``ckpt.optim.rank<r>.step<s>.pt``,
        before ``ckpt.pt`` (which names step ``s``) replaces the last one, and removes its older
        files after: a kill at any point leaves a ``ckpt.pt`` whose rank files exist."""
        self._flush(_NoBar())
        rng = checkpoint.rng_state()
        per_rank = self._optimizer_state_per_rank()
        model_state, optim_state = self._full_state()
        if self.dist.ddp:
            states: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if per_rank:
            own = {"optimizer": self.optimizer.state_dict(), "step": self.step}
            checkpoint.save_atomic(own, self._rank_optim_path(self.dist.rank, self.step))
            dist.barrier()
        if self.dist.is_main:
            state = {
                "model": model_state,
                "optimizer": None if per_rank or self.fsdp else optim_state,
                "optimizer_fqn": optim_state if self.fsdp else None,
                "optimizer_per_rank": per_rank,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": states,
                "loader": {"chunks": self.loader.consumed // self.local_accum, "seed": self.cfg.seed},
                "step": self.step,
                "tokens": self.tokens,
                "train_time": self.train_time,
                "val_loss": self._last_val,  # so a finished run, resumed, still reports it
                "world_size": self.dist.world_size,
                "config": json.loads(json.dumps(self.cfg.to_dict())),
            }
            checkpoint.save_atomic(state, self.ckpt_path)
        if self.dist.ddp:
            dist.barrier()
        if per_rank:  # ckpt.pt now names this step: the older rank files are no longer needed
            keep = self._rank_optim_path(self.dist.rank, self.step)
            for old in self.out_dir.glob(f"ckpt.optim.rank{self.dist.rank}.*pt"):  # (.pt: unnamed by step)
                if old != keep:
                    old.unlink(missing_ok=True)

    def _full_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Model and optimizer state dicts, whole (under FSDP gathered by every rank, held by rank 0;
        the optimizer's then keyed by parameter names)."""
        if self.zero:  # every rank sends its shard of the optimizer state to rank 0
            from torch.distributed.optim import ZeroRedundancyOptimizer

            assert isinstance(self.optimizer, ZeroRedundancyOptimizer)  # zero_redundancy() made it
            self.optimizer.consolidate_state_dict(to=0)
            optim_state = self.optimizer.state_dict() if self.dist.is_main else {}
            return self.raw_model.state_dict(), optim_state
        if not self.fsdp:
            return self.raw_model.state_dict(), self.optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.raw_model, self.optimizer, options=options)

    def _load(self, state: dict[str, Any]) -> int:
        """Restore everything from a checkpoint; returns the data position (global batches).
        Checks its structure and the model's parameter shapes before loading anything."""
        by_name = state.get("optimizer_fqn")  # written under FSDP: loads into any layout
        per_rank = state.get("optimizer_per_rank")
        if by_name is None and not per_rank:
            checkpoint.require(state, self.ckpt_path, {"optimizer": dict})
        elif by_name is not None:
            checkpoint.require(state, self.ckpt_path, {"optimizer_fqn": dict})
        if not isinstance(state["rng"], list) or len(state["rng"]) != state["world_size"]:
            raise checkpoint.CheckpointError(
                f"{self.ckpt_path} is {checkpoint.NOT_OURS} (rng holds no state per rank); {checkpoint.KEEP}"
            )
        self._check_model(state)
        if self.fsdp and by_name is None:
            raise ValueError(f"{self.ckpt_path} was written without FSDP: resume it with parallel='ddp'")
        if by_name is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(
                self.raw_model,
                self.optimizer,
                model_state_dict=state["model"],
                optim_state_dict=by_name,
                options=StateDictOptions(full_state_dict=True),
            )
        elif per_rank:
            self.raw_model.load_state_dict(state["model"])
            if state["world_size"] != self.dist.world_size:
                raise ValueError(
                    f"{self.ckpt_path} holds per-rank optimizer state for {state['world_size']} ranks; "
                    f"resume with the same world size (now {self.dist.world_size})"
                )
            path = self._rank_optim_path(self.dist.rank, state["step"])
            legacy = self.out_dir / f"ckpt.optim.rank{self.dist.rank}.pt"  # before files were named by step
            path = legacy if not path.exists() and legacy.exists() else path
            own = checkpoint.load(path, {"optimizer": dict, "step": int})
            if own["step"] != state["step"]:
                raise ValueError(
                    f"{path} is from step {own['step']}, "
                    f"{self.ckpt_path} from step {state['step']}: an interrupted save"
                )
            self.optimizer.load_state_dict(own["optimizer"])
        else:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        self._resume_schedule(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        elif self.scaler.is_enabled():  # saved without float16 (a disabled scaler keeps no state)
            self._print("resuming in float16 a run saved without it: the GradScaler starts afresh")
        self.step, self.tokens, self.train_time = state["step"], state["tokens"], state["train_time"]
        self._last_val = state.get("val_loss")  # (absent from checkpoints written before it was kept)
        if state["world_size"] == self.dist.world_size:
            try:
                checkpoint.set_rng_state(state["rng"][self.dist.rank])
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise checkpoint.CheckpointError(
                    f"{self.ckpt_path} is {checkpoint.NOT_OURS} (its RNG state does not load: {exc!r}); "
                    f"{checkpoint.KEEP}"
                ) from None
        else:
            self._print(
                f"world size changed ({state['world_size']} -> {self.dist.world_size}): RNG streams reseeded"
            )
        now = json.loads(json.dumps(self.cfg.to_dict()))
        changed = {k for k, v in state["config"].items() if now.get(k) != v}
        if changed:
            self._print(f"resuming with changed config keys: {', '.join(sorted(changed))}")
        return int(state["loader"]["chunks"])

    def _check_model(self, state: dict[str, Any]) -> None:
        """A ValueError naming the checkpoint when its parameters are not this config's model's
        (torch's load would fail with a RuntimeError listing every tensor)."""
        saved, own = state["model"], self.raw_model.state_dict()
        missing = sorted(map(str, own.keys() - saved.keys()))
        unexpected = sorted(map(str, saved.keys() - own.keys()))
        shapes = [
            f"{k} {_shape(saved[k])} vs {_shape(own[k])}"
            for k in own.keys() & saved.keys()
            if not torch.is_tensor(saved[k]) or saved[k].shape != own[k].shape
        ]
        if not (missing or unexpected or shapes):
            return
        parts = [
            f"{what} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("shape", sorted(shapes)))
            if names
        ]
        then = state["config"]
        now = json.loads(json.dumps(self.cfg.to_dict()))
        changed = [k for k in ("model", "model_args") if then.get(k) != now.get(k)]
        diff = ", ".join(f"{k}={then.get(k)!r} (now {now.get(k)!r})" for k in changed)
        was = f"; it was written with {diff}" if changed else ""
        raise ValueError(
            f"{self.ckpt_path} holds another model than this config builds ({'; '.join(parts)}){was}: "
            "resume with the model settings of the run (model, model_args), or train into a new --out-dir"
        )

    def _resume_schedule(self, saved: dict[str, Any]) -> None:
        """The saved position in the schedule, with the schedule itself (peak lr, warmup, decay,
        floor) from this run's config, as nanoGPT's ``get_lr``: a run resumed with a larger
        ``max_steps`` decays over the new length. Unchanged, the lrs are those saved."""
        sched = self.scheduler
        sched.last_epoch, sched._step_count = saved["last_epoch"], saved["_step_count"]
        for group, base, multiplier in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["initial_lr"] = base
            lr = base * multiplier(sched.last_epoch)  # what LambdaLR.step() sets
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        sched._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    # --- helpers -----------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.cfg.name or self.out_dir.name

    def _optimizer_state_per_rank(self) -> bool:
        return self.dist.ddp and hasattr(self.optimizer, "needs_grad_sync")

    def _rank_optim_path(self, rank: int, step: int) -> Path:
        return self.out_dir / f"ckpt.optim.rank{rank}.step{step}.pt"

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        if self.fsdp:  # reduce-scatter the gradients on the last micro-batch only
            self.raw_model.set_requires_gradient_sync(sync)  # type: ignore[operator]
            return contextlib.nullcontext()
        if self.dist.ddp and not sync:
            return self.model.no_sync()  # type: ignore[operator]
        return contextlib.nullcontext()

    def _nonfinite_anywhere(self, loss: torch.Tensor, gnorm: torch.Tensor) -> bool:
        bad = ~torch.isfinite(loss)
        if not self.scaler.is_enabled():  # with fp16 the scaler itself skips inf gradients
            bad = bad | ~torch.isfinite(gnorm)
        bad = bad.float()
        if self.dist.ddp:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item())

    def _write_config(self) -> None:
        if not self.dist.is_main:
            return
        info = {
            "config": self.cfg.to_dict(),
            "label": self.label,
            "model": self.model_cfg.__dict__,
            "world_size": self.dist.world_size,
            "tokens_per_step": self.tokens_per_step,
            "data": {k: self.meta.get(k) for k in ("train_tokens", "val_tokens", "split", "tokenizer")},
        }
        write_json_atomic(self.out_dir / "config.json", info, indent=2)

    def _print(self, msg: str) -> None:
        if self.dist.is_main:
            print(f"[lm train] {msg}", flush=True)


class _NoBar:
    def set_postfix_str(self, s: str) -> None:
        pass


def set_sdpa_backend(name: str) -> None:
    """Restrict ``F.scaled_dot_product_attention`` on CUDA to one kernel family (math stays as the
    fallback); ``"auto"`` re-enables all and lets torch choose. Process-wide, read at trace time."""
    b = torch.backends.cuda
    b.enable_flash_sdp(name in ("auto", "flash"))
    b.enable_cudnn_sdp(name in ("auto", "cudnn"))
    b.enable_mem_efficient_sdp(name in ("auto", "efficient"))
    b.enable_math_sdp(True)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if torch.is_tensor(value) else f"(a {type(value).__name__})"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run one training job (joining the torchrun process group if launched by torchrun)."""
    try:
        return Trainer(cfg, resume=resume).run()
    finally:
        distributed.shutdown()
