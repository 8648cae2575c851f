"""The 2-D toy densities of the FFJORD paper, as seeded generators.

Each generator is ``fn(n, seed=None | int | numpy.random.Generator) -> ndarray (n, 2)`` (float64).
The shapes follow Grathwohl et al. (2019)'s toy set; ``moons`` and ``circles`` keep scikit-learn's
native scale (``make_moons(noise=0.1)``, ``make_circles(factor=0.5, noise=0.08)``), the others are
scaled to lie roughly inside ``[-4, 4]²``.

References:
    FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative Models,
    Grathwohl, Chen, Bettencourt, Sutskever & Duvenaud, 2019, arXiv:1810.01367.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["TOY_DATASETS", "toy", "toy_names"]



def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _shuffle(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[rng.permutation(len(x))]


def moons(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise 0.1 (scikit-learn's ``make_moons``)."""
    rng = _rng(seed)
    n_outer = n // 2
    n_inner = n - n_outer
    t_outer = np.linspace(0, math.pi, n_outer)
    t_inner = np.linspace(0, math.pi, n_inner)
    outer = np.stack([np.cos(t_outer), np.sin(t_outer)], axis=1)
    inner = np.stack([1 - np.cos(t_inner), 0.5 - np.sin(t_inner)], axis=1)
    x = np.concatenate([outer, inner]) + 0.1 * rng.standard_normal((n, 2))
    return _shuffle(x, rng)


def circles(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Two concentric circles, radii 1 and 0.5, noise 0.08 (scikit-learn's ``make_circles``)."""
    rng = _rng(seed)
    n_outer = n // 2
    n_inner = n - n_outer
    t_outer = np.linspace(0, 2 * math.pi, n_outer, endpoint=False)
    t_inner = np.linspace(0, 2 * math.pi, n_inner, endpoint=False)
    outer = np.stack([np.cos(t_outer), np.sin(t_outer)], axis=1)
    inner = 0.5 * np.stack([np.cos(t_inner), np.sin(t_inner)], axis=1)
    x = np.concatenate([outer, inner]) + 0.08 * rng.standard_normal((n, 2))
    return _shuffle(x, rng)


def eight_gaussians(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Eight Gaussians (std 0.5/√2) centred on a circle of radius 4/√2."""
    rng = _rng(seed)
    angles = np.arange(8) * (2 * math.pi / 8)
    centers = 4 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    which = rng.integers(0, 8, size=n)
    x = centers[which] + 0.5 * rng.standard_normal((n, 2))
    return x / math.sqrt(2)


def checkerboard(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Uniform on the black squares of a 4×4 checkerboard covering ``[-4, 4]²``."""
    rng = _rng(seed)
    x1 = rng.uniform(-2, 2, size=n)
    x2 = rng.uniform(0, 1, size=n) - 2 * rng.integers(0, 2, size=n) + np.floor(x1) % 2
    return 2 * np.stack([x1, x2], axis=1)


def pinwheel(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Five curved arms: radial noise 0.3, tangential noise 0.1, twisted at rate 0.25."""
    rng = _rng(seed)
    arms, rate = 5, 0.25
    base_angles = np.arange(arms) * (2 * math.pi / arms)
    which = rng.integers(0, arms, size=n)
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    feats[:, 0] += 1.0
    angle = base_angles[which] + rate * np.exp(feats[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    x = np.stack([cos * feats[:, 0] - sin * feats[:, 1], sin * feats[:, 0] + cos * feats[:, 1]],
                 axis=1)
    return 2 * x


def two_spirals(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Two interleaved Archimedean spirals with uniform jitter."""
    rng = _rng(seed)
    half = n // 2
    t = np.sqrt(rng.uniform(size=n)) * 3 * math.pi
    sign = np.where(np.arange(n) < half, 1.0, -1.0)
    x = sign[:, None] * np.stack([-np.cos(t) * t, np.sin(t) * t], axis=1)
    x = x + rng.uniform(size=(n, 2)) * 0.5
    return _shuffle(x / 3, rng)


def rings(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """Four concentric rings (radii 1, 2, 3, 4 before scaling) with Gaussian noise."""
    rng = _rng(seed)
    which = rng.integers(0, 4, size=n)
    radius = (which + 1).astype(np.float64)
    angle = rng.uniform(0, 2 * math.pi, size=n)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = x + 0.08 * rng.standard_normal((n, 2))
    return x * (3.0 / 4.0)


def swissroll(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """The 2-D swiss roll (scikit-learn's ``make_swiss_roll`` seen from above, noise 1, /5)."""
    rng = _rng(seed)
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    x = x + rng.standard_normal((n, 2))
    return x / 5


TOY_DATASETS: dict[str, Callable[..., np.ndarray]] = {
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "2spirals": two_spirals,
    "rings": rings,
    "moons": moons,
    "circles": circles,
    "swissroll": swissroll,
}
"""The 2-D toy densities by name: ``TOY_DATASETS[name](n, seed)`` draws ``n`` points.

:func:`toy` looks names up here (case-insensitively) and checks its arguments.
"""


def toy_names() -> list[str]:
    """Names of the 2-D toy densities.

    Returns:
        The names, in registry order (``8gaussians``, ``checkerboard``, ...).
    """
    return list(TOY_DATASETS)


def toy(name: str, n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """``n`` points from the toy density ``name``, as a float64 array ``(n, 2)``.

    Args:
        name: one of ``toy_names()`` (case-insensitive).
        n: number of points.
        seed: an integer seed, a NumPy ``Generator``, or None (fresh entropy).

    Returns:
        A float64 array ``(n, 2)``; ``pf.fit`` accepts it as it is.

    Raises:
        ValueError: unknown name or negative ``n``.

    Example:
        >>> import pushforward as pf
        >>> pf.data.toy("moons", 5, seed=0).shape
        (5, 2)
    """
    key = str(name).lower()
    if key not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return np.asarray(TOY_DATASETS[key](n, seed), dtype=np.float64)
