"""1-bit Adam across real processes (gloo on CPU, launched with torch.multiprocessing spawn).

Each test spawns 2 or 4 ranks; the ranks compute and save their results, the test asserts on
them here. The optimizer-level checks replay the same per-rank gradients in one process (an
independent Adam restatement for the warm-up, ``simulate_workers=n`` for the compression).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from gloo_launch import launch
from torch import nn

from focus_optim.optim import _comm, protocol
from focus_optim.optim.onebit_adam import OneBitAdam, load_rank_state, save_rank_state

pytestmark = pytest.mark.distributed

# --- shared data ------------------------------------------------------------------------------------
SHAPES = [(33,), (7, 5), (4096,)]


def _inputs(round_: int, worker: int) -> list[torch.Tensor]:
    """Worker ``worker``'s vectors in round ``round_``: a slowly drifting common signal + noise."""
    common = torch.Generator().manual_seed(10_000 + round_ // 10)
    own = torch.Generator().manual_seed(1000 * round_ + worker)
    return [torch.randn(s, generator=common) + 0.5 * torch.randn(s, generator=own) for s in SHAPES]


# --- compressed all-reduce ------------------------------------------------------------------------
ROUNDS = 60


def _w_allreduce(rank: int, n: int, out_dir: str, rounds: int = ROUNDS) -> dict[str, Any]:
    lps = [_comm.padded_numel(math.prod(s), n) for s in SHAPES]
    errs = {
        mode: ([torch.zeros(lp) for lp in lps], [torch.zeros(lp // n) for lp in lps])
        for mode in ("all_to_all", "all_gather")
    }
    sim_w = [torch.zeros(n, lp) for lp in lps]
    sim_s = [torch.zeros(lp) for lp in lps]
    equal_sim = equal_modes = True
    sum_true = [torch.zeros(s) for s in SHAPES]
    sum_comp = [torch.zeros(s) for s in SHAPES]
    first_cos, sent, modes, identity_gap, err_norms, rel_avg_err = [], {}, {}, [], [], []
    for r in range(rounds):
        xs = [_inputs(r, j) for j in range(n)]
        outs = {}
        for mode, (werr, serr) in errs.items():
            ts = [x.clone() for x in xs[rank]]
            sent[mode], modes[mode] = _comm.compressed_allreduce_(ts, werr, serr, phase1=mode)
            outs[mode] = ts
        sims = [
            _comm.simulated_compressed_allreduce([xs[j][k] for j in range(n)], sim_w[k], sim_s[k])
            for k in range(len(SHAPES))
        ]
        equal_sim &= all(torch.equal(a, b) for a, b in zip(outs["all_to_all"], sims))
        equal_modes &= all(torch.equal(a, b) for a, b in zip(outs["all_to_all"], outs["all_gather"]))
        for k in range(len(SHAPES)):
            mean = torch.stack([xs[j][k] for j in range(n)]).mean(0)
            sum_true[k] += mean
            sum_comp[k] += sims[k]
            if r == 0:
                first_cos.append(torch.nn.functional.cosine_similarity(sims[k].flatten(), mean.flatten(), 0))
            # error feedback telescopes: Σ out = Σ mean - mean_j δ_j - δ̄ (errors start at zero)
            lk = mean.numel()
            residual = sim_w[k].mean(0)[:lk] + sim_s[k][:lk]
            gap = (sum_comp[k].flatten() + residual - sum_true[k].flatten()).norm() / sum_true[k].norm()
            identity_gap.append(float(gap))
        err_norms.append(float(sum(w.norm() + s.norm() for w, s in zip(sim_w, sim_s))))
        rel_avg_err.append(max(float((c - t).norm() / t.norm()) for c, t in zip(sum_comp, sum_true)))
    return {
        "equal_sim": equal_sim,
        "equal_modes": equal_modes,
        "first_cos": [float(c) for c in first_cos],
        "rel_avg_err": rel_avg_err,
        "identity_gap": max(identity_gap),
        "err_norms": err_norms,
        "sent": sent,
        "modes": modes,
        "expected_sent": _comm.compressed_allreduce_bytes(lps, n),
        "fp32_bytes": _comm.ring_allreduce_bytes(sum(math.prod(s) for s in SHAPES), n),
    }


@pytest.mark.parametrize("n", [2, 4])
def test_compressed_allreduce_real_equals_simulated_and_tracks_the_mean(n, request):
    rounds = ROUNDS
    results = [r["allreduce"] for r in request.getfixturevalue(f"ranks{n}")]
    for res in results:
        assert res["equal_sim"], "real multi-process compressed all-reduce differs from the simulation"
        assert res["equal_modes"], "all-gather fallback of phase 1 differs from all-to-all"
        assert res["modes"] == {"all_to_all": "all_to_all", "all_gather": "all_gather"}
        assert res["sent"]["all_to_all"] == res["expected_sent"]
        assert res["sent"]["all_gather"] > res["sent"]["all_to_all"]
    res = results[0]
    # one round: the 2-stage 1-bit estimate points the way of the mean
    assert min(res["first_cos"]) > 0.6, res["first_cos"]
    # error feedback: Σ compressed = Σ true means - (mean worker error + server error), exactly
    assert res["identity_gap"] < 1e-5
    # ... the errors stay bounded, so the running averages converge (rel. error ~ 1/rounds)
    assert max(res["err_norms"][rounds // 2 :]) < 1.5 * max(res["err_norms"][: rounds // 2])
    curve = res["rel_avg_err"]
    assert curve[-1] < 0.1 and curve[-1] < 0.2 * curve[0], (curve[0], curve[-1])


def _w_bytes(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    out = {}
    for numel in (1000, 1 << 16, 300_001):
        lp = _comm.padded_numel(numel, n)
        t = torch.randn(numel)
        sent, _ = _comm.compressed_allreduce_([t], [torch.zeros(lp)], [torch.zeros(lp // n)])
        out[numel] = (sent, _comm.ring_allreduce_bytes(numel, n))
    return out


def test_bytes_sent_per_step_are_counted_and_small_for_large_tensors(ranks4):
    n = 4
    res = ranks4[0]["bytes"]
    for numel, (sent, fp32) in res.items():
        lp = _comm.padded_numel(numel, n)
        # phase 1 (all-to-all of bits + scales) and phase 2 (all-gather), (n-1) parts each
        assert sent == 2 * (n - 1) * (4 + lp // (8 * n))
        assert fp32 == 2 * (n - 1) * 4 * numel // n
        if numel >= 1 << 16:
            assert sent <= fp32 / 25, (numel, sent, fp32)
            assert sent >= fp32 / 33


# --- the optimizer without DDP (average_grads=True) -----------------------------------------------
FREEZE = 5
STEPS = 12
SAVE_AT = 8


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7919 * step + rank)
    x = torch.randn(8, 6, generator=g)
    return x, torch.sin(x[:, :3]) + 0.1 * torch.randn(8, 3, generator=g)


def _loss(model: nn.Module, step: int, rank: int) -> torch.Tensor:
    x, y = _batch(step, rank)
    return nn.functional.mse_loss(model(x), y)


HP = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, freeze_step=FREEZE)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _w_optimizer(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    model = _mlp()
    opt = OneBitAdam(model.parameters(), average_grads=True, **HP)
    trajectory, stats, sync_flags, identical = [], [], [], True
    snapshot = None
    for step in range(1, STEPS + 1):
        sync_flags.append(protocol.needs_grad_sync(opt))
        opt.zero_grad(set_to_none=True)
        _loss(model, step, rank).backward()
        opt.step()
        flat = _flat(model)
        trajectory.append(flat.clone())
        stats.append(dict(opt.comm_stats))
        gathered = [torch.empty_like(flat) for _ in range(n)]
        dist.all_gather(gathered, flat)
        identical &= all(torch.equal(g, gathered[0]) for g in gathered)
        if step == SAVE_AT:
            save_rank_state(opt, Path(out_dir) / "optim.pt")
            snapshot = [p.detach().clone() for p in model.parameters()]
    # resume from the per-rank checkpoint in a fresh model and optimizer
    model2 = _mlp()
    with torch.no_grad():
        for p, s in zip(model2.parameters(), snapshot):
            p.copy_(s)
    opt2 = OneBitAdam(model2.parameters(), average_grads=True, **HP)
    load_rank_state(opt2, Path(out_dir) / "optim.pt")
    for step in range(SAVE_AT + 1, STEPS + 1):
        opt2.zero_grad(set_to_none=True)
        _loss(model2, step, rank).backward()
        opt2.step()
    has_errors = all("worker_error" in s for s in opt.state.values())
    return {
        "trajectory": torch.stack(trajectory),
        "stats": stats,
        "sync": sync_flags,
        "identical": identical,
        "resumed": _flat(model2),
        "has_errors": has_errors,
        "frozen": opt.frozen,
    }


def _restated_warmup(n: int) -> list[torch.Tensor]:
    """DeepSpeed's warm-up, restated: step 1 discarded; m, v EMAs of the averaged gradient;
    p -= lr * (m / (sqrt(v) + eps) + wd * p); no bias correction."""
    model = _mlp()
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2 = HP["betas"]
    out = []
    for step in range(1, FREEZE + 1):
        grads = [torch.zeros_like(p) for p in params]
        for r in range(n):
            model.zero_grad()
            _loss(model, step, r).backward()
            for g, p in zip(grads, params):
                g += p.grad / n
        if step > 1:
            with torch.no_grad():
                for p, g, mi, vi in zip(params, grads, m, v):
                    mi.mul_(b1).add_((1 - b1) * g)
                    vi.mul_(b2).add_((1 - b2) * g * g)
                    p -= HP["lr"] * (mi / (vi.sqrt() + HP["eps"]) + HP["weight_decay"] * p)
        out.append(_flat(model).clone())
    return out


def _simulated_trajectory(n: int) -> torch.Tensor:
    model = _mlp()
    opt = OneBitAdam(model.parameters(), simulate_workers=n, **HP)
    out = []
    for step in range(1, STEPS + 1):
        for r in range(n):
            _loss(model, step, r).backward()
            opt.stash_worker_grads()
        opt.step()
        out.append(_flat(model).clone())
    return torch.stack(out)


def test_optimizer_two_ranks_warmup_freeze_identity_resume_and_simulation(ranks2):
    n = 2
    results = [r["optimizer"] for r in ranks2]
    r0 = results[0]
    for res in results:
        assert res["identical"], "ranks hold different parameters"
        assert res["frozen"] and res["has_errors"]
        assert torch.equal(res["trajectory"], r0["trajectory"])
        # per-rank checkpoint (with this rank's worker/server errors) resumes identically
        assert torch.equal(res["resumed"], res["trajectory"][-1])
        # the training-loop protocol: sync before the freeze only
        assert res["sync"] == [False] * STEPS  # average_grads=True: the optimizer syncs itself
    # warm-up == averaged-gradient Adam without bias correction, first step discarded
    restated = _restated_warmup(n)
    assert torch.equal(r0["trajectory"][0], _flat(_mlp()))  # the dry-run changes nothing
    for step in range(FREEZE):
        torch.testing.assert_close(r0["trajectory"][step], restated[step], rtol=1e-5, atol=1e-6)
    # one process simulating 2 workers reproduces the 2-process run bit for bit
    assert torch.equal(_simulated_trajectory(n), r0["trajectory"])
    # communication: fp32 averaging in the warm-up, 1-bit afterwards
    phases = [s["phase"] for s in r0["stats"]]
    assert phases == ["dry_run"] + ["warmup"] * (FREEZE - 1) + ["compressed"] * (STEPS - FREEZE)
    numel = r0["trajectory"].shape[1]
    for s in r0["stats"][1:FREEZE]:
        assert s["allreduce_bytes"] == s["fp32_allreduce_bytes"] == _comm.ring_allreduce_bytes(numel, n)
    for s in r0["stats"][FREEZE:]:
        assert s["allreduce_bytes"] == 0 and s["ddp_bytes"] == 0
        assert 0 < s["compressed_bytes"] == s["bytes_sent"] < s["fp32_allreduce_bytes"]


def _w_identity(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    model = _mlp()
    groups = [
        {"params": [model[0].weight, model[2].weight]},
        {"params": [model[0].bias], "non_freeze": True},
        {"params": [model[2].bias], "exp_avg_mask": torch.tensor([1.0, 0.0, 1.0])},
    ]
    opt = OneBitAdam(groups, average_grads=True, **HP)
    for step in range(1, 10):
        opt.zero_grad(set_to_none=True)
        _loss(model, step, rank).backward()
        opt.step()
    flat = _flat(model)
    gathered = [torch.empty_like(flat) for _ in range(n)]
    dist.all_gather(gathered, flat)
    return {
        "identical": all(torch.equal(g, gathered[0]) for g in gathered),
        "masked_m": opt.state[model[2].bias]["exp_avg"][1].item(),
        "non_freeze_has_errors": "worker_error" in opt.state[model[0].bias],
    }


def test_four_ranks_hold_bit_identical_parameters_after_the_freeze(ranks4):
    for res in (r["identity"] for r in ranks4):
        assert res["identical"]
        assert res["masked_m"] == 0.0
        assert not res["non_freeze_has_errors"]


# --- DDP + no_sync training loop: 1-bit Adam ends near Adam ---------------------------------------
TRAIN_STEPS = 800
TRAIN_FREEZE = 200  # a 25 % warm-up, DeepSpeed's rule of thumb
TRAIN_LR = 3e-2
NOISE = 0.1  # the held-out loss cannot go below NOISE**2


def _teacher_data(step: int, rank: int, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100_003 * step + rank)
    x = torch.randn(batch, 10, generator=g)
    w = torch.Generator().manual_seed(5)
    a, b = torch.randn(10, 8, generator=w) / 3, torch.randn(8, 1, generator=w) / 3
    return x, torch.tanh(x @ a) @ b + NOISE * torch.randn(batch, 1, generator=g)


def _train(rank: int, onebit: bool) -> tuple[float, list[bool], bool]:
    """DDP training with the loop of ``protocol``: backward under ``no_sync()`` once the
    optimizer says so; linear learning-rate decay to 0; held-out loss at the end."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    model = nn.parallel.DistributedDataParallel(net)
    if onebit:
        opt = OneBitAdam(model.parameters(), lr=TRAIN_LR, freeze_step=TRAIN_FREEZE)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=TRAIN_LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / TRAIN_STEPS)
    syncs = []
    for step in range(1, TRAIN_STEPS + 1):
        sync = protocol.needs_grad_sync(opt)
        syncs.append(sync)
        x, y = _teacher_data(step, rank)
        opt.zero_grad(set_to_none=True)
        with nullcontext() if sync else model.no_sync():
            nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
    x, y = _teacher_data(0, 999, batch=4096)  # the same held-out set on every rank
    with torch.no_grad():
        loss = float(nn.functional.mse_loss(net(x), y))
    flat = _flat(net)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return loss, syncs, all(torch.equal(g, gathered[0]) for g in gathered)


def _w_train(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    adam_loss, _, _ = _train(rank, onebit=False)
    onebit_loss, syncs, identical = _train(rank, onebit=True)
    return {"adam": adam_loss, "onebit": onebit_loss, "syncs": syncs, "identical": identical}


def test_ddp_training_with_onebit_adam_ends_within_two_percent_of_adam(ranks2):
    res = ranks2[0]["train"]
    assert res["identical"]  # DDP skipped its all-reduce after the freeze; the momentum sync suffices
    assert res["syncs"] == [True] * TRAIN_FREEZE + [False] * (TRAIN_STEPS - TRAIN_FREEZE)
    assert res["adam"] < 1.2 * NOISE**2  # both near the noise floor, so 2 % is a real comparison
    assert abs(res["onebit"] / res["adam"] - 1) <= 0.02, (res["onebit"], res["adam"])


# --- one launch per world size; the tests above read its parts ------------------------------------
WORKERS: dict[str, Callable[..., Any]] = {
    "allreduce": _w_allreduce,
    "bytes": _w_bytes,
    "optimizer": _w_optimizer,
    "identity": _w_identity,
    "train": _w_train,
}


def _w_suite(rank: int, n: int, out_dir: str, parts: tuple[str, ...]) -> dict[str, Any]:
    return {name: WORKERS[name](rank, n, out_dir) for name in parts}


@pytest.fixture(scope="module")
def ranks2(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return launch(_w_suite, 2, tmp_path_factory.mktemp("ranks2"), ("allreduce", "optimizer", "train"))


@pytest.fixture(scope="module")
def ranks4(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return launch(_w_suite, 4, tmp_path_factory.mktemp("ranks4"), ("allreduce", "bytes", "identity"))


# --- CUDA tensors over gloo (several ranks may share one GPU; NCCL would refuse) ----------------------
def _w_cuda_gloo(rank: int, n: int, out_dir: str) -> dict[str, Any]:
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    lps = [_comm.padded_numel(math.prod(s), n) for s in SHAPES]
    werr = [torch.zeros(lp, device=device) for lp in lps]
    serr = [torch.zeros(lp // n, device=device) for lp in lps]
    sim_w = [torch.zeros(n, lp, device=device) for lp in lps]
    sim_s = [torch.zeros(lp, device=device) for lp in lps]
    equal, mode = True, None
    for r in range(5):
        xs = [[t.to(device) for t in _inputs(r, j)] for j in range(n)]
        ts = [x.clone() for x in xs[rank]]
        _, mode = _comm.compressed_allreduce_(ts, werr, serr)
        for k in range(len(SHAPES)):
            sim = _comm.simulated_compressed_allreduce([xs[j][k] for j in range(n)], sim_w[k], sim_s[k])
            equal &= torch.equal(ts[k], sim)
    return {"equal": equal, "mode": mode}


@pytest.mark.gpu
def test_cuda_tensors_over_gloo_fall_back_to_all_gather_and_match_the_simulation(tmp_path):
    for res in launch(_w_cuda_gloo, 2, tmp_path):
        assert res["mode"] == "all_gather"  # gloo has no all-to-all for CUDA tensors
        assert res["equal"]
