"""Every optimizer of the package. Each update rule lives here and nowhere else."""

from .adamw import AdamW
from .focus import FOCUS
from .registry import (
    REGISTRY,
    OptimizerSpec,
    available_optimizers,
    get_spec,
    make_optimizer,
    param_groups,
    register,
)
from .signum import Signum

__all__ = [
    "FOCUS",
    "REGISTRY",
    "AdamW",
    "OptimizerSpec",
    "Signum",
    "available_optimizers",
    "get_spec",
    "make_optimizer",
    "param_groups",
    "register",
]
