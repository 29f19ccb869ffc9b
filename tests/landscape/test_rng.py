"""The counter-based generator: exact integer hashing, normal statistics, independence, and
independence from how rows and steps are batched."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from focus_optim.landscape import rng
from focus_optim.landscape import valley as V


def test_mix32_tensor_equals_python_reference() -> None:
    r = random.Random(0)
    words = [r.getrandbits(32) for _ in range(2000)] + [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    t = torch.tensor([rng.to_i32(w) for w in words], dtype=torch.int32)
    got = [v & rng.MASK32 for v in rng.mix32(t).tolist()]
    assert got == [rng.mix32_py(w) for w in words]


def test_row_keys_are_distinct_and_depend_on_seed() -> None:
    k = rng.row_keys(12345, 200_000)
    assert k.dtype == torch.int32 and torch.unique(k).numel() == 200_000
    assert not torch.equal(k, rng.row_keys(12346, 200_000))
    assert torch.equal(rng.row_keys(12345, 10, start=100), k[100:110])


def test_normals_match_python_reference() -> None:
    keys = rng.row_keys(7, 50)
    z = rng.normals(keys, torch.tensor([[3]], dtype=torch.int32))  # [2, 50]
    for i, key in enumerate(keys.tolist()):
        c, s = rng.normals_py(key & rng.MASK32, 3)
        assert z[0, i].item() == pytest.approx(c, abs=2e-5)
        assert z[1, i].item() == pytest.approx(s, abs=2e-5)


def test_normal_moments_and_distribution() -> None:
    keys = rng.row_keys(1, 20_000)
    z = rng.step_normals(keys, 1, 2, count=50).double().reshape(-1).numpy()  # 2M draws
    assert abs(z.mean()) < 0.005
    assert abs(z.var() - 1) < 0.005
    assert abs((z**3).mean()) < 0.01
    assert abs((z**4).mean() - 3) < 0.03
    # Kolmogorov distance to the standard normal CDF
    zs = np.sort(z[::7])
    cdf = 0.5 * (1 + np.vectorize(math.erf)(zs / math.sqrt(2)))
    ecdf = np.arange(1, zs.size + 1) / zs.size
    assert np.abs(cdf - ecdf).max() < 0.004


def test_normals_are_uncorrelated_across_rows_steps_and_components() -> None:
    keys = rng.row_keys(2, 4096)
    z = rng.step_normals(keys, 1, 4, count=64).double()  # [step, row, component]
    flat = lambda t: t.reshape(-1)  # noqa: E731
    bound = 4 / math.sqrt(z[..., 0].numel())
    pairs = {
        "consecutive steps": (z[1:, :, 0], z[:-1, :, 0]),
        "neighbouring rows": (z[:, 1:, 0], z[:, :-1, 0]),
        "cos/sin of a pair": (z[..., 0], z[..., 2]),
        "two pairs": (z[..., 0], z[..., 1]),
        "squares (dependence)": (z[..., 0] ** 2 - 1, z[..., 2] ** 2 - 1),
    }
    for name, (x, y) in pairs.items():
        corr = torch.corrcoef(torch.stack((flat(x), flat(y))))[0, 1].item()
        assert abs(corr) < bound, name


def test_block_of_steps_equals_step_by_step() -> None:
    keys = rng.row_keys(3, 300)
    for dim in (2, 5, 100):
        block = rng.step_normals(keys, 11, dim, count=6)
        for i in range(6):
            assert torch.equal(block[i], rng.step_normals(keys, 11 + i, dim))
            assert torch.equal(block[i], rng.step_normals(keys, torch.tensor(11 + i, dtype=torch.int32), dim))
        # a row's numbers do not depend on which other rows are drawn with it
        assert torch.equal(rng.step_normals(keys[100:200], 11, dim), block[0][100:200])


def test_multiplicative_noise_has_mean_one_and_std_sigma() -> None:
    keys = rng.row_keys(4, 10_000)
    z = rng.step_normals(keys, 1, 2, count=20)
    sigma = torch.full((10_000,), 1.7)
    g = torch.tensor([0.3, -2.0]).expand(10_000, 2)
    factors = torch.stack([V.noisy(g, sigma, z[i]) / g for i in range(20)]).double()
    assert factors.mean().item() == pytest.approx(1.0, abs=0.01)
    assert factors.std().item() == pytest.approx(1.7, rel=0.01)
