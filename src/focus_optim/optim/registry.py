"""Optimizer registry: one name -> one class, its defaults with their source, and a parameter split.

``make_optimizer(name, model_or_params, **hparams)`` is how every lab builds an optimizer:

* given an ``nn.Module``, it builds the usual groups: weights with >= 2 dims are decayed; biases,
  norm gains (and embeddings if ``decay_embeddings=False``) are not;
* for matrix-only optimizers (Muon, ROOT, Conda) the hidden weight matrices form groups with
  ``matrix=True`` and everything else (embeddings, the output head, 1-D params) groups with
  ``matrix=False``, which the class updates with its auxiliary AdamW;
* ``ensemble_dims`` leading dims of every parameter index independent ensemble members (stacked
  models or trajectories) and are ignored when judging whether a parameter is a matrix;
* given a list of param-group dicts, the groups are used as they are.

Unknown hyperparameters raise a ValueError listing the valid ones.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import _validate as V

ExcludeFn = Callable[[str, torch.Tensor], bool]


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer.

    Attributes:
        name: registry name (lower case).
        target: ``"module:Class"``, imported lazily.
        defaults: hyperparameters passed unless overridden (the class defaults already follow the
            official code; list here only what differs or deserves a source).
        source: where the defaults come from.
        matrix_only: hidden matrices get the main update; other params the class's aux AdamW.
        description: one line for ``focus-optim list-optimizers``.
        aliases: other accepted names.
    """

    name: str
    target: str
    source: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    matrix_only: bool = False
    aliases: tuple[str, ...] = ()

    def load(self) -> type[torch.optim.Optimizer]:
        module, _, cls = self.target.partition(":")
        return getattr(importlib.import_module(module), cls)

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor keyword arguments with their effective defaults."""
        sig = inspect.signature(self.load().__init__)
        out = {
            n: p.default
            for n, p in sig.parameters.items()
            if n not in ("self", "params") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        out.update(self.defaults)
        return out


REGISTRY: dict[str, OptimizerSpec] = {}
_ALIASES: dict[str, str] = {}


def register(spec: OptimizerSpec) -> OptimizerSpec:
    REGISTRY[spec.name] = spec
    for alias in spec.aliases:
        _ALIASES[alias] = spec.name
    return spec


def get_spec(name: str) -> OptimizerSpec:
    if not isinstance(name, str):
        raise ValueError(f"Invalid optimizer name: {name!r} (allowed: {', '.join(sorted(REGISTRY))})")
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in REGISTRY:
        raise ValueError(f"Unknown optimizer {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[key]


def check_hyperparameters(name: str, hparams: Mapping[str, Any]) -> OptimizerSpec:
    """The spec of optimizer ``name``, after checking that it takes every key of ``hparams``
    (an unknown name or key is a ValueError listing the valid ones; values are checked by the
    optimizer itself)."""
    spec = get_spec(name)
    valid = set(spec.hyperparameters())
    unknown = sorted(set(hparams) - valid)
    if unknown:
        raise ValueError(
            f"Unknown hyperparameter(s) for {spec.name}: {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    return spec


def parse_optimizer_spec(
    text: str,
    *,
    reserved: Sequence[str] = ("lr",),
    why: str = "is set elsewhere",
    kind: str = "reserved",
    validate: bool = True,
) -> tuple[OptimizerSpec, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` -> (spec, hyperparameters), as the labs' command lines take them.

    ``NAME`` is a registry name or alias; each ``VALUE`` is a Python literal (``0.4``,
    ``(0.9, 0.99)``) or a bare word (``decay_mode=reference``). Unknown names or keys, and keys in
    ``reserved`` (``kind`` names them, ``why`` says what sets them), raise a ValueError that lists
    the valid keys. ``validate``: also check the values (:func:`check_values`).
    """
    name, _, rest = text.strip().partition(":")
    spec = get_spec(name)
    hparams: dict[str, Any] = {}
    for item in _split_top_level(rest):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"Invalid optimizer {text!r}: expected NAME:KEY=VALUE,..., got {item!r}")
        if key in hparams:
            raise ValueError(f"Invalid optimizer {text!r}: {key} is given twice")
        hparams[key] = _literal(value.strip())
    valid = set(spec.hyperparameters())
    bad = sorted(k for k in hparams if k not in valid or k in reserved)
    if bad:
        allowed = ", ".join(sorted(valid - set(reserved)))
        raise ValueError(
            f"Invalid optimizer {text!r}: unknown or {kind} hyperparameter(s) {', '.join(bad)} "
            f"({' and '.join(reserved)} {why}; valid for {spec.name}: {allowed})"
        )
    if validate:
        try:
            check_values(spec.name, hparams)
        except ValueError as exc:
            raise ValueError(f"Invalid optimizer {text!r}: {exc}") from None
    return spec, hparams


def check_values(name: str, hparams: Mapping[str, Any]) -> None:
    """Check the *values* of ``hparams`` now, by building optimizer ``name`` on a small matrix: a
    bad value (``betas=(0.9, 2.0)``) is a ValueError naming the argument before any work starts,
    rather than when a sweep first builds the optimizer."""
    probe = torch.zeros(2, 2, requires_grad=True)
    make_optimizer(
        name, [{"params": [probe], "matrix": True}] if get_spec(name).matrix_only else [probe], **hparams
    )


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: ``"betas=(0.9,0.99),gamma=0.2"`` -> 2 items."""
    items: list[str] = []
    depth = 0
    cur: list[str] = []
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


def available_optimizers() -> list[str]:
    return sorted(REGISTRY)


def make_optimizer(
    name: str,
    model_or_params: nn.Module | Iterable[Any],
    *,
    ensemble_dims: int = 0,
    decay_embeddings: bool = True,
    decay_norms_and_biases: bool = False,
    exclude_from_matrix: ExcludeFn | Iterable[str] | None = None,
    **hparams: Any,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` for a model (with the usual parameter splits) or for params/groups.

    Args:
        name: a registry name or alias (see ``available_optimizers()``).
        model_or_params: an ``nn.Module``, an iterable of tensors, or of param-group dicts.
        ensemble_dims: number of leading dims that index independent ensemble members.
        decay_embeddings: decay ``nn.Embedding`` weights (nanoGPT: yes; Sophia/FOCUS GPT-2 code: no).
        decay_norms_and_biases: decay 1-D parameters too.
        exclude_from_matrix: names (or a predicate on (name, param)) kept out of the matrix
            update of matrix-only optimizers, in addition to embeddings and output heads.
        **hparams: constructor arguments; ``weight_decay`` goes to the decayed groups only (for
            Muon, whose AdamW groups take ``adamw_wd``, default 0: to the decayed matrices only).
            Matrix-only optimizers follow this split too, though ROOT's and Conda's official
            code decay every parameter with the one value (``decay_norms_and_biases=True``).
    """
    spec = check_hyperparameters(name, hparams)
    V.check_int("ensemble_dims", ensemble_dims, 0)
    V.check_bool("decay_embeddings", decay_embeddings)
    V.check_bool("decay_norms_and_biases", decay_norms_and_biases)
    cls = spec.load()
    kwargs = {**spec.defaults, **hparams}
    groups = param_groups(
        model_or_params,
        weight_decay=kwargs.get("weight_decay", spec.hyperparameters().get("weight_decay")),
        ensemble_dims=ensemble_dims,
        decay_embeddings=decay_embeddings,
        decay_norms_and_biases=decay_norms_and_biases,
        matrix_only=spec.matrix_only,
        exclude_from_matrix=exclude_from_matrix,
    )
    if spec.matrix_only and not any(g.get("matrix") for g in groups):
        raise ValueError(
            f"{spec.name} updates hidden weight matrices only, and none of the given parameters is a matrix "
            f"(after {ensemble_dims} ensemble dim(s)); use an element-wise optimizer such as focus or adamw"
        )
    if spec.matrix_only:
        kwargs["ensemble_dims"] = ensemble_dims
    return cls(groups, **kwargs)


def param_groups(
    model_or_params: nn.Module | Iterable[Any],
    *,
    weight_decay: Any = None,
    ensemble_dims: int = 0,
    decay_embeddings: bool = True,
    decay_norms_and_biases: bool = False,
    matrix_only: bool = False,
    exclude_from_matrix: ExcludeFn | Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Split parameters into decay / no-decay (and matrix / aux) groups; see :func:`make_optimizer`."""
    if isinstance(model_or_params, nn.Module):
        named = _named_with_roles(model_or_params)
    else:
        items = list(model_or_params)
        if items and all(isinstance(g, dict) for g in items):
            return [dict(g) for g in items]
        named = [(f"param{i}", p, "weight") for i, p in enumerate(items)]
    excluded = _exclusion(exclude_from_matrix)

    buckets: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    for n, p, role in named:
        if not p.requires_grad:
            continue
        if p.ndim < ensemble_dims:
            raise ValueError(
                f"Invalid ensemble_dims: {ensemble_dims}, but parameter {n} has only {p.ndim} dim(s) "
                "(allowed: at most every parameter's number of dims)"
            )
        element_ndim = p.ndim - ensemble_dims
        if role == "embedding":
            decay = decay_embeddings
        else:
            decay = element_ndim >= 2 or decay_norms_and_biases
        is_matrix = matrix_only and element_ndim >= 2 and role == "weight" and not excluded(n, p)
        buckets.setdefault((decay, is_matrix), []).append(p)

    groups = []
    for (decay, is_matrix), params in buckets.items():
        group: dict[str, Any] = {"params": params}
        if weight_decay is not None and not decay:
            group["weight_decay"] = 0.0
        if matrix_only:
            group["matrix"] = is_matrix
        groups.append(group)
    return groups


_HEAD_NAMES = ("lm_head", "head", "classifier", "output", "wte", "wpe", "embed")


def _is_head_name(module_name: str) -> bool:
    """A module named as an input or output layer: its first or last name component is one of
    :data:`_HEAD_NAMES` (``lm_head``, ``head.fc``, ``output``), not a middle one: BERT's hidden
    ``encoder.layer.0.output.dense`` is a hidden matrix."""
    parts = module_name.split(".")
    return parts[0] in _HEAD_NAMES or parts[-1] in _HEAD_NAMES


def _named_with_roles(model: nn.Module) -> list[tuple[str, torch.Tensor, str]]:
    """(name, param, role) with role 'embedding', 'head' or 'weight'; shared params once."""
    roles: dict[int, str] = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            roles[id(mod.weight)] = "embedding"
        elif _is_head_name(mod_name) and isinstance(getattr(mod, "weight", None), torch.Tensor):
            roles.setdefault(id(mod.weight), "head")
    return [(n, p, roles.get(id(p), "weight")) for n, p in model.named_parameters()]


def _exclusion(spec: ExcludeFn | Iterable[str] | None) -> ExcludeFn:
    if spec is None:
        return lambda n, p: False
    if callable(spec):
        return spec
    names = set(spec) if not isinstance(spec, str | bytes) and isinstance(spec, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"Invalid exclude_from_matrix: {spec!r} (allowed: None, a predicate on (name, param), or an "
            "iterable of parameter names such as ['0.weight'])"
        )
    return lambda n, p: n in names


def describe() -> str:
    """A table of every registered optimizer with its defaults and source."""
    lines = []
    for name in available_optimizers():
        spec = REGISTRY[name]
        try:
            hp = spec.hyperparameters()
            shown = ", ".join(
                f"{k}={v!r}" for k, v in hp.items() if k not in ("foreach", "fused", "maximize")
            )
        except Exception as exc:  # pragma: no cover - a broken optional import
            shown = f"(unavailable: {exc})"
        alias = f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""
        kind = " [matrix-only, aux AdamW for the rest]" if spec.matrix_only else ""
        lines.append(
            f"{name}{alias}{kind}\n  {spec.description}\n  defaults: {shown}\n  source: {spec.source}"
        )
    return "\n".join(lines)


# --- entries -----------------------------------------------------------------------------------
register(
    OptimizerSpec(
        name="focus",
        target="focus_optim.optim.focus:FOCUS",
        source="liuyz0/FOCUS@bdda7f8 focus.py class defaults; update = paper Algorithm 1",
        description="Sign of momentum plus attraction toward the parameter EMA (Liu, Liu & Gore 2025).",
    )
)
register(
    OptimizerSpec(
        name="signum",
        target="focus_optim.optim.signum:Signum",
        source="apache/mxnet SignumKernel defaults (lr 0.01, momentum 0.9); decoupled decay (wd_lh)",
        description="Sign of the EMA momentum (Bernstein et al. 2018).",
    )
)
register(
    OptimizerSpec(
        name="adamw",
        target="focus_optim.optim.adamw:AdamW",
        source="torch.optim.AdamW defaults",
        description="AdamW (Loshchilov & Hutter 2019), torch.optim semantics; variants as options.",
        aliases=("adam",),
    )
)
register(
    OptimizerSpec(
        name="onebit_adam",
        target="focus_optim.optim.onebit_adam:OneBitAdam",
        source="microsoft/DeepSpeed deepspeed/runtime/fp16/onebit/adam.py OnebitAdam defaults",
        description="1-bit Adam (Tang et al. 2021): Adam warm-up, then frozen v, 1-bit compressed momentum.",
        defaults={"lr": 1e-3, "freeze_step": 100000, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
        aliases=("1bit_adam",),
    )
)
register(
    OptimizerSpec(
        name="lion",
        target="focus_optim.optim.lion:Lion",
        source="google/automl lion/lion_pytorch.py class defaults (lr 1e-4, betas (0.9, 0.99), wd 0)",
        description="Sign of a momentum/gradient interpolation; momentum updated after (Chen et al. 2023).",
        defaults={"weight_decay": 0.0},
    )
)
register(
    OptimizerSpec(
        name="muon",
        target="focus_optim.optim.muon:Muon",
        source="KellerJordan/Muon@857d1ad SingleDeviceMuonWithAuxAdam defaults (lr 0.02, momentum 0.95; "
        "aux Adam lr 3e-4, betas (0.9, 0.95), eps 1e-10)",
        description="Momentum orthogonalised by bf16 Newton-Schulz on hidden matrices (Jordan et al. 2024).",
        defaults={"weight_decay": 0.0},
        matrix_only=True,
    )
)
register(
    OptimizerSpec(
        name="sophia",
        target="focus_optim.optim.sophia:SophiaG",
        source="Liuhong99/Sophia@a7e1572 sophia.py SophiaG defaults (lr 1e-4, betas (0.965, 0.99), rho 0.04, "
        "wd 0.1, bs 5120); k=10 from train_sophiag.py",
        description="Sophia-G: clipped m/(rho*bs*h) with a sampled-label (GNB) Hessian EMA every k steps.",
        defaults={"weight_decay": 0.1},
        aliases=("sophiag",),
    )
)
register(
    OptimizerSpec(
        name="conda",
        target="focus_optim.optim.conda:Conda",
        source="jie040109/Conda@449af71 Conda class defaults + torchrun_main.py CLI (update_proj_gap 50, "
        "scale 1); shipped scripts use T=2000, scale 0.25, betas (0.9, 0.99)",
        description="Adam in a rotated frame from an SVD of the momentum (Wang et al. 2025).",
        defaults={"weight_decay": 0.0},
        matrix_only=True,
    )
)
register(
    OptimizerSpec(
        name="root",
        target="focus_optim.optim.root:ROOT",
        source="huawei-noah/noah-research@aa0f80c ROOT/examples/example_train.py class defaults "
        "(lr 1e-3, wd 0.1, momentum 0.95, adamw betas (0.9, 0.95), eps 1e-8)",
        description="Quantile-clipped momentum orthogonalised by shape-tuned Newton-Schulz (He et al. 2025).",
        defaults={"weight_decay": 0.1},
        matrix_only=True,
    )
)
register(
    OptimizerSpec(
        name="exadam",
        target="focus_optim.optim.exadam:EXAdam",
        source="AhmedMostafa16/EXAdam exadam.py defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0); "
        "paper v2 update (growing_step=True: v1)",
        description="Adam with cross-moment debiasing and a gradient-acceleration term (Adly 2024).",
        defaults={"weight_decay": 0.0},
    )
)
