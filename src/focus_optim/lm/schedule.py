"""Learning-rate schedule: linear warmup, cosine decay to ``min_ratio * peak``, then constant.

Exactly nanoGPT's ``get_lr`` expressed as a multiplier for ``torch.optim.lr_scheduler.LambdaLR``
(the paper: 2000 warmup steps, cosine to about 0.05 x peak at the last step). The multiplier is a
plain object whose state is three numbers, so the scheduler's ``state_dict`` stays JSON-able.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class WarmupCosine:
    """Multiplier of the peak lr at 0-based optimizer step ``step``."""

    warmup_steps: int
    decay_steps: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if step >= self.decay_steps:
            return self.min_ratio
        progress = (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps)
        return self.min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - self.min_ratio)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, decay_steps: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :class:`WarmupCosine`; call ``step()`` after each optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, decay_steps, min_ratio))
