"""Optimizer configurations of the MNIST lab, named by strings such as ``"focus:gamma=0.4"``.

Syntax: ``NAME[:KEY=VALUE[,KEY=VALUE...]]`` where ``NAME`` is any registry name or alias
(``focus-optim list-optimizers``) and each ``VALUE`` is a Python literal (``0.4``, ``(0.9, 0.99)``)
or a bare word (``decay_mode=reference``). The paper's settings for Figure 2c/2d (appendix A.2)
are this lab's defaults for three names; every other optimizer starts from its registry defaults:

=========  ==========================================
adamw      betas (0.9, 0.999)                  [A.2]
signum     momentum 0.9                        [A.2]
focus      betas (0.9, 0.99), gamma 0.2        [A.2; gamma 0.4 is the paper's second FOCUS]
=========  ==========================================

``lr`` is the scanned axis and ``weight_decay`` a scan setting, so neither may appear in a name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..optim.registry import get_spec, parse_optimizer_spec

LAB_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"betas": (0.9, 0.999)},
    "signum": {"momentum": 0.9},
    "focus": {"betas": (0.9, 0.99), "gamma": 0.2},
}
PAPER_OPTIMIZERS: tuple[str, ...] = ("adamw", "signum", "focus:gamma=0.2", "focus:gamma=0.4")
SCANNED = ("lr", "weight_decay")


@dataclass(frozen=True)
class OptimizerConfig:
    """A parsed configuration: the label as given, the registry name and the hyperparameters."""

    label: str
    name: str
    hparams: Mapping[str, Any] = field(default_factory=dict)
    matrix_only: bool = False


def parse_optimizer(label: str) -> OptimizerConfig:
    """Parse ``NAME[:KEY=VALUE,...]``; unknown names or hyperparameters raise ``ValueError``."""
    spec, overrides = parse_optimizer_spec(label, reserved=SCANNED, why="are set by the scan", kind="scanned")
    hparams = {**LAB_DEFAULTS.get(spec.name, {}), **overrides}
    return OptimizerConfig(label=label.strip(), name=spec.name, hparams=hparams, matrix_only=spec.matrix_only)


def registry_name(label: str) -> str:
    """The registry name of a label (``"focus:gamma=0.4"`` -> ``"focus"``)."""
    return get_spec(label.partition(":")[0].strip()).name
