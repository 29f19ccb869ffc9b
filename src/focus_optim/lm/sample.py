"""``focus-optim lm sample``: continue a prompt with a trained run's model (nanoGPT's ``sample.py``).

The model is rebuilt from the checkpoint's own config (``model`` and ``model_args``) and loaded
with ``torch.load(..., weights_only=True)``; text goes through the GPT-2 BPE (tiktoken, offline as
:mod:`focus_optim.lm.tokenizer` finds it). Sampling is :meth:`GPT.generate
<focus_optim.lm.model.GPT.generate>`: temperature, top-k, and never an id the tokenizer lacks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .model import GPT, model_config
from .progress import progress

#: What sampling needs of a checkpoint (types checked before building the model).
SAMPLE_FIELDS: dict[str, Any] = {"model": dict, "config": dict, "config.model": str}


def checkpoint_path(run: str | os.PathLike[str]) -> Path:
    """``run`` itself if it is a file, else its ``ckpt.pt``; a clear error if there is none."""
    path = Path(run)
    path = path / checkpoint.CKPT_NAME if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path} (give a run directory of lm train or its ckpt.pt)")
    return path


def load_model(run: str | os.PathLike[str], device: torch.device | str = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The run's model in eval mode on ``device``, and its checkpoint (the model's tensors removed)."""
    path = checkpoint_path(run)
    state = checkpoint.load(path, SAMPLE_FIELDS)
    cfg = state["config"]
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise checkpoint.CheckpointError(f"{path}: its config's model_args is not a table; {checkpoint.KEEP}")
    model = GPT(model_config(cfg["model"], **model_args))
    try:
        model.load_state_dict(state.pop("model"))
    except RuntimeError as exc:  # missing / unexpected keys, other shapes
        reason = str(exc).splitlines()[0][:300]
        raise checkpoint.CheckpointError(
            f"{path} does not hold the model its config describes ({reason}); {checkpoint.KEEP}"
        ) from None
    return model.to(device).eval(), state


def check_settings(max_new_tokens: int, temperature: float, top_k: int | None, num_samples: int) -> None:
    """ValueErrors naming the argument and its allowed range."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"Invalid max_new_tokens: {max_new_tokens!r} (allowed: an integer >= 0)")
    if not (isinstance(temperature, int | float) and temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"Invalid temperature: {temperature!r} (allowed: a finite number >= 0; 0 is greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"Invalid top_k: {top_k!r} (allowed: an integer >= 1, or None for all)")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"Invalid num_samples: {num_samples!r} (allowed: an integer >= 1)")


def sample_tokens(
    model: GPT,
    prompt: Sequence[int],
    *,
    num_samples: int = 1,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 200,
    vocab_limit: int | None = None,
    seed: int = 1337,
    show_progress: bool = False,
) -> list[list[int]]:
    """``num_samples`` continuations of the token ids ``prompt`` (the new tokens only); the same
    ``seed`` gives the same samples on the same device. ``show_progress``: a bar over the new
    tokens (one :meth:`GPT.generate` step at a time: the same draws)."""
    check_settings(max_new_tokens, temperature, top_k, num_samples)
    limit = min(model.config.vocab_size, vocab_limit or model.config.vocab_size)
    if not prompt:
        raise ValueError("Invalid prompt: empty (allowed: at least one token)")
    bad = [t for t in prompt if not isinstance(t, int) or not 0 <= t < limit]
    if bad:
        raise ValueError(f"Invalid prompt tokens: {bad[:8]} (allowed: integers in [0, {limit}))")
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([list(prompt)] * num_samples, dtype=torch.long, device=device)
    bar = progress(max_new_tokens, desc="sampling", unit="tok", enabled=show_progress)
    for _ in range(max_new_tokens):
        idx = model.generate(idx, 1, temperature=temperature, top_k=top_k, vocab_limit=limit, generator=gen)
        bar.update(1)
    bar.close()
    return idx[:, len(prompt) :].tolist()


def sample_text(
    run: str | os.PathLike[str],
    prompt: str = "\n",
    *,
    device: str = "auto",
    bpe_file: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> list[str]:
    """Continuations of the text ``prompt`` by the run's model, decoded with the GPT-2 BPE."""
    from .distributed import resolve_device
    from .tokenizer import gpt2_encoding

    model, _ = load_model(run, resolve_device(device))  # first: a wrong run directory is the likelier slip
    enc = gpt2_encoding(bpe_file)
    ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    return [enc.decode(t) for t in sample_tokens(model, ids, vocab_limit=enc.n_vocab, **settings)]
