"""Optimizer state sharded over 2 gloo ranks with torch's ZeroRedundancyOptimizer (``zero_redundancy``).

Both ranks see the same gradients (as under DDP), so the sharded optimizer must train exactly as
the unsharded one, bit for bit. Its consolidated state dict must equal the unsharded optimizer's,
and a run resumed from it must equal the uninterrupted one.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from gloo_launch import launch
from torch import nn

from focus_optim import make_optimizer, zero_redundancy
from focus_optim.optim import protocol

# torch's ZeroRedundancyOptimizer scripts its functional optimizers with the deprecated torch.jit
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

STEPS, CUT = 6, 3
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "focus": ("focus", {"weight_decay": 0.1}),
    "focus-foreach": ("focus", {"weight_decay": 0.1, "foreach": True}),
    "focus-fused": ("focus", {"weight_decay": 0.1, "fused": True}),
    "adamw": ("adamw", {"weight_decay": 0.1}),
    "lion": ("lion", {}),
    "sophia": ("sophia", {"hessian_interval": 2}),  # the protocol hooks reach the wrapped optimizer
    "muon": ("muon", {"weight_decay": 0.1}),  # each rank orthogonalises its own matrices only
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 1))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    for i in steps:
        x = torch.randn(7, 8, generator=torch.Generator().manual_seed(i))
        (model(x) - 1).square().mean().backward()
        opt.step(**protocol.step_kwargs(opt, tokens=7))
        if protocol.hessian_due(opt, i):
            (model(x) - 1).abs().mean().backward()
            protocol.update_hessian(opt)
        opt.zero_grad(set_to_none=True)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _state_tensors(state_dict: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every state tensor by (parameter index, key); a parameter without state may map to None."""
    return {
        f"{i}/{k}": v
        for i, s in state_dict["state"].items()
        for k, v in (s or {}).items()
        if torch.is_tensor(v)
    }


def _run(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for case, (name, hparams) in CASES.items():
        model = _model()
        opt = zero_redundancy(make_optimizer(name, model, lr=1e-2, **hparams))
        _train(model, opt, range(CUT))
        opt.consolidate_state_dict(to=0)
        saved = copy.deepcopy(opt.state_dict()) if rank == 0 else None  # a snapshot: it holds live tensors
        holds = len(opt.optim.state)  # parameters whose state lives on this rank
        _train(model, opt, range(CUT, STEPS))

        resumed = _model()
        _train(resumed, make_optimizer(name, resumed, lr=1e-2, **hparams), range(CUT))
        objects = [copy.deepcopy(saved)]  # load_state_dict clears the other ranks' entries in place
        torch.distributed.broadcast_object_list(objects, src=0)
        resumed_opt = zero_redundancy(make_optimizer(name, resumed, lr=1e-2, **hparams))
        resumed_opt.load_state_dict(objects[0])
        _train(resumed, resumed_opt, range(CUT, STEPS))
        # the unsharded reference, in this process: the same threads, so the same matmul rounding
        one = _model()
        one_opt = make_optimizer(name, one, lr=1e-2, **hparams)
        _train(one, one_opt, range(CUT))
        one_state = _state_tensors(copy.deepcopy(one_opt.state_dict()))
        _train(one, one_opt, range(CUT, STEPS))
        results[case] = {
            "params": _params(model),
            "resumed": _params(resumed),
            "one": _params(one),
            "state_at_cut": _state_tensors(saved) if rank == 0 else {},
            "one_state_at_cut": one_state,
            "holds": holds,
        }
    return results


@pytest.mark.distributed
def test_sharded_state_trains_as_unsharded(tmp_path):
    ranks = launch(_run, 2, tmp_path)
    n_params = len(list(_model().parameters()))
    for case in CASES:
        for rank, results in enumerate(ranks):
            r = results[case]
            for a, b, before in zip(r["params"], r["one"], _model().parameters()):
                assert not torch.equal(b, before.detach()), f"{case}: a parameter did not move"
                assert torch.equal(a, b), f"{case} (rank {rank}): differs from one process"
            for a, b in zip(r["resumed"], r["one"]):
                assert torch.equal(a, b), f"{case} (rank {rank}): resumed run differs"
        state_at_cut = ranks[0][case]["one_state_at_cut"]
        got = ranks[0][case]["state_at_cut"]
        assert got.keys() == state_at_cut.keys()
        for key, value in state_at_cut.items():
            assert torch.equal(got[key], value), f"{case}: consolidated state {key} differs"
        holds = [results[case]["holds"] for results in ranks]
        assert sum(holds) == n_params and all(0 < h < n_params for h in holds), f"{case}: {holds}"


def test_refusals(tmp_path):
    model = _model()
    with pytest.raises(RuntimeError, match="init_process_group"):
        zero_redundancy(make_optimizer("focus", model))
    store = (tmp_path / "rendezvous").as_uri()
    torch.distributed.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="cannot be sharded with ZeRO"):
            zero_redundancy(make_optimizer("onebit_adam", model))
        opt = make_optimizer("focus", model)
        model(torch.randn(3, 8)).sum().backward()
        opt.step()
        with pytest.raises(ValueError, match="before its first step"):
            zero_redundancy(opt)
    finally:
        torch.distributed.destroy_process_group()
