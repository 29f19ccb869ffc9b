"""The training configuration: a dataclass, loaded from TOML and overridden by ``key=value`` pairs.

Example ``configs/lm/focus.toml``::

    model = "gpt2"
    optimizer = "focus"
    lr = 6e-4
    [optimizer_args]
    betas = [0.9, 0.99]
    gamma = 0.2
    weight_decay = 0.2

A file may start from another with ``base = "file.toml"`` (a path relative to it); each key the
file sets replaces the base's value, tables (``optimizer_args``) included.

Overrides are ``key=value`` strings whose value is parsed as TOML (``lr=1e-3``,
``optimizer_args.betas=[0.9,0.95]``, ``compile=true``); a value that is not valid TOML is taken
as a string (``optimizer=adamw``). Dotted keys reach into the two table fields
(``optimizer_args``, ``model_args``). Unknown keys raise a ValueError listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli_types import MAX_SEED

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

DTYPES = ("bfloat16", "float16", "float32")
SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NONFINITE_POLICIES = ("stop", "skip")
PARALLEL_MODES = ("ddp", "fsdp")
#: Config keys the trainer passes to ``make_optimizer`` itself: never in ``optimizer_args``.
OWN_KEYS = ("lr", "decay_embeddings")


@dataclass
class TrainConfig:
    """Everything a training run depends on. Defaults: GPT-2 124M, nanoGPT/paper schedule shape."""

    # where
    data_dir: str = ".data/lm/corpus"  # a `focus-optim lm prepare` output
    out_dir: str = "runs/lm"  # config.json, log.jsonl, ckpt.pt, tb/
    name: str = ""  # label in logs and plots (default: the out_dir's name)
    # model
    model: str = "gpt2"  # tiny | gpt2 | gpt2-medium
    model_args: dict[str, Any] = field(default_factory=dict)  # GPTConfig overrides, e.g. block_size
    # batch: tokens per step = batch_size * grad_accum * block_size (grad_accum summed over ranks)
    batch_size: int = 16  # sequences per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step over all ranks (multiple of world size)
    sampling: str = "shuffle"  # shuffle (epochs of non-overlapping windows) | random (nanoGPT)
    seed: int = 1337
    # optimisation
    optimizer: str = "adamw"  # any registered name (focus-optim list-optimizers)
    lr: float = 6e-4  # peak learning rate
    optimizer_args: dict[str, Any] = field(default_factory=dict)  # other hyperparameters
    decay_embeddings: bool = True  # nanoGPT: True; the Sophia/FOCUS GPT-2 code: False
    max_steps: int = 100_000
    warmup_steps: int = 2000
    decay_steps: int = 0  # cosine decay ends here (0: max_steps), then stays at min_lr
    min_lr_ratio: float = 0.05  # final lr / peak lr (paper: about 0.05)
    grad_clip: float = 1.0  # global grad-norm clip; 0 disables
    nonfinite: str = "stop"  # stop (keep the last good checkpoint) | skip (skip that step)
    # numerics and speed
    dtype: str = "bfloat16"  # autocast dtype: bfloat16 | float16 (with GradScaler) | float32
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | max-autotune-no-cudagraphs | ...
    inductor_args: dict[str, Any] = field(default_factory=dict)  # torch._inductor.config options to set
    sdpa_backend: str = "auto"  # attention kernel on CUDA: auto (torch's choice) | flash | cudnn | ...
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    parallel: str = "ddp"  # several ranks: ddp (replicated model) | fsdp (FSDP2, every block sharded)
    zero: bool = False  # under DDP: optimizer state sharded over the ranks (ZeRO-1, torch's own)
    # evaluation, logging, checkpoints
    eval_interval: int = 250  # steps between val evaluations (0: only at the start and the end)
    eval_sequences: int = 256  # fixed val windows (evenly spaced; fewer if the split is short)
    log_interval: int = 10  # steps between log flushes (one host sync each)
    ckpt_interval: int = 1000  # steps between checkpoints (0: none during the run)
    save_final: bool = True  # write a checkpoint at the end
    tensorboard: bool = True  # also log to out_dir/tb when tensorboard is installed
    progress: bool = True  # tqdm bar on rank 0
    peak_flops: float = 989e12  # per device, for MFU (H100 SXM bf16 dense)

    @classmethod
    def valid_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(values) - set(cls.valid_keys()))
        if unknown:
            raise ValueError(
                f"Unknown config key(s): {', '.join(unknown)}; valid: {', '.join(cls.valid_keys())}"
            )
        cfg = cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            want = _TYPES[str(f.type)]
            value = getattr(self, f.name)
            if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
                raise ValueError(
                    f"Invalid {f.name}: {value!r} (allowed: {_TYPE_NAMES.get(str(f.type), f.type)})"
                )
        checks = [
            (self.dtype in DTYPES, f"dtype {self.dtype!r} (allowed: {', '.join(DTYPES)})"),
            (
                self.compile_mode in COMPILE_MODES,
                f"compile_mode {self.compile_mode!r} (allowed: {', '.join(COMPILE_MODES)})",
            ),
            (
                self.sdpa_backend in SDPA_BACKENDS,
                f"sdpa_backend {self.sdpa_backend!r} (allowed: {', '.join(SDPA_BACKENDS)})",
            ),
            (self.nonfinite in NONFINITE_POLICIES, f"nonfinite {self.nonfinite!r} (allowed: stop, skip)"),
            (self.parallel in PARALLEL_MODES, f"parallel {self.parallel!r} (allowed: ddp, fsdp)"),
            (
                not (self.zero and self.parallel == "fsdp"),
                "zero = true with parallel = 'fsdp' (allowed: zero with ddp; FSDP shards the state already)",
            ),
            (self.batch_size >= 1, f"batch_size {self.batch_size} (allowed: >= 1)"),
            (self.grad_accum >= 1, f"grad_accum {self.grad_accum} (allowed: >= 1)"),
            (self.max_steps >= 0, f"max_steps {self.max_steps} (allowed: >= 0)"),
            (self.warmup_steps >= 0, f"warmup_steps {self.warmup_steps} (allowed: >= 0)"),
            (self.decay_steps >= 0, f"decay_steps {self.decay_steps} (allowed: >= 0; 0: max_steps)"),
            (self.grad_clip >= 0, f"grad_clip {self.grad_clip} (allowed: >= 0; 0: no clipping)"),
            (self.eval_interval >= 0, f"eval_interval {self.eval_interval} (allowed: >= 0)"),
            (self.eval_sequences >= 1, f"eval_sequences {self.eval_sequences} (allowed: >= 1)"),
            (self.ckpt_interval >= 0, f"ckpt_interval {self.ckpt_interval} (allowed: >= 0)"),
            (self.peak_flops > 0, f"peak_flops {self.peak_flops} (allowed: > 0)"),
            (0.0 <= self.min_lr_ratio <= 1.0, f"min_lr_ratio {self.min_lr_ratio} (allowed: [0, 1])"),
            (self.log_interval >= 1, f"log_interval {self.log_interval} (allowed: >= 1)"),
            (self.lr >= 0, f"lr {self.lr} (allowed: >= 0)"),
            (0 <= self.seed < MAX_SEED, f"seed {self.seed} (allowed: an integer in 0 .. 2**63 - 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"Invalid {msg}")
        own = [k for k in OWN_KEYS if k in self.optimizer_args]
        if own:
            raise ValueError(
                f"Invalid optimizer_args key {own[0]!r}: it is set by the config key {own[0]!r} "
                f"({own[0]} = ... in the file, or --set {own[0]}=...), not by optimizer_args"
            )
        if self.inductor_args:
            import torch._inductor.config as inductor_config

            for key in self.inductor_args:
                if not hasattr(inductor_config, key):
                    raise ValueError(
                        f"Invalid inductor_args key {key!r} (allowed: options of torch._inductor.config, "
                        "e.g. coordinate_descent_tuning)"
                    )


_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
               "dict[str, Any]": "a table"}  # fmt: skip
_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "dict[str, Any]": dict,
}


TABLES = ("optimizer_args", "model_args", "inductor_args")


def _coerce(cls: type, key: str, value: Any) -> Any:
    """TOML gives ints for floats written without a dot (``lr = 1``) and lists for tuples."""
    default = {f.name: f for f in dataclasses.fields(cls)}[key]
    if default.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "optimizer_args" and isinstance(value, dict):
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return value


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML if it parses (numbers, booleans, arrays, quoted strings), else a string.
    A parenthesised tuple, ``(0.9,0.95)``, reads as the array ``[0.9, 0.95]``, as in ``--optimizers``."""
    stripped = text.strip()
    candidates = [text]
    if stripped.startswith("(") and stripped.endswith(")"):
        candidates.insert(0, f"[{stripped[1:-1]}]")
    for candidate in candidates:
        try:
            return tomllib.loads(f"v = {candidate}")["v"]
        except tomllib.TOMLDecodeError:
            continue
    return text


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` (or ``table.key=value``) strings to a config dict (returns a copy)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"Invalid override {item!r}: expected key=value")
        head, dot, sub = key.partition(".")
        if head not in TrainConfig.valid_keys():
            raise ValueError(f"Unknown config key {head!r}; valid: {', '.join(TrainConfig.valid_keys())}")
        if dot:
            if head not in TABLES:
                raise ValueError(f"Invalid override {item!r}: only {', '.join(TABLES)} are tables")
            out.setdefault(head, {})[sub] = parse_value(text)
        else:
            out[head] = parse_value(text)
    return out


def read_toml(path: str | os.PathLike[str], _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's values; ``base = "other.toml"`` (relative to the file) is read first and
    every key the file sets replaces the base's (a table as a whole). Unknown keys raise a
    ValueError listing the valid ones; so do a file that is not UTF-8 TOML, a ``base`` that is not
    a path string, and files whose ``base`` chain comes back to one of them."""
    path = Path(path)
    chain = (*_chain, path)
    if path.resolve() in {p.resolve() for p in _chain}:
        raise ValueError(f"{path}: the base files form a cycle ({' -> '.join(map(str, chain))})")
    if not path.is_file():
        where = f" (relative to {Path.cwd()})" if not path.is_absolute() else ""
        kind = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"config file {path} {kind}{where}")
    try:
        values = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: not a TOML file (not UTF-8 text: {exc.reason} at byte {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML ({exc})") from None
    base = values.pop("base", None)
    unknown = sorted(set(values) - set(TrainConfig.valid_keys()))
    if unknown:
        raise ValueError(
            f"{path}: unknown config key(s): {', '.join(unknown)}; "
            f"valid: base, {', '.join(TrainConfig.valid_keys())}"
        )
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ValueError(
            f"{path}: invalid base {base!r} (allowed: the path of another TOML file, relative to this one)"
        )
    return {**read_toml(path.parent / base, chain), **values}


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> TrainConfig:
    """Config from a TOML file (optional) plus ``key=value`` overrides."""
    values = read_toml(path) if path is not None else {}
    return TrainConfig.from_dict(apply_overrides(values, overrides or []))
