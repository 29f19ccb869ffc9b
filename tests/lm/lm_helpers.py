"""Helpers of the GPT-2 lab tests: a synthetic token dataset, a tiny-model config, log records."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from focus_optim.lm.config import TrainConfig, load_config

VOCAB = 512


def write_synthetic(data_dir: Path, n_train: int = 20_000, n_val: int = 3_000, seed: int = 0) -> Path:
    """A learnable token stream (a noisy linear-congruential chain) in the prepare output format."""
    rng = np.random.default_rng(seed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        noise = rng.random(n) < 0.1
        jumps = rng.integers(0, VOCAB, n)
        out = np.empty(n, dtype=np.uint16)
        x = 0
        for i in range(n):
            x = int(jumps[i]) if noise[i] else (5 * x + 3) % VOCAB
            out[i] = x
        out.tofile(data_dir / f"{split}.bin")
    meta = {"vocab_size": VOCAB, "train_tokens": n_train, "val_tokens": n_val}
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return data_dir


def tiny_config(data_dir: Path, out_dir: Path, *overrides: str, **values: Any) -> TrainConfig:
    """A CPU-sized run: tiny model, float32, no progress bar or TensorBoard."""
    extra = []
    for k, v in values.items():
        if isinstance(v, dict):  # tables as dotted keys
            extra += [f"{k}.{sub}={json.dumps(x)}" for sub, x in v.items()]
        else:
            extra.append(f"{k}={json.dumps(v)}")
    return load_config(None, tiny_overrides(data_dir, out_dir) + list(overrides) + extra)


def tiny_overrides(data_dir: Path, out_dir: Path) -> list[str]:
    """:func:`tiny_config`'s settings as ``key=value`` overrides (``--set`` on a command line)."""
    return [
        "model=tiny",
        f"data_dir={json.dumps(str(data_dir))}",
        f"out_dir={json.dumps(str(out_dir))}",
        "batch_size=4",
        "grad_accum=2",
        "max_steps=8",
        "warmup_steps=2",
        "dtype=float32",
        "eval_interval=4",
        "eval_sequences=16",
        "log_interval=1",
        "ckpt_interval=2",
        "optimizer=adamw",
        "lr=3e-3",
        "progress=false",
        "tensorboard=false",
        "device=cpu",
    ]


def records(out_dir: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def kill_after_batches(monkeypatch: Any, batches: int) -> Callable[[], None]:
    """Make the train loader raise KeyboardInterrupt on micro-batch ``batches + 1`` (a simulated
    kill); returns a function that restores the real loader."""
    from focus_optim.lm.loader import TrainLoader

    real_next, calls = TrainLoader.next, {"n": 0}

    def crashing_next(self: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > batches:
            raise KeyboardInterrupt("simulated kill")
        return real_next(self)

    monkeypatch.setattr(TrainLoader, "next", crashing_next)
    return lambda: monkeypatch.setattr(TrainLoader, "next", real_next)
