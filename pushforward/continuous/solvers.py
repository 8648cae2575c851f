"""ODE solving for the continuous flows: the one module that knows torchdiffeq.

``solve`` integrates a tuple of state tensors from ``t0`` to ``t1`` (either direction) with an
adaptive or fixed-grid solver and returns the state at ``t1``. With ``adjoint=True`` gradients
come from the adjoint ODE (Chen et al. 2018) instead of backpropagating through the solver's
steps; the tensors the dynamics read besides the state (the field's parameters, a context that
requires grad) must then be listed in ``adjoint_params``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from pushforward._validation import check_int, in_torch_func

__all__ = ["solve", "METHODS", "ADAPTIVE_METHODS", "default_tolerances", "check_method",
           "check_steps", "check_tolerance", "check_grid", "solver_settings", "grid_options"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = ("euler", "midpoint", "heun3", "rk4", "explicit_adams", "implicit_adams")
METHODS = ADAPTIVE_METHODS + FIXED_METHODS
"""The torchdiffeq solvers a ``CNF`` accepts, adaptive ones first.

Fixed-grid solvers need ``options={"step_size": h}``.
"""

Dynamics = Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]


def check_method(method: str) -> str:
    """Return ``method`` if torchdiffeq knows it; raise ``ValueError`` naming the choices."""
    if method not in METHODS:
        raise ValueError(f"unknown ODE solver {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_steps(value: int | None, owner: str) -> int | None:
    """A fixed-grid step count: a positive ``int`` or None.

    Raises:
        ValueError: anything else (the message starts with ``owner``).
    """
    return None if value is None else check_int(value, owner, "steps", type_error=False)


def check_tolerance(name: str, value: float | None, owner: str) -> float | None:
    """A solver tolerance (or end time): a positive finite number, or None.

    Raises:
        ValueError: anything else (the message starts with ``owner`` and names ``name``).
    """
    if value is None:
        return None
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{owner}: {name} must be a positive finite number, got {value}")
    return value


def check_grid(method: str, steps: int | None, options: dict, owner: str) -> None:
    """A fixed-grid ``method`` needs ``steps`` (or a ``step_size`` / ``grid_constructor``).

    Raises:
        ValueError: a fixed-grid method with none of them.
    """
    if method in FIXED_METHODS and steps is None and "step_size" not in options and (
            "grid_constructor" not in options):
        raise ValueError(
            f"{owner}: the fixed-grid solver {method!r} needs steps=N (or "
            "options={'step_size': h})"
        )


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` used when none is given: tight in float64, FFJORD's 1e-5 otherwise.

    Args:
        dtype: the state's dtype.

    Returns:
        ``(1e-8, 1e-10)`` in float64, ``(1e-5, 1e-5)`` otherwise.
    """
    if dtype == torch.float64:
        return 1e-8, 1e-10
    return 1e-5, 1e-5


def _leading_norm(k: int | None) -> Callable[[tuple[Tensor, ...]], Tensor]:
    """Mixed RMS norm (max over tensors) of the first ``k`` tensors of a state tuple.

    Computed without gradient: step-size control is not differentiated (torchdiffeq's own
    step-size update is gradient-free too, but its initial-step norm is not, and ``sqrt`` at a
    zero state, such as a log-determinant starting at 0, would give NaN gradients).
    """

    def norm(state: tuple[Tensor, ...]) -> Tensor:
        with torch.no_grad():
            return torch.stack([s.detach().pow(2).mean().sqrt() for s in state[:k]]).max()

    return norm


class _EqualGrid:
    """torchdiffeq grid constructor: ``steps`` equal steps between the two ends of ``t``."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, func: object, y0: Tensor, t: Tensor) -> Tensor:
        return torch.linspace(float(t[0]), float(t[-1]), self.steps + 1, dtype=t.dtype,
                              device=t.device)


def grid_options(method: str, steps: int | None, options: dict) -> dict:
    """The torchdiffeq options of a solve: ``options``, plus ``steps`` equal steps if fixed-grid.

    A grid constructor rather than ``step_size = |t1 − t0| / steps``, whose rounding can add a
    step of length ~0 (and its field evaluations).

    Args:
        method: the solver.
        steps: equal steps of a fixed-grid ``method`` (None: as ``options`` say).
        options: the flow's extra options (not modified).

    Returns:
        A new options dict.
    """
    options = dict(options)
    if steps is not None and method in FIXED_METHODS:
        options.pop("step_size", None)
        options["grid_constructor"] = _EqualGrid(steps)
    return options


@contextlib.contextmanager
def solver_settings(
    flow: Any,
    method: str | None = None,
    steps: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Iterator[None]:
    """Change a continuous flow's solver inside a ``with`` block; restore it after.

    The body of ``CNF.solver`` and ``SphereCNF.solver``: ``flow`` holds ``method``, ``steps``,
    ``rtol``, ``atol`` and ``options``. Arguments left None keep their current value; an
    adaptive ``method`` drops a fixed step count, and ``steps`` replaces an
    ``options["step_size"]``. Everything is checked before anything changes.

    Args:
        flow: the continuous transform (its class name starts the error messages).
        method: a torchdiffeq method (None: keep the current one).
        steps: equal steps of a fixed-grid method (None: keep, or drop for an adaptive one).
        rtol: relative tolerance of an adaptive method (None: keep).
        atol: absolute tolerance of an adaptive method (None: keep).

    Raises:
        ValueError: an unknown method, a fixed-grid method without steps, a non-positive step
            count or tolerance.
    """
    owner = type(flow).__name__
    saved = (flow.method, flow.steps, flow.rtol, flow.atol, flow.options)
    new_method = flow.method if method is None else check_method(method)
    if steps is not None:
        new_steps = check_steps(steps, owner)
    elif method is not None and new_method not in FIXED_METHODS:
        new_steps = None
    else:
        new_steps = flow.steps
    options = dict(flow.options)
    if steps is not None:
        options.pop("step_size", None)
    check_grid(new_method, new_steps, options, owner)
    new_rtol = check_tolerance("rtol", rtol, owner)
    new_atol = check_tolerance("atol", atol, owner)
    flow.method, flow.steps, flow.options = new_method, new_steps, options
    flow.rtol = flow.rtol if new_rtol is None else new_rtol
    flow.atol = flow.atol if new_atol is None else new_atol
    try:
        yield
    finally:
        flow.method, flow.steps, flow.rtol, flow.atol, flow.options = saved


def solve(
    dynamics: Dynamics,
    state: tuple[Tensor, ...],
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    options: dict | None = None,
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] = (),
    controlled: int | None = None,
) -> tuple[Tensor, ...]:
    """Integrate ``d state/dt = dynamics(t, state)`` from ``t0`` to ``t1``.

    Args:
        dynamics: ``(t, state) -> d state/dt``, ``t`` a 0-d tensor, ``state`` a tuple.
        state: the initial state, a tuple of tensors on one device and dtype.
        t0: start time.
        t1: end time (``t1 < t0`` integrates backwards).
        rtol: relative tolerance (adaptive methods).
        atol: absolute tolerance (adaptive methods).
        method: a torchdiffeq method name (``dopri5``, ``rk4``, ...).
        options: solver options passed to torchdiffeq (e.g. ``{"step_size": 0.05}`` for fixed
            grids).
        adjoint: backpropagate with the adjoint method (memory O(1) in the number of steps).
        adjoint_params: every tensor the dynamics differentiate into, besides the state.
        controlled: only the first ``controlled`` state tensors enter the adaptive error control
            (the others, e.g. running integrals of a regulariser, ride along); None: all.

    Returns:
        The state at ``t1``, a tuple like ``state``.
    """
    check_method(method)
    if (adjoint or method in ADAPTIVE_METHODS) and in_torch_func():
        raise NotImplementedError(
            f"ODE solve with {'the adjoint' if adjoint else f'the adaptive solver {method!r}'} "
            "cannot run inside a torch.func transform (jacrev, vmap): torchdiffeq implements it "
            "with autograd.Functions that torch.func cannot trace; use a fixed-grid solver "
            "without adjoint (e.g. with cnf.solver(method='rk4', steps=20): ...) or "
            "torch.autograd.functional.jacobian"
        )
    reference = state[0]
    times = torch.tensor([t0, t1], dtype=reference.dtype, device=reference.device)
    options = dict(options or {})
    fixed_grid = "step_size" in options or "grid_constructor" in options
    if method in FIXED_METHODS and not fixed_grid:
        raise ValueError(
            f"the fixed-grid solver {method!r} needs options={{'step_size': h}} (otherwise it "
            "takes a single step from t0 to t1)"
        )
    if method in ADAPTIVE_METHODS and "norm" not in options:
        options["norm"] = _leading_norm(controlled)
    try:
        out = _integrate(dynamics, state, times, rtol, atol, method, options, adjoint,
                         adjoint_params)
    except AssertionError as error:
        # torchdiffeq asserts when the adaptive step underflows (stiff or exploding dynamics,
        # usually an input or context far outside the training range).
        raise ValueError(f"ODE solver failed: {error} (input or context too extreme for the "
                         "dynamics; rescale it or use float64)") from error
    return tuple(s[-1] for s in out)


def _integrate(dynamics: Dynamics, state: tuple[Tensor, ...], times: Tensor, rtol: float,
               atol: float, method: str, options: dict, adjoint: bool,
               adjoint_params: Sequence[Tensor] | None) -> tuple[Tensor, ...]:
    import torchdiffeq

    if adjoint:
        params = tuple(p for p in adjoint_params if p.requires_grad)
        # Seminorm (Kidger et al. 2021): the parameter adjoints do not drive step-size control.
        adjoint_options = {**{k: v for k, v in options.items() if k != "norm"}, "norm": "seminorm"}
        if method in FIXED_METHODS:
            adjoint_options.pop("norm")
        out = torchdiffeq.odeint_adjoint(
            dynamics, state, times, rtol=rtol, atol=atol, method=method, options=options,
            adjoint_params=params, adjoint_options=adjoint_options,
        )
    else:
        out = torchdiffeq.odeint(
            dynamics, state, times, rtol=rtol, atol=atol, method=method, options=options
        )
    return out
