"""focus-optim: the FOCUS optimizer, its baselines, and the labs that reproduce the paper.

``import focus_optim`` loads only the optimizers and the registry; the labs (toy landscape,
MNIST, GPT-2) import matplotlib, xarray and tiktoken lazily inside their own modules.
"""

from __future__ import annotations

from typing import Any

from .optim import (
    FOCUS,
    AdamW,
    Signum,
    available_optimizers,
    get_spec,
    make_optimizer,
    param_groups,
    zero_redundancy,
)

__version__ = "0.1.0"


def load_results(path: Any) -> Any:
    """Load a sweep's results store as an ``xarray.Dataset`` (see :mod:`focus_optim.sweep`)."""
    from .sweep import load_results as _load

    return _load(path)


def __getattr__(name: str) -> Any:
    # Optimizers added by later modules are reachable as attributes without importing them eagerly.
    from .optim import registry

    for spec in registry.REGISTRY.values():
        if spec.target.rsplit(":", 1)[1] == name:
            return spec.load()
    raise AttributeError(f"module 'focus_optim' has no attribute {name!r}")


__all__ = [
    "FOCUS",
    "AdamW",
    "Signum",
    "__version__",
    "available_optimizers",
    "get_spec",
    "load_results",
    "make_optimizer",
    "param_groups",
    "zero_redundancy",
]
