"""The batched simulator: against an independent per-trajectory restatement of the paper's loop,
its metrics, and independence of its results from batching, chunking and packing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import toy_reference as R

from focus_optim.landscape import simulate as S
from focus_optim.landscape import valley as V

EAGER = S.Options(compile=False)
# (sharpness, noise, lr): from flat and noisy to sharp and noisy, around each optimizer's best lr
CELLS = [(1.0, 1.0, 0.03), (10.0, 0.5, 0.01), (100.0, 1.5, 0.005), (1000.0, 3.0, 0.003)]
REPLICATES = 50


@pytest.fixture(scope="module")
def simulated() -> dict[str, list[np.ndarray]]:
    out = {}
    for opt in S.PAPER_SETUPS:
        blocks = [
            S.Rows.make(100 + i, a, s, np.full(REPLICATES, lr), 0.1) for i, (a, s, lr) in enumerate(CELLS)
        ]
        out[opt] = [m.double().numpy() for m in S.simulate(opt, blocks, V.rotated(), 1000, torch_opts())]
    return out


def torch_opts() -> S.Options:
    return S.Options(compile=False, threads=1)


@pytest.mark.parametrize("opt", list(S.PAPER_SETUPS))
def test_matches_scalar_restatement_of_the_paper_loop(opt: str, simulated) -> None:
    """Mean final loss (and the other metrics) over 50 replicates within 3 standard errors."""
    for i, (a, sigma, lr) in enumerate(CELLS):
        ref = R.run(opt, a, sigma, lr, 0.1, 1000, REPLICATES, seed=i)
        sim = simulated[opt][i]
        for k, metric in enumerate(S.METRICS):
            se = np.sqrt(sim[:, k].var(ddof=1) / REPLICATES + ref[:, k].var(ddof=1) / REPLICATES)
            diff = sim[:, k].mean() - ref[:, k].mean()
            assert abs(diff) <= 3 * se, (
                f"{opt} a={a} sigma={sigma} lr={lr} {metric}: {diff:+.4f} vs se {se:.4f}"
            )


@pytest.mark.parametrize("opt", list(S.PAPER_SETUPS))
def test_high_dimensional_valley_matches_vector_restatement(opt: str) -> None:
    """Figure 6 (right)'s 100-D valley against a per-trajectory numpy restatement (30 replicates)."""
    land = V.random_axis(100)
    axis = np.array(land.axis)
    rng = np.random.default_rng(1)
    ref = np.array([R.trajectory_nd(opt, axis, 10.0, 2.0, 1e-3, 0.1, 1000, rng) for _ in range(30)])
    sim = S.simulate(opt, S.Rows.make(5, 10.0, 2.0, np.full(30, 1e-3), 0.1), land, 1000, EAGER)[0]
    sim = sim[:, 0].double().numpy()
    se = np.sqrt(ref.var(ddof=1) / 30 + sim.var(ddof=1) / 30)
    assert abs(sim.mean() - ref.mean()) <= 3 * se


def test_comparison_has_power(simulated) -> None:
    """The 3-SE criterion does tell optimizers apart (Adam vs Signum at a = 10, sigma = 0.5)."""
    adam, signum = simulated["adamw"][1][:, 0], simulated["signum"][1][:, 0]
    se = np.sqrt(adam.var(ddof=1) / REPLICATES + signum.var(ddof=1) / REPLICATES)
    assert abs(adam.mean() - signum.mean()) > 3 * se


def test_metrics_agree_with_the_recorded_trajectory() -> None:
    rows = S.Rows.make(5, [0.5, 10.0, 300.0], [0.0, 1.0, 3.0], [0.3, 0.01, 0.003], [0.0, 0.1, 0.5])
    for opt in S.PAPER_SETUPS:
        [metrics], [rec] = S.simulate(opt, rows, V.rotated(), 200, EAGER, record=True)
        [plain] = S.simulate(opt, rows, V.rotated(), 200, EAGER)
        assert torch.equal(metrics, plain)
        assert rec.loss.shape == (201, 3) and rec.theta.shape == (201, 3, 2)
        torch.testing.assert_close(metrics[:, 0], rec.loss[-1])
        torch.testing.assert_close(metrics[:, 1], rec.loss.min(0).values)
        torch.testing.assert_close(metrics[:, 2], rec.u.max(0).values)
        e = V.rotated().axis_tensor()
        torch.testing.assert_close(rec.u, rec.theta @ e)
        torch.testing.assert_close(rec.loss[0], V.loss(rec.theta[0], rows.sharpness, e, 0.1))


def test_initial_position_and_frozen_trajectories() -> None:
    """lr = 0: nothing moves; the start is N(0, 1e-4^2) per coordinate."""
    rows = S.Rows.make(9, 10.0, 1.0, np.zeros(20_000), 0.1)
    [metrics], [rec] = S.simulate("adamw", rows, V.rotated(), 3, EAGER, record=True)
    start = rec.theta[0].double()
    assert start.std().item() == pytest.approx(1e-4, rel=0.02) and abs(start.mean().item()) < 3e-6
    assert torch.equal(rec.theta[-1], rec.theta[0])
    torch.testing.assert_close(metrics[:, 0], metrics[:, 1])


def test_weight_decay_and_noise_reach_the_trajectories() -> None:
    base = dict(seed=3, sharpness=10.0, lr=np.full(64, 0.01))
    m = {
        (wd, s): S.simulate("focus", S.Rows.make(noise=s, weight_decay=wd, **base), V.rotated(), 300, EAGER)[
            0
        ]
        for wd in (0.0, 0.5)
        for s in (0.0, 2.0)
    }
    assert m[(0.0, 0.0)][:, 2].mean() > m[(0.5, 0.0)][:, 2].mean()  # decay holds u back
    assert not torch.equal(m[(0.0, 0.0)], m[(0.0, 2.0)])


@pytest.mark.parametrize("land", [V.rotated(), V.random_axis(8)], ids=["2d", "8d"])
def test_results_do_not_depend_on_batching_chunking_or_packing(land: V.Valley) -> None:
    blocks = [
        S.Rows.make(seed, a, np.linspace(0, 3, 5)[:, None], np.logspace(-3, 0, 40)[None, :], 0.1)
        for seed, a in [(11, 0.5), (12, 10.0), (13, 300.0)]
    ]  # 200 rows each
    alone = [S.simulate("adamw", [b], land, 150, EAGER)[0] for b in blocks]
    variants = {
        "batched": S.Options(compile=False),
        "chunked": S.Options(compile=False, chunk_rows=64),
        "packed": S.Options(compile=False, pack_cells=True),
        "packed+chunked": S.Options(compile=False, pack_cells=True, chunk_rows=128),
    }
    for name, opts in variants.items():
        got = S.simulate("adamw", blocks, land, 150, opts)
        for i, (g, want) in enumerate(zip(got, alone)):
            assert torch.equal(g, want), f"{name}: block {i} differs"
    # a block's rows are its own: the same seed gives the same numbers in any company
    again = S.simulate("adamw", [blocks[1], blocks[0]], land, 150, EAGER)
    assert torch.equal(again[1], alone[0])


@pytest.mark.slow
@pytest.mark.skipif(not S.compile_available(torch.device("cpu")), reason="torch.compile needs a C++ compiler")
def test_compiled_step_agrees_with_eager() -> None:
    """One compiled graph (FOCUS): packed == per cell and 3 steps per call == 1, bit for bit;
    compiled vs eager statistically."""
    blocks = [S.Rows.make(seed, a, 1.5, np.full(256, 0.01), 0.1) for seed, a in [(21, 10.0), (22, 100.0)]]
    comp = S.Options(compile=True, pack_cells=True, chunk_rows=1024)
    packed = S.simulate("focus", blocks, V.rotated(), 300, comp)
    alone = [S.simulate("focus", [b], V.rotated(), 300, comp)[0] for b in blocks]
    for p, a in zip(packed, alone):
        assert torch.equal(p, a)
    # Three steps unrolled in one compiled call (state kept between them): the same numbers.
    unrolled = S.simulate("focus", blocks, V.rotated(), 300, dataclasses.replace(comp, steps_per_call=3))
    for u, p in zip(unrolled, packed):
        assert torch.equal(u, p)
    assert any(ws.opts.steps_per_call == 3 and ws.opts.compile for ws in S._WORKSPACES.values())
    eager = S.simulate("focus", blocks, V.rotated(), 300, EAGER)
    for c, e in zip(packed, eager):
        c, e = c[:, 0].double(), e[:, 0].double()
        se = (c.var() / c.numel() + e.var() / e.numel()).sqrt()
        assert (c.mean() - e.mean()).abs() <= 3 * se


def test_options_and_setups() -> None:
    cpu = S.Options().resolved(2, 1.0)
    assert not cpu.compile and not cpu.pack_cells and cpu.chunk_rows == S.CPU_CHUNK_ROWS
    assert not cpu.fixed_order
    assert S.Options(pack_cells=True).resolved(8, 1.0).fixed_order  # packed rows round alike by default
    assert not S.Options(pack_cells=True, fixed_order=False).resolved(8, 1.0).fixed_order
    assert S.setup("adam") is S.PAPER_SETUPS["adamw"]
    assert S.PAPER_SETUPS["focus"].hparams["decay_mode"] == "decoupled"
    with pytest.raises(ValueError, match="Invalid optimizer"):
        S.setup("sgd")
    with pytest.raises(ValueError, match="Invalid steps"):
        S.simulate("focus", S.Rows.make(0, 1.0, 0.0, [0.1], 0.0), V.rotated(), 0, EAGER)


@pytest.mark.gpu
def test_cuda_packed_equals_per_cell_and_matches_cpu() -> None:
    blocks = [S.Rows.make(seed, a, 1.0, np.full(512, 0.01), 0.1) for seed, a in [(31, 10.0), (32, 100.0)]]
    for land in (V.rotated(), V.random_axis(100)):
        gpu = S.Options(device="cuda")
        packed = S.simulate("adamw", blocks, land, 200, gpu)
        alone = [S.simulate("adamw", [b], land, 200, gpu)[0] for b in blocks]
        cpu = S.simulate("adamw", blocks, land, 200, EAGER)
        for p, a, c in zip(packed, alone, cpu):
            assert torch.equal(p, a)
            p, c = p[:, 0].double(), c[:, 0].double()
            assert (p.mean() - c.mean()).abs() <= 3 * (p.var() / p.numel() + c.var() / c.numel()).sqrt()
