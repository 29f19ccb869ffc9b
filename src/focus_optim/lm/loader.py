"""Batches from the ``uint16`` token files: memory-mapped, deterministic and prefetched.

Which windows a batch holds depends only on ``(seed, sequence index)``, never on timing, the
number of workers or the world size:

* the stream of training sequences is numbered 0, 1, 2, ...; sequence ``i`` is the window
  ``tokens[s : s + T + 1]`` (inputs ``[s, s+T)``, targets shifted by one), where
  - ``sampling="shuffle"`` (default): the file is cut into non-overlapping windows of stride
    ``T``; epoch ``e = i // n_windows`` visits them in the order of a permutation drawn from
    ``numpy.random.default_rng([seed, e])`` (every token once per epoch);
  - ``sampling="random"``: ``s`` is a counter-based hash of ``(seed, i)`` (uniform offsets with
    replacement, as nanoGPT's ``get_batch``);
* an optimizer step consumes ``G = batch_size * grad_accum`` consecutive sequences (the global
  batch), cut into ``grad_accum`` micro-batches of ``batch_size``; rank ``r`` of ``W`` takes
  micro-batches ``r, r + W, r + 2W, ...`` of every step, so the ranks read disjoint parts of
  the same global batch that one process would read.

The loader's whole state is the number of micro-batches this rank has consumed
(:meth:`TrainLoader.state_dict`), which is what a checkpoint stores.

A background thread builds the next batches (in pinned memory on CUDA) while the GPU works, and
:meth:`TrainLoader.next` issues the host-to-device copy of batch ``j + 1`` with
``non_blocking=True`` before returning batch ``j``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

_Batch = tuple[torch.Tensor, torch.Tensor]

SAMPLING = ("shuffle", "random")


def open_tokens(path: str | Path) -> np.memmap:
    """Memory-map a ``uint16`` token file (read-only)."""
    return np.memmap(path, dtype=np.uint16, mode="r")


def check_split_lengths(train_tokens: int, val_tokens: int, block_size: int) -> None:
    """Both splits hold at least one training window of ``block_size`` + 1 tokens (+ 1 for a
    shuffled start): checked from meta.json before the model is built, so that a ``block_size``
    the data cannot fill is an error, not a large allocation first."""
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        if n < block_size + 2:
            raise ValueError(
                f"Invalid model_args.block_size: {block_size} (allowed: at most {n - 2}, as the {split} "
                f"split holds {n} tokens)"
            )


class WindowSampler:
    """Start offsets of training sequences by global index (see the module docstring)."""

    def __init__(self, n_tokens: int, block_size: int, seed: int, sampling: str = "shuffle") -> None:
        if sampling not in SAMPLING:
            raise ValueError(f"Invalid sampling: {sampling!r} (allowed: {', '.join(SAMPLING)})")
        if n_tokens < block_size + 2:
            raise ValueError(f"a split of {n_tokens} tokens is too short for block_size {block_size}")
        self.block_size, self.seed, self.sampling = block_size, seed, sampling
        self.n_windows = (n_tokens - 1) // block_size  # shuffle: window w is [wT, wT + T + 1)
        self.max_start = n_tokens - block_size - 1  # random: start in [0, max_start]
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def starts(self, first: int, count: int) -> np.ndarray:
        """Start offsets of sequences ``first .. first + count - 1``."""
        idx = np.arange(first, first + count, dtype=np.int64)
        if self.sampling == "random":
            return (_mix64(idx, self.seed) % np.uint64(self.max_start + 1)).astype(np.int64)
        out = np.empty(count, dtype=np.int64)
        epochs = idx // self.n_windows
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self._permutation(int(e))[idx[sel] % self.n_windows] * self.block_size
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm


def _mix64(x: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 of ``x`` keyed by ``seed``: a counter-based uniform 64-bit hash."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class TokenError(ValueError):
    """A token file holds an id outside the vocabulary; the message names the file."""


def gather(
    tokens: np.ndarray, starts: np.ndarray, block_size: int, *, vocab_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) int64 tensors of shape (len(starts), block_size). ``vocab_size``: raise a
    :class:`TokenError` naming the file for a token id outside it (the embedding would fail with
    an IndexError; checking each batch, not the whole file, keeps opening a large file free)."""
    rows = np.stack([np.asarray(tokens[s : s + block_size + 1]) for s in starts]).astype(np.int64)
    if vocab_size is not None and rows.size and rows.max() >= vocab_size:
        r, c = np.argwhere(rows >= vocab_size)[0]
        name = getattr(tokens, "filename", None) or "the token array"
        raise TokenError(
            f"{name} holds token id {rows[r, c]} at token {int(starts[r]) + int(c)}, outside the "
            f"vocabulary (vocab_size {vocab_size}): corrupt or from another tokenizer; "
            "re-run `focus-optim lm prepare --overwrite`"
        )
    xy = torch.from_numpy(rows)
    return xy[:, :-1], xy[:, 1:]


class TrainLoader:
    """This rank's micro-batches of the training stream, prefetched (see the module docstring).

    Args:
        path: ``train.bin``.
        batch_size: sequences per micro-batch.
        block_size: sequence length ``T``.
        grad_accum: micro-batches per optimizer step, summed over all ranks.
        rank, world_size: this process and the number of processes.
        seed, sampling: see :class:`WindowSampler`.
        device: where batches go; pinned memory and non-blocking copies on CUDA.
        consumed: micro-batches this rank has already consumed (from a checkpoint).
        prefetch: batches the background thread keeps ready.
        vocab_size: token ids must be below it (else :class:`TokenError`, see :func:`gather`).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int,
        block_size: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        sampling: str = "shuffle",
        device: torch.device | str = "cpu",
        consumed: int = 0,
        prefetch: int = 4,
        vocab_size: int | None = None,
    ) -> None:
        if grad_accum % world_size:
            raise ValueError(f"grad_accum ({grad_accum}) must be a multiple of the world size ({world_size})")
        self.tokens = open_tokens(path)
        self.sampler = WindowSampler(len(self.tokens), block_size, seed, sampling)
        self.batch_size, self.block_size = batch_size, block_size
        self.grad_accum, self.rank, self.world_size = grad_accum, rank, world_size
        self.local_accum = grad_accum // world_size
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        self.consumed = consumed
        self.path = Path(path)
        self.vocab_size = vocab_size
        self._queue: queue.Queue[_Batch | BaseException] = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(consumed,), daemon=True)
        self._thread.start()
        self._next_on_device = self._to_device(self._take())

    def global_micro_index(self, j: int) -> int:
        """Index of this rank's ``j``-th micro-batch within the stream of all micro-batches."""
        step, k = divmod(j, self.local_accum)
        return step * self.grad_accum + k * self.world_size + self.rank

    def cpu_batch(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``j``-th micro-batch on the CPU (no prefetching; used by tests)."""
        first = self.global_micro_index(j) * self.batch_size
        starts = self.sampler.starts(first, self.batch_size)
        return gather(self.tokens, starts, self.block_size, vocab_size=self.vocab_size)

    def _produce(self, j: int) -> None:
        try:
            if self.pin:
                torch.cuda.set_device(self.device)  # per thread: pin through this rank's GPU, not GPU 0
            while not self._stop.is_set():
                x, y = self.cpu_batch(j)
                if self.pin:
                    x, y = x.pin_memory(), y.pin_memory()
                self._put((x, y))
                j += 1
        except BaseException as exc:  # handed to the consumer, which would otherwise wait forever
            self._put(exc)

    def _put(self, item: _Batch | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _take(self) -> _Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put(item)  # every later call fails the same way
            if isinstance(item, TokenError):  # bad data, not a failing reader: the caller's error
                raise TokenError(str(item)) from item
            raise RuntimeError(f"reading batches from {self.path} failed: {item!r}") from item
        return item

    def _to_device(self, xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = xy
        if self.device.type == "cpu":
            return x, y
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch on the device; the copy of the one after is already under way."""
        current = self._next_on_device
        self._next_on_device = self._to_device(self._take())
        self.consumed += 1
        return current

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next()

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "rank": self.rank, "world_size": self.world_size}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def val_windows(n_tokens: int, block_size: int, max_sequences: int) -> np.ndarray:
    """Start offsets of a fixed validation set: up to ``max_sequences`` evenly spaced windows."""
    n_windows = (n_tokens - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"the val split ({n_tokens} tokens) is shorter than one block of {block_size}")
    count = min(n_windows, max_sequences)
    picks = np.linspace(0, n_windows - 1, count).round().astype(np.int64)
    return np.unique(picks) * block_size
