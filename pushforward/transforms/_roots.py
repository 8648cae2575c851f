"""Elementwise root finding for increasing scalar functions (numerical inverses).

``solve_increasing(f, target, lo, hi)`` finds ``u`` with ``f(u) = target`` elementwise, where
``f`` is strictly increasing and returns ``(value, derivative)``. It expands the bracket until it
holds the root, then runs a safeguarded Newton iteration (a Newton step when it stays inside the
bracket, bisection otherwise), so it always converges, and converges quadratically near the
root. The result is computed without gradients; ``newton_attach`` re-attaches the implicit
gradient (one Newton step from the detached root, exact to first order by the implicit function
theorem).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Increasing = Callable[[Tensor], tuple[Tensor, Tensor]]


def _tolerance(like: Tensor) -> float:
    return 4 * torch.finfo(like.dtype).eps


@torch.no_grad()
def solve_increasing(
    f: Increasing,
    target: Tensor,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
    max_iter: int = 200,
) -> Tensor:
    """Solve ``f(u) = target`` elementwise for a strictly increasing ``f``.

    Args:
        f: maps ``u`` to ``(f(u), f'(u))``, elementwise, same shape as ``target``.
        target: the right-hand side.
        lo: a lower guess of the root (default ``target − 1``); the bracket is widened until
            ``f(lo) ≤ target``.
        hi: an upper guess (default ``target + 1``), widened until ``f(hi) ≥ target``.
        max_iter: the largest number of safeguarded Newton iterations.

    Returns:
        ``u`` with ``f(u) = target`` to round-off (detached).

    Raises:
        ValueError: the bracket could not be found: in this dtype ``f`` does not reach
            ``target`` (an input or a conditioner output too large to resolve).
    """
    target = target.detach()
    lo = (target - 1) if lo is None else lo.detach().clone()
    hi = (target + 1) if hi is None else hi.detach().clone()
    step = torch.ones_like(target)
    for _ in range(64):  # widen: after k rounds the bracket has grown by 2^k
        below = f(lo)[0] > target
        above = f(hi)[0] < target
        if not (below.any() or above.any()):
            break
        lo = torch.where(below, lo - step, lo)
        hi = torch.where(above, hi + step, hi)
        step = step * 2
    else:
        raise ValueError(
            f"solve_increasing: could not bracket the root in {target.dtype}: the input or the "
            "conditioner's output is too large for this dtype to resolve (largest |target| "
            f"{float(target.abs().max()):.3g})"
        )
    u = 0.5 * (lo + hi)
    tol = _tolerance(target)
    for _ in range(max_iter):
        value, slope = f(u)
        residual = value - target
        lo = torch.where(residual < 0, u, lo)
        hi = torch.where(residual > 0, u, hi)
        newton = u - residual / slope
        inside = (newton > lo) & (newton < hi) & torch.isfinite(newton)
        new = torch.where(inside, newton, 0.5 * (lo + hi))
        scale = 1 + new.abs()
        done = ((new - u).abs() <= tol * scale) | ((hi - lo) <= tol * scale) | (residual == 0)
        u = torch.where(residual == 0, u, new)
        if bool(done.all()):
            break
    return u


def newton_attach(u: Tensor, value: Tensor, slope: Tensor, target: Tensor) -> Tensor:
    """One Newton step ``u − (f(u) − target)/f'(u)`` from a detached root ``u``.

    ``value = f(u)`` and ``target`` carry the graph; ``slope`` is detached. The value is ``u``
    (to round-off) and the gradient is the implicit one, ``du = (d target − ∂f) / f'``.
    """
    return u - (value - target) / slope.detach()
