"""Bad input at the edges the per-argument checks of ``test_optim_properties`` do not reach: tensor
hyperparameters of the wrong shape, integers too large for torch, ``make_optimizer``'s split
arguments, and a loaded ``state_dict`` whose hyperparameters or state tensors are invalid. Each is a
ValueError naming the argument, raised before anything changes."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from focus_optim import make_optimizer
from focus_optim.optim import FOCUS, Muon, OneBitAdam
from focus_optim.optim.registry import available_optimizers, get_spec


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3, 2)), nn.Parameter(torch.zeros(3))]


def _scalar_keys() -> list:
    """(optimizer, key) for every float or float-tuple hyperparameter that takes no per-member
    (1-D) tensor: all but lr and weight_decay (and Muon's adamw_lr / adamw_wd, which become them)."""
    member = {"lr", "weight_decay", "adamw_lr", "adamw_wd"}
    member |= {"threshold_quantile"}  # ROOT's: a Python number only, any tensor refused by name
    out = []
    for name in available_optimizers():
        for key, default in get_spec(name).hyperparameters().items():
            floats = isinstance(default, float) or (
                isinstance(default, tuple) and all(isinstance(v, float) for v in default)
            )
            if floats and key not in member:
                out.append(pytest.param(name, key, id=f"{name}-{key}"))
    return out


@pytest.mark.parametrize("name,key", _scalar_keys())
@pytest.mark.parametrize("shape", [(3,), (2, 2)])
def test_a_tensor_hyperparameter_that_is_not_per_member_must_be_0d(name: str, key: str, shape) -> None:
    """A length-3 tensor (the parameters' dim 0) is refused as well: only lr and weight_decay are
    per member; anything else used to fail inside ``step`` with a shape error."""
    default = get_spec(name).hyperparameters()[key]
    if isinstance(default, tuple):
        bad, good = ((torch.full(shape, default[0]), *default[1:]), (torch.tensor(default[0]), *default[1:]))
        needle = f"{key}[0]"
    else:
        bad, good, needle = torch.full(shape, default), torch.tensor(default), key
    with pytest.raises(ValueError, match="^" + re.escape(f"Invalid {needle}: a tensor of shape {shape}")):
        make_optimizer(name, _params(), **{key: bad})
    make_optimizer(name, _params(), **{key: good})  # 0-d: as the float


def test_root_threshold_quantile_takes_no_tensor() -> None:
    with pytest.raises(
        ValueError, match=r"^Invalid threshold_quantile: tensor\(0.9000\) \(allowed: a number"
    ):
        make_optimizer("root", _params(), threshold_quantile=torch.tensor(0.9))


@pytest.mark.parametrize("name", available_optimizers())
def test_an_int_beyond_int64_is_refused_at_construction(name: str) -> None:
    with pytest.raises(ValueError, match=r"^Invalid lr: 10{30} \(allowed: .*an int within int64"):
        make_optimizer(name, _params(), lr=10**30)


@pytest.mark.parametrize("name,key", [("muon", "ns_steps"), ("root", "root_steps")])
def test_inner_iteration_counts_are_bounded(name: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid {key}: {10**30} \(allowed: an integer in \[0, 1000\]\)"):
        make_optimizer(name, _params(), **{key: 10**30})
    make_optimizer(name, _params(), **{key: 1000})


def test_muon_names_adamw_lr_when_its_aux_groups_take_it() -> None:
    groups = [{"params": [nn.Parameter(torch.randn(3))], "matrix": False}]
    with pytest.raises(ValueError, match=r"^Invalid adamw_lr: a 1-D tensor of length 5"):
        Muon(copy.copy(groups), adamw_lr=torch.ones(5))
    with pytest.raises(ValueError, match=r"^Invalid adamw_lr: a tensor of shape \(3, 1\)"):
        Muon(copy.copy(groups), adamw_lr=torch.ones(3, 1))
    opt = Muon(groups, adamw_lr=torch.full((3,), 0.1))  # per member, one value per slice
    assert torch.equal(opt.param_groups[0]["lr"], torch.full((3,), 0.1))
    # a group's own adamw_lr / adamw_wd is named as the group's, not as the lr it becomes
    for key, value in (("adamw_lr", -1.0), ("adamw_wd", float("nan"))):
        own = [{**groups[0], key: value}]
        with pytest.raises(
            ValueError, match=rf"^Invalid param_groups\[0\]\.{key}: {value} \(allowed: finite"
        ):
            Muon(own)


def test_onebit_adam_mask_must_be_a_tensor() -> None:
    with pytest.raises(ValueError, match=r"^Invalid exp_avg_mask: list \(allowed: a tensor"):
        OneBitAdam([{"params": [nn.Parameter(torch.zeros(2))], "exp_avg_mask": [1, 2]}])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ensemble_dims=-1), r"^Invalid ensemble_dims: -1 \(allowed: an integer >= 0\)"),
        (dict(ensemble_dims=1.5), r"^Invalid ensemble_dims: 1.5"),
        (dict(ensemble_dims=True), r"^Invalid ensemble_dims: True"),
        (dict(ensemble_dims=3), r"^Invalid ensemble_dims: 3, but parameter 0.weight has only 2 dim"),
        (dict(decay_embeddings="no"), r"^Invalid decay_embeddings: 'no' \(allowed: True or False\)"),
        (dict(decay_norms_and_biases=2), r"^Invalid decay_norms_and_biases: 2 \(allowed: True or False\)"),
        (dict(exclude_from_matrix=5), r"^Invalid exclude_from_matrix: 5 \(allowed: None, a predicate"),
        (dict(exclude_from_matrix="0.weight"), r"^Invalid exclude_from_matrix: '0.weight'"),
    ],
)
def test_make_optimizer_checks_its_split_arguments(kwargs: dict, message: str) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    name = "muon" if "exclude_from_matrix" in kwargs else "focus"
    with pytest.raises(ValueError, match=message):
        make_optimizer(name, model, **kwargs)


def test_make_optimizer_names_a_non_string_optimizer() -> None:
    with pytest.raises(ValueError, match=r"^Invalid optimizer name: None \(allowed: adamw, "):
        make_optimizer(None, nn.Linear(2, 2))  # type: ignore[arg-type]


def _trained() -> tuple[list[nn.Parameter], FOCUS]:
    params = _params()
    opt = FOCUS(params, lr=0.1, weight_decay=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    return params, opt


def _moved_on(params: list[nn.Parameter], opt: FOCUS) -> dict:
    """A state dict of ``opt`` as it is, after which it takes another step and (valid) new
    hyperparameters: loading any part of that state dict would now show."""
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0].update(gamma=0.3, weight_decay=0.05)
    for p in params:
        p.grad = torch.full_like(p, -2.0)
    opt.step()
    return saved


def _assert_same_state(got: dict, want: dict) -> None:
    """Every group hyperparameter and every state tensor equal (tensors bit for bit)."""
    assert [{k: v for k, v in g.items() if k != "lr"} for g in got["param_groups"]] == [
        {k: v for k, v in g.items() if k != "lr"} for g in want["param_groups"]
    ]
    assert [g["lr"] for g in got["param_groups"]] == [g["lr"] for g in want["param_groups"]]
    assert got["state"].keys() == want["state"].keys()
    for i, state in want["state"].items():
        assert got["state"][i].keys() == state.keys()
        for key, value in state.items():
            assert torch.equal(got["state"][i][key], value), (i, key)


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda g: g.update(lr=-1.0), r"^Invalid state_dict param_groups\[0\]\.lr: -1.0 \(allowed: finite"),
        (lambda g: g.update(betas=(2.0, 0.9)), r"^Invalid state_dict param_groups\[0\]\.betas\[0\]: 2.0"),
        (lambda g: g.update(decay_mode="bogus"), r"^Invalid state_dict param_groups\[0\]\.decay_mode"),
        (lambda g: g.update(lr=torch.full((4,), 0.1)), r"^Invalid state_dict param_groups\[0\]\.lr: a 1-D "),
    ],
)
def test_loaded_hyperparameters_are_checked_and_nothing_is_loaded(tamper, message: str) -> None:
    params, opt = _trained()
    saved = _moved_on(params, opt)
    before = copy.deepcopy(opt.state_dict())
    assert not torch.equal(before["state"][0]["exp_avg"], saved["state"][0]["exp_avg"])
    tamper(saved["param_groups"][0])
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(saved)
    _assert_same_state(opt.state_dict(), before)


def test_loaded_state_of_the_wrong_shape_is_refused_and_nothing_is_loaded() -> None:
    params, opt = _trained()
    saved = _moved_on(params, opt)
    before = copy.deepcopy(opt.state_dict())
    saved["state"][1]["exp_avg"] = torch.zeros(4)
    message = "parameter 1 (group 0) has exp_avg of shape (4,), but a parameter of shape (3,) keeps (3,)"
    with pytest.raises(ValueError, match=re.escape(message)):
        opt.load_state_dict(saved)
    _assert_same_state(opt.state_dict(), before)
