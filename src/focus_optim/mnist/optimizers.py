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

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..optim.registry import get_spec

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
    name, _, rest = label.strip().partition(":")
    spec = get_spec(name)
    overrides: dict[str, Any] = {}
    for item in _split_top_level(rest):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"Invalid optimizer {label!r}: expected NAME:KEY=VALUE,..., got {item!r}")
        overrides[key] = _literal(value.strip())
    valid = set(spec.hyperparameters())
    bad = sorted(k for k in overrides if k not in valid or k in SCANNED)
    if bad:
        allowed = ", ".join(sorted(valid - set(SCANNED)))
        raise ValueError(
            f"Invalid optimizer {label!r}: unknown or scanned hyperparameter(s) {', '.join(bad)} "
            f"(lr and weight_decay are set by the scan; valid for {spec.name}: {allowed})"
        )
    hparams = {**LAB_DEFAULTS.get(spec.name, {}), **overrides}
    return OptimizerConfig(label=label.strip(), name=spec.name, hparams=hparams, matrix_only=spec.matrix_only)


def registry_name(label: str) -> str:
    """The registry name of a label (``"focus:gamma=0.4"`` -> ``"focus"``)."""
    return get_spec(label.partition(":")[0].strip()).name


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``"betas=(0.9,0.99),gamma=0.2"`` -> 2 items."""
    items, depth, cur = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [s for s in (i.strip() for i in items) if s]
