"""make_optimizer: names, defaults, parameter splits, errors; list-optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from focus_optim import FOCUS, AdamW, Signum, available_optimizers, make_optimizer
from focus_optim.cli import main
from focus_optim.optim.registry import check_values, get_spec, parse_optimizer_spec


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(11, 4)
        self.block = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.lm_head = nn.Linear(4, 11, bias=False)
        self.lm_head.weight = self.wte.weight  # tied


def groups_by_id(opt):
    return {id(p): g for g in opt.param_groups for p in g["params"]}


def test_core_names_and_aliases():
    names = available_optimizers()
    assert {"focus", "signum", "adamw"} <= set(names)
    assert isinstance(make_optimizer("FOCUS", [nn.Parameter(torch.zeros(2))]), FOCUS)
    assert isinstance(make_optimizer("adam", [nn.Parameter(torch.zeros(2))]), AdamW)
    assert isinstance(make_optimizer("signum", [nn.Parameter(torch.zeros(2))]), Signum)


def test_unknown_name_and_hyperparameter_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'fokus'; available: .*focus"):
        make_optimizer("fokus", [nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"Unknown hyperparameter\(s\) for focus: gama; valid: .*gamma"):
        make_optimizer("focus", [nn.Parameter(torch.zeros(2))], gama=0.2)


@pytest.mark.parametrize("name", available_optimizers())
def test_non_numeric_hyperparameters_are_value_errors_naming_them(name):
    """A word where a number belongs (``--optimizers focus:lr=abc`` on a command line) and a complex
    tensor are ValueErrors that name the argument and its range, like any other invalid value."""
    params = [nn.Parameter(torch.zeros(3, 3))]
    with pytest.raises(ValueError, match=r"^Invalid lr: 'abc' \(allowed: a number or a real tensor, finite"):
        make_optimizer(name, params, lr="abc")
    with pytest.raises(ValueError, match=r"^Invalid lr: a tensor of dtype torch.complex64 \(allowed: real"):
        make_optimizer(name, params, lr=torch.tensor(1 + 2j))


def test_nanogpt_decay_split_and_tied_params_once():
    model = TinyLM()
    opt = make_optimizer("focus", model, lr=1e-3, weight_decay=0.2)
    g = groups_by_id(opt)
    assert sum(len(gr["params"]) for gr in opt.param_groups) == len(list(model.parameters()))
    assert g[id(model.block.weight)]["weight_decay"] == 0.2
    assert g[id(model.wte.weight)]["weight_decay"] == 0.2  # nanoGPT decays embeddings
    for p in (model.block.bias, model.ln.weight, model.ln.bias):
        assert g[id(p)]["weight_decay"] == 0.0
    opt = make_optimizer("focus", model, lr=1e-3, weight_decay=0.2, decay_embeddings=False)
    assert groups_by_id(opt)[id(model.wte.weight)]["weight_decay"] == 0.0  # Sophia/FOCUS GPT-2 code


def test_ensemble_dims_judge_shapes_per_member():
    stacked_w = nn.Parameter(torch.zeros(5, 3, 4))  # 5 members of a 3x4 matrix
    stacked_b = nn.Parameter(torch.zeros(5, 3))  # 5 members of a bias vector
    opt = make_optimizer("adamw", [stacked_w, stacked_b], ensemble_dims=1, weight_decay=0.01,
                         lr=torch.full((5,), 1e-3))  # fmt: skip
    g = groups_by_id(opt)
    assert g[id(stacked_w)]["weight_decay"] == 0.01 and g[id(stacked_b)]["weight_decay"] == 0.0


def test_param_group_dicts_pass_through():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    opt = make_optimizer("focus", [{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]


def test_list_optimizers_cli(capsys):
    assert main(["list-optimizers"]) == 0
    out = capsys.readouterr().out
    assert "focus" in out and "source:" in out and "gamma=0.1" in out


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("focus:betas=(0.9,2.0)", r"Invalid optimizer 'focus:betas=\(0.9,2.0\)': Invalid betas\[1\]: 2.0"),
        ("muon:momentum=1.5", r"Invalid momentum: 1.5 \(allowed: 0 <= beta < 1\)"),
        ("conda:update_proj_gap=0", r"Invalid update_proj_gap: 0 \(allowed: an integer >= 1\)"),
        ("focus:gamma=0.4,gamma=0.5", r"gamma is given twice"),
    ],
)
def test_command_line_specs_check_values_before_any_work(text, match):
    with pytest.raises(ValueError, match=match):
        parse_optimizer_spec(text)
    name, _, rest = text.partition(":")
    key = rest.partition("=")[0]
    assert key in parse_optimizer_spec(f"{name}:{key}={_VALID[key]}")[1]


_VALID = {"betas": "(0.9,0.99)", "momentum": "0.9", "update_proj_gap": "10", "gamma": "0.4"}


WRONG_VALUES = [-1, "a", (1,), (0.9, 0.9, 0.9), [0.9, "x"], None, math.nan, {}, 1.5, True, torch.ones(2)]


@pytest.mark.parametrize("name", available_optimizers())
def test_every_hyperparameter_refuses_wrong_values_with_a_value_error_naming_it(name):
    """Whatever is passed, a constructor either accepts it or raises ValueError naming the argument:
    never a TypeError from ``tuple(1)`` or a RuntimeError from ``if tensor:``."""
    for key in get_spec(name).hyperparameters():
        refused = 0
        for value in WRONG_VALUES:
            try:
                check_values(name, {key: value})
            except ValueError as exc:
                assert key in str(exc), (key, value, str(exc))
                refused += 1
        assert refused > 0, f"{name}.{key} accepted every value of {WRONG_VALUES}"
