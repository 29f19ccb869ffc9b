"""Best-lr selection, I_Signum and the crossover on synthetic results with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from focus_optim.mnist.analysis import best_lr, crossover, final_losses, improvement, summarize
from focus_optim.mnist.train import METRICS

LRS = [1e-3, 1e-2, 1e-1]
BS = [2, 8, 32]


def _dataset(final: np.ndarray, optimizers=("adamw", "signum")) -> xr.Dataset:
    """A results-like Dataset whose last-step test loss is ``final`` (opt, bs, lr, rep)."""
    steps = 3
    hist = np.full((*final.shape, steps, len(METRICS)), np.nan, dtype=np.float32)
    hist[..., -1, 1] = final
    hist[..., 0, 1] = 99.0  # an earlier step must not matter
    return xr.Dataset(
        {"history": (["optimizer", "batch_size", "lr", "replicate", "step", "metric"], hist)},
        coords={
            "optimizer": list(optimizers),
            "batch_size": BS,
            "lr": LRS,
            "replicate": [0, 1, 2],
            "step": [1, 2, 3],
            "metric": list(METRICS),
        },
        attrs={"complete": True},
    )


def test_best_lr_by_mean_final_loss_with_divergence() -> None:
    final = np.ones((2, 3, 3, 3), dtype=np.float32)
    # adamw, bs 2: lr 1e-2 has the lowest single run but a worse mean than lr 1e-1
    final[0, 0, 1] = [0.1, 0.9, 0.9]  # mean 0.633
    final[0, 0, 2] = [0.5, 0.6, 0.7]  # mean 0.6 -> best
    # adamw, bs 8: lr 1e-3 would be best but one replicate diverged (NaN), lr 1e-2 inf
    final[0, 1, 0] = [0.1, 0.1, np.nan]
    final[0, 1, 1] = [0.1, np.inf, 0.1]
    final[0, 1, 2] = [0.4, 0.5, 0.6]
    # adamw, bs 32: everything diverged -> NaN best loss
    final[0, 2] = np.nan
    t = best_lr(final_losses(_dataset(final)))
    a = t.sel(optimizer="adamw")
    assert a["best_lr"].values[:2].tolist() == [1e-1, 1e-1]
    np.testing.assert_allclose(a["best_loss"].values[:2], [0.6, 0.5], rtol=1e-6)
    np.testing.assert_allclose(a["best_std"].values[:2], [0.1, 0.1], rtol=1e-5)  # ddof=1
    assert np.isnan(a["best_loss"].values[2]) and np.isnan(a["best_lr"].values[2])
    np.testing.assert_allclose(t.sel(optimizer="signum")["best_loss"].values, 1.0)


def test_improvement_and_crossover() -> None:
    final = np.full((2, 3, 3, 3), 10.0, dtype=np.float32)
    final[0, :, 0] = np.array([2.0, 1.0, 0.5])[:, None]  # adam best losses per batch size
    final[1, :, 0] = np.array([1.5, 1.0, 0.6])[:, None]  # signum
    ds = _dataset(final)
    imp = improvement(best_lr(final_losses(ds))["best_loss"], "signum", "adamw")
    np.testing.assert_allclose(imp.values, [0.25, 0.0, -0.2], rtol=1e-6)
    s = summarize(ds)
    assert s["crossover"]["positive_up_to"] == 8 and s["crossover"]["negative_from"] == 32
    np.testing.assert_allclose(s["I_signum"], [0.25, 0.0, -0.2], rtol=1e-6)
    assert s["optimizers"]["signum"]["best_lr"] == [1e-3] * 3


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.1, 0.05, -0.02, -0.1], (2, 4)),
        ([-0.1, 0.05, -0.02], (2, 4)),
        ([0.1, 0.2, 0.3], (None, None)),
        ([np.nan, 0.1, -0.1], (2, 4)),
    ],
)
def test_crossover_cases(values: list[float], expected: tuple) -> None:
    bs = [1, 2, 4, 8][: len(values)]
    c = crossover(bs, values)
    assert (c["positive_up_to"], c["negative_from"]) == expected


def test_summary_names_resolve_by_registry() -> None:
    final = np.ones((2, 3, 3, 3), dtype=np.float32)
    s = summarize(_dataset(final, optimizers=("adam", "signum:momentum=0.9")))
    assert (s["adam"], s["signum"]) == ("adam", "signum:momentum=0.9") and s["I_signum"] == [0.0] * 3
