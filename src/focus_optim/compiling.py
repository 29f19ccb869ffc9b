"""What the labs share about ``torch.compile``."""

from __future__ import annotations

import torch


def raise_recompile_limit(at_least: int) -> None:
    """Let dynamo keep at least ``at_least`` compiled variants of one function.

    The labs compile the same step function for many workspaces, optimizer classes or batch
    shapes; past dynamo's default limit (8) it would silently fall back to eager, which is slower
    and rounds differently.
    """
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    if getattr(cfg, name) < at_least:
        setattr(cfg, name, at_least)
