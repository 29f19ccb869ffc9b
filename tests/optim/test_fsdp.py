"""Every optimizer on FSDP2-sharded (``DTensor``) parameters, on 2 gloo ranks.

Both ranks train on the same batches, so FSDP's averaged gradients equal the one-process
gradients exactly: sharded training must then equal one-process training of the same model bit
for bit, for every optimizer and path. Conda is the one exception by design: each rank updates
its own rows of every matrix, and matrix products over fewer rows may round differently, so its
sharded run must be as close to a float64 run as the one-process float32 run is. The model has
rows split unevenly over the ranks and a 1-row layer whose shard on rank 1 is empty. The optimizer
state goes through torch's own distributed state-dict API (full, unsharded state dicts) and
training resumed from it must equal the uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from gloo_launch import launch
from torch import nn

from focus_optim import make_optimizer
from focus_optim.optim import protocol

pytestmark = pytest.mark.distributed

STEPS, CUT = 6, 3
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "focus": ("focus", {"weight_decay": 0.1}),
    "focus-foreach": ("focus", {"weight_decay": 0.1, "foreach": True}),
    "focus-fused": ("focus", {"weight_decay": 0.1, "fused": True}),
    "focus-maximize": ("focus", {"maximize": True}),
    "signum-fused": ("signum", {"weight_decay": 0.1, "fused": True}),
    "adamw-foreach": ("adamw", {"weight_decay": 0.1, "foreach": True}),
    "adamw-fused": ("adamw", {"weight_decay": 0.1, "fused": True}),
    "lion": ("lion", {"weight_decay": 0.1}),
    "exadam": ("exadam", {}),
    "sophia": ("sophia", {"hessian_interval": 2}),
    "muon": ("muon", {"weight_decay": 0.1}),
    "root": ("root", {}),
    "conda": ("conda", {"update_proj_gap": 2}),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    # rows 16, 5 (3 + 2 per rank) and 1 (rank 1 holds an empty shard)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 1))


def _shard(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(7, 8, generator=g).to(next(model.parameters()))  # its device and dtype
        loss = (model(x) - 1).square().mean()
        loss.backward()
        opt.step(**protocol.step_kwargs(opt, tokens=7))
        if protocol.hessian_due(opt, i):
            (model(x) - 1).abs().mean().backward()  # any second gradient exercises the refresh
            protocol.update_hessian(opt)
        opt.zero_grad(set_to_none=True)


def _whole(model: nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def _full_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))


def _flat_state(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {
        f"{fqn}/{key}": value
        for fqn, state in state_dict["state"].items()
        for key, value in state.items()
        if torch.is_tensor(value)
    }


def _run_cases(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    results: dict[str, Any] = {}
    for case, (name, hparams) in CASES.items():
        one = _model()
        one_opt = make_optimizer(name, one, lr=1e-2, **hparams)
        _train(one, one_opt, range(STEPS))

        sharded = _shard(_model())
        opt = make_optimizer(name, sharded, lr=1e-2, **hparams)
        _train(sharded, opt, range(CUT))
        saved = _full_state(sharded, opt)
        saved = torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, saved)  # a snapshot
        _train(sharded, opt, range(CUT, STEPS))
        # every state tensor laid out like its parameter (whole, or as this rank's shard) is a DTensor
        # sharded like it: plain local state would not survive a state-dict round trip. (Conda's
        # k x k basis "ortho" is whole on every rank by design, and may match a shard's shape.)
        kept = [
            getattr(value, "placements", None) == p.placements
            for group in opt.param_groups
            for p in group["params"]
            for key, value in opt.state[p].items()
            if torch.is_tensor(value)
            and value.ndim > 0
            and key != "ortho"
            and value.shape in (p.shape, p.to_local().shape)
        ]
        placements_kept = bool(kept) and all(kept)

        resumed = _shard(_model())
        resumed_opt = make_optimizer(name, resumed, lr=1e-2, **hparams)
        _train(resumed, resumed_opt, range(CUT))  # the parameters of step CUT, then a fresh optimizer
        resumed_opt = make_optimizer(name, resumed, lr=1e-2, **hparams)
        set_optimizer_state_dict(resumed, resumed_opt, saved, options=StateDictOptions(full_state_dict=True))
        _train(resumed, resumed_opt, range(CUT, STEPS))

        exact = None
        if name == "conda":  # the one-process run in float64: the size of float32's rounding
            exact = _model().double()
            _train(exact, make_optimizer(name, exact, lr=1e-2, **hparams), range(STEPS))
        results[case] = {
            "one": _whole(one),
            "one_float64": None if exact is None else _whole(exact),
            "sharded": _whole(sharded),
            "resumed": _whole(resumed),
            "one_state": _flat_state(_full_state(one, one_opt)),
            "sharded_state": _flat_state(_full_state(sharded, opt)),
            "placements_kept": placements_kept,
        }
    return results


def _assert_same(a: torch.Tensor, b: torch.Tensor, exact: torch.Tensor | None, msg: str) -> None:
    """``a`` equals ``b`` bit for bit, or, given the float64 result ``exact``, is as close to it as
    ``b`` is, give or take float32 rounding: within twice ``b``'s largest error plus one ulp."""
    if exact is None:
        assert torch.equal(a, b), msg
        return
    allowed = (
        2 * (b.double() - exact).abs().max().item() + torch.finfo(torch.float32).eps * b.abs().max().item()
    )
    err = (a.double() - exact).abs().max().item()
    assert err <= allowed, f"{msg}: error {err:.3g} vs float64, one process's {allowed / 2:.3g}"


def _rounding_close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Optimizer state (moments, basis, steps) after float32 rounding differences upstream."""
    return torch.allclose(a, b, rtol=1e-3, atol=1e-6 * max(1.0, b.abs().max().item()))


def test_sharded_training_equals_one_process(tmp_path):
    ranks = launch(_run_cases, 2, tmp_path)
    for case in CASES:
        for rank, results in enumerate(ranks):
            r = results[case]
            where = f"{case} (rank {rank})"
            for a, b in zip(r["one"], _model().parameters()):
                assert not torch.equal(a, b.detach()), f"{where}: a parameter did not move"
            exact = r["one_float64"] or [None] * len(r["one"])
            for a, b, e in zip(r["sharded"], r["one"], exact):
                _assert_same(a, b, e, f"{where}: sharded training differs from one process")
            for a, b in zip(r["resumed"], r["sharded"]):  # resume against uninterrupted: bit for bit
                assert torch.equal(a, b), f"{where}: resumed from the state dict, training differs"
            assert r["sharded_state"].keys() == r["one_state"].keys(), where
            for key, value in r["one_state"].items():
                same = torch.equal if r["one_float64"] is None else _rounding_close
                assert same(r["sharded_state"][key].cpu(), value.cpu()), f"{where}: state {key}"
            assert r["placements_kept"], f"{where}: a state tensor is not sharded like its parameter"


def _onebit_refuses(rank: int, n: int, out_dir: str) -> str:
    try:
        make_optimizer("onebit_adam", _shard(_model()))
    except ValueError as e:
        return str(e)
    return ""


def test_onebit_adam_refuses_sharded_parameters(tmp_path):
    for message in launch(_onebit_refuses, 2, tmp_path):
        assert "DTensor" in message and "all-reduce" in message


def test_per_member_hyperparameters_refuse_sharded_parameters(tmp_path):
    for message in launch(_ensemble_refuses, 2, tmp_path):
        assert "Invalid lr" in message and "DTensor" in message


def _ensemble_refuses(rank: int, n: int, out_dir: str) -> str:
    from torch.distributed.fsdp import fully_shard

    layer = fully_shard(nn.Linear(3, 4))
    try:
        make_optimizer("focus", [layer.weight], lr=torch.full((4,), 0.1))
    except ValueError as e:
        return str(e)
    return ""


def _partial_gradient(rank: int, n: int, out_dir: str) -> dict[str, torch.Tensor]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (n,))
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(1 + r)) for r in range(n)]
    p = nn.Parameter(distribute_tensor(w.clone(), mesh, [Replicate()]))  # may keep the tensor as its own
    # tensor-parallel style: each rank holds a summand of the gradient of a replicated parameter
    p.grad = DTensor.from_local(grads[rank], mesh, [Partial()], run_check=False)
    make_optimizer("focus", [p], lr=0.1, weight_decay=0.1).step()
    one = nn.Parameter(w.clone())
    one.grad = sum(grads)
    make_optimizer("focus", [one], lr=0.1, weight_decay=0.1).step()
    return {"sharded": p.to_local().detach().clone(), "one": one.detach().clone()}


def test_partial_gradient_is_reduced_before_the_update(tmp_path):
    for r in launch(_partial_gradient, 2, tmp_path):
        assert torch.equal(r["sharded"], r["one"])


def _cuda_paths(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    torch.cuda.set_device(rank)
    results = {}
    for case in ("focus-fused", "signum-fused", "adamw-fused", "focus-foreach", "muon", "conda"):
        name, hparams = CASES[case]
        one = _model().cuda()
        one_opt = make_optimizer(name, one, lr=1e-2, **hparams)
        _train(one, one_opt, range(STEPS))
        sharded = _shard(_model().cuda())
        opt = make_optimizer(name, sharded, lr=1e-2, **hparams)
        _train(sharded, opt, range(STEPS))
        results[case] = {"one": [t.cpu() for t in _whole(one)], "sharded": [t.cpu() for t in _whole(sharded)]}
    return results


@pytest.mark.gpu
def test_sharded_training_on_cuda_equals_one_process(tmp_path):
    """FSDP2 on one CUDA device (NCCL, one rank): the fused Triton kernel runs on DTensor parameters'
    local tensors. With one rank nothing is split; uneven and empty row shards are covered by the
    2-rank gloo test above."""
    (results,) = launch(_cuda_paths, 1, tmp_path, backend="nccl")
    for case, r in results.items():
        for a, b, p0 in zip(r["sharded"], r["one"], _model().parameters()):
            assert not torch.equal(b, p0.detach()), f"{case}: a parameter did not move"
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=lambda m, case=case: f"{case}: {m}")
