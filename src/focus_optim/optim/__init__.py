"""Every optimizer of the package. Each update rule lives here and nowhere else."""

from .adamw import AdamW
from .conda import Conda
from .exadam import EXAdam
from .focus import FOCUS
from .lion import Lion
from .muon import Muon, newton_schulz
from .onebit_adam import OneBitAdam
from .registry import (
    REGISTRY,
    OptimizerSpec,
    available_optimizers,
    get_spec,
    make_optimizer,
    param_groups,
    register,
)
from .root import ROOT
from .signum import Signum
from .sophia import SophiaG, sampled_label_loss
from .zero import zero_redundancy

__all__ = [
    "FOCUS",
    "REGISTRY",
    "ROOT",
    "AdamW",
    "Conda",
    "EXAdam",
    "Lion",
    "Muon",
    "OneBitAdam",
    "OptimizerSpec",
    "Signum",
    "SophiaG",
    "available_optimizers",
    "get_spec",
    "make_optimizer",
    "newton_schulz",
    "param_groups",
    "register",
    "sampled_label_loss",
    "zero_redundancy",
]
