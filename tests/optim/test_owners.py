"""Muon's and ROOT's whole-matrix work, and Conda's SVDs, shared over ranks (``distributed``), on
2 gloo ranks.

Sharing must not change a number: every rank ends with the parameters one process computes, bit
for bit. It must also share: each matrix is orthogonalised (or its SVD taken) by exactly one rank
(counted by wrapping ``newton_schulz`` and ``conda_basis``), where ``distributed=False`` has every
rank compute every matrix. FSDP2 row shards must travel to their owner only: no rank all-gathers a
whole matrix for Muon's and ROOT's work or Conda's SVDs (counted by wrapping
``DTensor.full_tensor``), unless the earlier all-gather path is asked for. Conda's tall matrices
are updated on their row shards, with no all-gather either (equal to one process up to rounding);
its wide ones all-gather the gradient, the momentum and the normalised rows they rotate back.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from gloo_launch import launch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from focus_optim import make_optimizer
from focus_optim.optim import _owners
from focus_optim.optim._owners import balanced_owners, buckets

STEPS = 4


@settings(deadline=None, database=None)  # a stalled shared box must not fail them
@given(
    costs=st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=0, max_size=40),
    world=st.integers(min_value=1, max_value=8),
)
def test_balanced_owners_is_list_scheduling(costs, world):
    owners = balanced_owners(costs, world)
    assert len(owners) == len(costs) and all(0 <= r < world for r in owners)
    assert owners == balanced_owners(list(costs), world)  # a pure function of the costs
    loads = [sum(c for c, r in zip(costs, owners) if r == rank) for rank in range(world)]
    if costs:  # greedy largest-first: no rank exceeds the mean load by more than one item
        assert max(loads) <= sum(costs) / world + max(costs) + 1e-6 * sum(costs)


def test_equal_costs_go_round_robin():
    assert balanced_owners([1.0] * 7, 3) == [0, 1, 2, 0, 1, 2, 0]


@settings(deadline=None, database=None)  # a stalled shared box must not fail them
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=64), min_size=0, max_size=30),
    limit=st.integers(min_value=0, max_value=1024),
)
def test_buckets_cover_every_index_once_in_order_within_the_limit(sizes, limit):
    tensors = [torch.empty(n) for n in sizes]
    runs = buckets(tensors, limit)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    for run in runs:
        nbytes = 4 * sum(sizes[i] for i in run)
        assert run and (nbytes <= limit or len(run) == 1)
    for a, b in itertools.pairwise(runs):  # greedy: the next tensor did not fit
        assert 4 * (sum(sizes[i] for i in a) + sizes[b[0]]) > limit


def test_buckets_are_consecutive_runs_within_the_limit():
    tensors = [torch.empty(n) for n in (3, 1, 4, 1, 5, 9, 2, 6)]  # 4 bytes per element
    assert buckets(tensors, 20) == [[0, 1], [2, 3], [4], [5], [6], [7]]
    assert buckets(tensors, 0) == [[i] for i in range(8)]  # one at a time, the largest too
    assert buckets(tensors, 1 << 20) == [list(range(8))]


def _model() -> nn.Module:
    torch.manual_seed(0)
    widths = (8, 16, 16, 12)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], 1))


def _train(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for i in range(STEPS):
        x = torch.randn(7, 8, generator=torch.Generator().manual_seed(i))
        (model(x) - 1).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _whole(model: nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def _counting_matrix_work(calls: list[int]) -> None:
    """Count whole-matrix computations in this process: orthogonalisations (Muon's and ROOT's
    modules call ``newton_schulz``) and Conda's SVD bases."""
    from focus_optim.optim import conda, muon, root

    def counting(original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
            calls[0] += 1
            return original(*args, **kwargs)

        return counted

    muon.newton_schulz = root.newton_schulz = counting(muon.newton_schulz)
    conda.conda_basis = counting(conda.conda_basis)


CASES: dict[str, tuple[str, dict[str, Any], bool]] = {  # name, hparams, FSDP-sharded
    "muon-replicas": ("muon", {"weight_decay": 0.1, "distributed": True}, False),
    "root-replicas": ("root", {"distributed": True}, False),
    "muon-fsdp-auto": ("muon", {"weight_decay": 0.1}, True),
    "root-fsdp-auto": ("root", {}, True),
    "muon-fsdp-off": ("muon", {"distributed": False}, True),
    "muon-fsdp-buckets": ("muon", {}, True),  # one matrix per bucket (BUCKET_BYTES = 1 below)
    "root-fsdp-allgather": ("root", {}, True),  # GATHER_ON_OWNER = False below
    # Conda's SVD refreshes (steps 0 and 2 of 4); its update runs on the row shards
    "conda-replicas": ("conda", {"update_proj_gap": 2, "distributed": True}, False),
    "conda-fsdp-auto": ("conda", {"update_proj_gap": 2, "weight_decay": 0.1}, True),
    "conda-fsdp-off": ("conda", {"update_proj_gap": 2, "distributed": False}, True),
    "conda-fsdp-whole": ("conda", {"update_proj_gap": 2, "weight_decay": 0.1}, True),  # ROTATE_ON_SHARDS off
}


def _counting_full_tensor(gathers: list[int]) -> None:
    """Count whole-matrix all-gathers (``DTensor.full_tensor``) in this process."""
    from torch.distributed.tensor import DTensor

    original = DTensor.full_tensor

    def counted(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        gathers[0] += 1
        return original(self, *args, **kwargs)

    DTensor.full_tensor = counted  # type: ignore[method-assign]


def _run(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    from focus_optim.optim import conda

    calls, gathers = [0], [0]
    _counting_matrix_work(calls)
    _counting_full_tensor(gathers)
    results = {}
    for case, (name, hparams, fsdp) in CASES.items():
        model = _model()
        if fsdp:
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
        opt = make_optimizer(name, model, lr=1e-2, **hparams)
        _owners.BUCKET_BYTES = 1 if case.endswith("-buckets") else 256 << 20
        _owners.GATHER_ON_OWNER = not case.endswith("-allgather")
        conda.ROTATE_ON_SHARDS = not case.endswith("-whole")
        shapes = [p.shape for g in opt.param_groups if g["matrix"] for p in g["params"]]
        calls[0] = gathers[0] = 0
        _train(model, opt)  # the same batches on every rank: replicas stay replicas
        wide = sum(rows < cols for rows, cols in shapes)
        counted = {"calls": calls[0], "gathers": gathers[0], "matrices": len(shapes), "wide": wide}
        results[case] = {"params": _whole(model), **counted}
        # the one-process reference, in this process: the same threads, so the same matmul rounding
        one = _model()
        single = {k: v for k, v in hparams.items() if k != "distributed"}
        _train(one, make_optimizer(name, one, lr=1e-2, **single))
        results[case]["one"] = _whole(one)
    return results


@pytest.mark.distributed
def test_shared_matrix_work_equals_one_process_and_is_split(tmp_path):
    ranks = launch(_run, 2, tmp_path)
    for case, (name, hparams, fsdp) in CASES.items():
        # Conda's tall shards multiply fewer rows at a time than one process: equal up to rounding
        on_shards = name == "conda" and fsdp and not case.endswith("-whole")
        for rank, results in enumerate(ranks):
            r = results[case]
            for a, b, before in zip(r["params"], r["one"], _model().parameters()):
                assert not torch.equal(b, before.detach()), f"{case}: a parameter did not move"
                if on_shards:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda m, c=case: f"{c}: {m}")
                else:
                    assert torch.equal(a, b), f"{case} (rank {rank}): differs from one process"
        matrices, wide = ranks[0][case]["matrices"], ranks[0][case]["wide"]
        assert matrices >= 3 and 0 < wide < matrices
        counts = [results[case]["calls"] for results in ranks]
        gathers = [results[case]["gathers"] for results in ranks]
        work = matrices * (STEPS // hparams["update_proj_gap"] if name == "conda" else STEPS)
        if hparams.get("distributed") is False:
            assert counts == [work] * 2, f"{case}: every rank computes every matrix"
        else:
            assert sum(counts) == work, f"{case}: each matrix once per step, got {counts}"
            assert all(0 < c < work for c in counts), f"{case}: work not shared: {counts}"
        if not fsdp:
            continue
        # whole-matrix all-gathers: for matrix work not shared, or shared the earlier way
        expected = work if hparams.get("distributed") is False or case.endswith("-allgather") else 0
        if name == "conda" and case.endswith("-whole"):  # every matrix gathers p, g, M and V every step
            expected += 4 * STEPS * matrices
        elif name == "conda":  # tall shards gather nothing; wide ones gather G, M and the normalised rows
            expected += 3 * STEPS * wide
        assert gathers == [expected] * 2, f"{case}: whole-matrix all-gathers {gathers}, expected {expected}"


@pytest.mark.parametrize("name", ["muon", "conda"])
def test_distributed_needs_a_process_group(name):
    model = _model()
    opt = make_optimizer(name, model, distributed=True)
    (model(torch.randn(3, 8)) ** 2).sum().backward()
    with pytest.raises(RuntimeError, match="init_process_group"):
        opt.step()


@pytest.mark.parametrize("name", ["muon", "root", "conda"])
def test_distributed_must_be_none_or_bool(name):
    with pytest.raises(ValueError, match=r"distributed.*None, True or False"):
        make_optimizer(name, _model(), distributed="yes")
