"""An independent restatement of the paper's per-trajectory toy loop (appendix A.1), in plain
Python floats: one trajectory at a time, the rotation written out, the three update rules
restated from the paper (Adam with AdamW decay, Signum, FOCUS with the toy code's decay).

Nothing here imports the package: it is the yardstick the batched simulator is checked against.
"""

from __future__ import annotations

import math

import numpy as np


def valley_loss(x: float, y: float, a: float, c: float, angle: float) -> float:
    # (x, y) = R(angle) (u, v): u = x cos + y sin, v = -x sin + y cos.
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    return 0.5 * a * u * u * v * v - c * u


def valley_grad(x: float, y: float, a: float, c: float, angle: float) -> tuple[float, float]:
    cs, sn = math.cos(angle), math.sin(angle)
    u = x * cs + y * sn
    v = -x * sn + y * cs
    du = a * u * v * v - c
    dv = a * u * u * v
    # chain rule: d/dx = du*cos - dv*sin, d/dy = du*sin + dv*cos
    return du * cs - dv * sn, du * sn + dv * cs


def _sign(z: float) -> float:
    return (z > 0) - (z < 0)


def trajectory(
    optimizer: str,
    a: float,
    sigma: float,
    lr: float,
    wd: float,
    steps: int,
    rng: np.random.Generator,
    c: float = 0.1,
    angle: float = math.pi / 6,
) -> tuple[float, float, float]:
    """(final loss, minimum loss, maximum u) of one trajectory."""
    x, y = (float(v) for v in rng.normal(0.0, 1e-4, 2))
    noise = rng.normal(1.0, sigma, (steps, 2)) if sigma > 0 else np.ones((steps, 2))
    m = [0.0, 0.0]
    s = [0.0, 0.0]  # Adam's second moment / FOCUS's parameter average
    best = math.inf
    umax = -math.inf
    for t in range(1, steps + 1):
        best = min(best, valley_loss(x, y, a, c, angle))
        umax = max(umax, x * math.cos(angle) + y * math.sin(angle))
        gx, gy = valley_grad(x, y, a, c, angle)
        g = [gx * float(noise[t - 1, 0]), gy * float(noise[t - 1, 1])]
        p = [x, y]
        for i in range(2):
            if optimizer == "adamw":
                b1, b2, eps = 0.9, 0.999, 1e-8
                p[i] *= 1 - lr * wd
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                s[i] = b2 * s[i] + (1 - b2) * g[i] ** 2
                mh = m[i] / (1 - b1**t)
                vh = s[i] / (1 - b2**t)
                p[i] -= lr * mh / (math.sqrt(vh) + eps)
            elif optimizer == "signum":
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                p[i] -= lr * (_sign(m[i]) + wd * p[i])
            elif optimizer == "focus":
                b1, b2, gamma = 0.9, 0.9, 0.2
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                s[i] = b2 * s[i] + (1 - b2) * p[i]
                avg = s[i] / (1 - b2**t)
                p[i] -= lr * (_sign(m[i]) + gamma * _sign(p[i] - avg) + wd * p[i])
            else:
                raise ValueError(optimizer)
        x, y = p
    final = valley_loss(x, y, a, c, angle)
    u = x * math.cos(angle) + y * math.sin(angle)
    return final, min(best, final), max(umax, u)


def run(
    optimizer: str, a: float, sigma: float, lr: float, wd: float, steps: int, replicates: int, seed: int
) -> np.ndarray:
    """``[replicates, 3]`` metrics of independent trajectories."""
    rng = np.random.default_rng(seed)
    return np.array([trajectory(optimizer, a, sigma, lr, wd, steps, rng) for _ in range(replicates)])


def trajectory_nd(
    optimizer: str,
    axis: np.ndarray,
    a: float,
    sigma: float,
    lr: float,
    wd: float,
    steps: int,
    rng: np.random.Generator,
    c: float = 0.1,
) -> float:
    """Final loss of one trajectory on the N-D valley L = a/2 u^2 |theta - u e|^2 - c u (numpy vectors,
    the same three update rules)."""
    n = axis.size
    p = rng.normal(0.0, 1e-4, n)
    m = np.zeros(n)
    s = np.zeros(n)
    for t in range(1, steps + 1):
        u = p @ axis
        v = p - u * axis
        g = (a * u * (v @ v) - c) * axis + a * u * u * v
        g = g * rng.normal(1.0, sigma, n)
        if optimizer == "adamw":
            p = p * (1 - lr * wd)
            m = 0.9 * m + 0.1 * g
            s = 0.999 * s + 0.001 * g * g
            p = p - lr * (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
        elif optimizer == "signum":
            m = 0.9 * m + 0.1 * g
            p = p - lr * (np.sign(m) + wd * p)
        else:
            m = 0.9 * m + 0.1 * g
            s = 0.9 * s + 0.1 * p
            p = p - lr * (np.sign(m) + 0.2 * np.sign(p - s / (1 - 0.9**t)) + wd * p)
    u = p @ axis
    v = p - u * axis
    return 0.5 * a * u * u * (v @ v) - c * u
