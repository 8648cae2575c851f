"""The continuous normalizing flow transform (neural ODE with its log-density, SPEC §3)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.continuous.dynamics import CNFDynamics, FieldDynamics, SolveRecord
from pushforward.continuous.paths import ProbabilityPath, make_path
from pushforward.continuous.solvers import (
    FIXED_METHODS,
    check_grid,
    check_method,
    check_steps,
    check_tolerance,
    default_tolerances,
    grid_options,
    solve,
    solver_settings,
)
from pushforward.continuous.traces import NOISES, sample_noise
from pushforward.core import Transform
from pushforward.specs import serializable

__all__ = ["CNF", "TRACES"]

TRACES = ("exact", "hutchinson")
"""Divergence estimators of ``CNF(trace=...)``: exact (``d`` VJPs) or Hutchinson (unbiased)."""


def _weight(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"CNF: {name} must be a finite number >= 0, got {value}")
    return value


@serializable("cnf")
class CNF(Transform):
    """Continuous normalizing flow: the time-``t1`` map of a neural ODE.

    Forward (generative, ``z -> x``): solve ``dz_t/dt = f(t, z_t, c)`` from ``z_0 = z`` to
    ``x = z_{t1}``, and, jointly with the state, ``ladj = log|det ∂x/∂z| = ∫₀^{t1} tr(∂f/∂z_t) dt``
    (Liouville's formula). Inverse (numerical, ``x -> z``): the same ODE from ``t1`` back to 0,
    whose accumulated trace is ``log|det ∂z/∂x| = −ladj``. The trace is exact (one
    vector-Jacobian product per dimension, right for small ``d``) or Hutchinson's estimate
    ``εᵀ(∂f/∂z)ε`` with one noise ``ε`` per solve (``exact_ladj`` is then False: ``ladj`` is an
    unbiased estimate and ``log_prob`` an unbiased estimate of the log-density).

    Both directions are numerical, so ``analytic_inverse`` is False: the round trip is exact up
    to the solver's tolerances. Assumes the field treats the samples of a batch independently.

    RNODE regularisation (``kinetic``/``jacobian`` > 0) integrates, as extra ODE states,
    ``K = ∫‖f‖² dt`` and ``J = ∫‖∂f/∂z‖_F² dt`` (under Hutchinson ``‖εᵀ∂f/∂z‖²`` with the same
    ``ε``; under the exact trace the exact Frobenius norm, free from the same products);
    ``regularization()`` then returns ``kinetic · mean(K) + jacobian · mean(J)`` of the last
    solve, which ``pushforward.fit`` adds to the loss. These states are left out of the
    solver's error control.

    Flow matching (``pushforward.fit(..., objective="flow-matching")``) trains the field
    without solving: ``velocity(t, x, context)`` is the field on the path's time ``t ∈ [0, 1]``
    (``t1 · f(t1 · t, x, c)``, the same ODE as the solve, rescaled) and ``path`` the conditional
    probability path it regresses on (``pushforward.continuous.paths``).

    Solver choice: an adaptive method (``dopri5``) with ``rtol``/``atol``, or a fixed-grid one
    (``rk4``, ``euler``, ``midpoint``...) with ``steps=N`` equal steps over ``[0, t1]``
    (``nfe`` = N × stages). ``solver(...)`` overrides these for the calls inside a ``with``
    block, e.g. ``with cnf.solver(method="rk4", steps=20): flow.sample(1000)``.

    ``torch.func`` (``jacrev``, ``vmap``): supported with a fixed-grid solver and no adjoint
    only (``supports_torch_func``); torchdiffeq's adaptive steps and adjoint are
    ``autograd.Function`` classes without ``torch.func`` support, so the call raises
    ``NotImplementedError`` there.

    Per-solve extras are reset at the start of each call: ``nfe`` (= ``nfe_forward``, field
    evaluations made by the solver, rejected steps included), ``nfe_backward`` (evaluations
    made by the adjoint backward pass; 0 with direct backpropagation, which re-uses the
    forward graph) and the regulariser.

    Args:
        field: any ``nn.Module`` computing ``dz/dt = field(t, z)`` (``field(t, z, context)``
            when ``context_features > 0``), ``t`` a 0-d tensor, ``z`` ``(batch, *event)``.
        features: number of data features (or an event shape, without augmentation).
        trace: ``"exact"`` or ``"hutchinson"``.
        noise: Hutchinson's noise, ``"gaussian"`` or ``"rademacher"``.
        t1: integration time ``T > 0``.
        rtol: solver relative tolerance; None: 1e-8 in float64, 1e-5 otherwise.
        atol: solver absolute tolerance; None: 1e-10 in float64, 1e-5 otherwise.
        method: a torchdiffeq solver (``dopri5``, ``bosh3``, ``rk4`` with
            ``options={"step_size": h}``, ...).
        options: extra solver options for torchdiffeq.
        steps: number of equal steps of a fixed-grid method over ``[0, t1]``; None: the
            method's own options (a fixed-grid method then needs ``options["step_size"]``).
        adjoint: gradients by the adjoint ODE (``odeint_adjoint``; memory independent of the
            number of steps) instead of backpropagating through the solver.
        kinetic: RNODE weight ``λ_K`` of the kinetic energy.
        jacobian: RNODE weight ``λ_J`` of the Jacobian Frobenius norm.
        augment: number ``k`` of augmented dimensions: the transform then acts on
            ``features + k`` dimensions (its ``event_shape``), and ``field`` must map that
            space. Pair it with ``pushforward.continuous.AugmentedFlow`` to get a density on
            the first ``features`` dimensions.
        context_features: width of the context the field reads; None: the field's own
            ``context_features`` attribute, else 0.
        path: the conditional probability path flow matching trains on: ``"cond-ot"``
            (``CondOTPath()``, the default), ``"vp"`` (``VPPath()``) or a path object.

    Raises:
        TypeError: ``field`` is not an ``nn.Module``.
        ValueError: an unknown trace, noise, method or path, a non-positive ``t1``, tolerance
            or step count, a fixed-grid method without ``steps`` or a step size, a negative
            weight or augmentation.

    References:
        Neural ordinary differential equations. R. T. Q. Chen, Y. Rubanova, J. Bettencourt,
        D. Duvenaud, 2018. arXiv:1806.07366.
        FFJORD: Free-form continuous dynamics for scalable reversible generative models.
        W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, 2018.
        arXiv:1810.01367.
        How to train your neural ODE: the world of Jacobian and kinetic regularization.
        C. Finlay, J.-H. Jacobsen, L. Nurbekyan, A. M. Oberman, 2020. arXiv:2002.02798.
        Augmented neural ODEs. E. Dupont, A. Doucet, Y. W. Teh, 2019. arXiv:1904.01681.

    Example:
        >>> import torch, pushforward as pf
        >>> class Linear(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.A = torch.nn.Parameter(torch.tensor([[0.1, 0.5], [-0.3, -0.2]]))
        ...     def forward(self, t, z):
        ...         return z @ self.A.T
        >>> cnf = pf.continuous.CNF(Linear(), 2).double()
        >>> x, ladj = cnf(torch.randn(3, 2, dtype=torch.float64))
        >>> torch.allclose(ladj, torch.full((3,), -0.1, dtype=torch.float64))  # t1 · tr A
        True
        >>> cnf.nfe > 0
        True
    """

    analytic_inverse = False

    def __init__(
        self,
        field: nn.Module,
        features: int | Sequence[int],
        trace: str = "exact",
        noise: str = "gaussian",
        t1: float = 1.0,
        rtol: float | None = None,
        atol: float | None = None,
        method: str = "dopri5",
        options: dict | None = None,
        adjoint: bool = False,
        kinetic: float = 0.0,
        jacobian: float = 0.0,
        augment: int = 0,
        context_features: int | None = None,
        steps: int | None = None,
        path: str | ProbabilityPath = "cond-ot",
    ) -> None:
        if not isinstance(field, nn.Module):
            raise TypeError(f"CNF: field must be an nn.Module, got {type(field).__name__}")
        if trace not in TRACES:
            raise ValueError(f"CNF: unknown trace {trace!r}; choose one of {', '.join(TRACES)}")
        if noise not in NOISES:
            raise ValueError(f"CNF: unknown noise {noise!r}; choose one of {', '.join(NOISES)}")
        augment = int(augment)
        if augment < 0:
            raise ValueError(f"CNF: augment must be >= 0, got {augment}")
        data_shape = _v.as_shape(features)
        if augment and len(data_shape) != 1:
            raise ValueError(
                f"CNF: augmentation needs vector data (features an int), got shape {data_shape}"
            )
        shape = (data_shape[0] + augment,) if augment else data_shape
        if context_features is None:
            context_features = int(getattr(field, "context_features", 0) or 0)
        super().__init__(shape, context_features=context_features)
        self.field = field
        self.features = data_shape[0] if len(data_shape) == 1 else data_shape
        self.augment = augment
        self.trace = trace
        self.noise = noise
        if t1 is None:
            raise ValueError("CNF: t1 must be a positive finite number, got None")
        self.t1 = float(check_tolerance("t1", t1, "CNF"))  # type: ignore[arg-type]
        self.rtol = check_tolerance("rtol", rtol, "CNF")
        self.atol = check_tolerance("atol", atol, "CNF")
        self.method = check_method(method)
        self.options = dict(options or {})
        self.steps = check_steps(steps, "CNF")
        check_grid(self.method, self.steps, self.options, "CNF")
        self.path = make_path(path)
        self.adjoint = bool(adjoint)
        self.kinetic = _weight("kinetic", kinetic)
        self.jacobian = _weight("jacobian", jacobian)
        self.exact_ladj = trace == "exact"
        self.__dict__["_record"] = SolveRecord()

    @property
    def supports_torch_func(self) -> bool:  # type: ignore[override]
        """Whether forward/inverse run inside ``torch.func`` transforms (``jacrev``, ``vmap``).

        Only with a fixed-grid solver and without the adjoint: torchdiffeq's adaptive steps and
        its adjoint are ``autograd.Function`` classes that ``torch.func`` cannot trace. Under
        ``torch.func`` use ``with cnf.solver(method="rk4", steps=N):``.
        """
        return self.method in FIXED_METHODS and not self.adjoint

    # -- per-solve extras ---------------------------------------------------------------------
    @property
    def nfe(self) -> int:
        """Field evaluations made by the solver in the last solve (= ``nfe_forward``)."""
        return self.nfe_forward

    @property
    def nfe_forward(self) -> int:
        """Field evaluations made while solving, in the last solve (0 before any)."""
        dynamics = self._record.dynamics
        return 0 if dynamics is None else dynamics.nfe_forward

    @property
    def nfe_backward(self) -> int:
        """Field evaluations made by the adjoint backward pass of the last solve (so far)."""
        dynamics = self._record.dynamics
        return 0 if dynamics is None else dynamics.nfe_backward

    @property
    def regularizing(self) -> bool:
        """Whether solves integrate the RNODE states (a weight is positive)."""
        return self.kinetic > 0 or self.jacobian > 0

    def regularization(self) -> Tensor:
        """RNODE penalty ``λ_K·mean ∫‖f‖²dt + λ_J·mean ∫‖∂f/∂z‖_F²dt`` of the last solve.

        A differentiable scalar; a zero tensor when both weights are 0 or before any solve.
        """
        record = self._record
        if not self.regularizing or record.kinetic is None or record.frobenius is None:
            anchor = next(self.field.parameters(), None)
            if anchor is None:
                return torch.zeros(())
            return anchor.new_zeros(())
        penalty = record.kinetic.new_zeros(())
        if self.kinetic > 0:
            penalty = penalty + self.kinetic * record.kinetic.mean()
        if self.jacobian > 0:
            penalty = penalty + self.jacobian * record.frobenius.mean()
        return penalty

    def kinetic_energy(self) -> Tensor | None:
        """Per-sample ``∫‖f‖² dt`` of the last regularised solve, ``(batch,)`` (else None)."""
        return self._record.kinetic

    def jacobian_frobenius(self) -> Tensor | None:
        """Per-sample ``∫‖∂f/∂z‖_F² dt`` of the last regularised solve (else None)."""
        return self._record.frobenius

    # -- flow matching ------------------------------------------------------------------------
    def velocity(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The field on the path's time: ``v(t, x, c) = t1 · f(t1 · t, x, c)``, ``t ∈ [0, 1]``.

        The ODE the solves integrate, in the time of ``path`` (so ``dx/dt = v`` carries the base
        at ``t = 0`` to the model at ``t = 1``); differentiable in the field's parameters.

        Args:
            t: times, ``(batch,)`` (or a scalar, broadcast).
            x: points, ``(batch, *event_shape)``.
            context: ``(batch, context_features)`` when the CNF is conditional.

        Returns:
            ``(batch, *event_shape)``.

        Raises:
            ValueError: a shape mismatch, or a context missing or unexpected.
        """
        if x.dim() < 1 or tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"CNF.velocity: x must be (batch, *{tuple(self.event_shape)}), got "
                f"{tuple(x.shape)}"
            )
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"CNF.velocity: t must be ({x.shape[0]},), got {tuple(t.shape)}")
        if (context is None) != (self.context_features == 0):
            raise ValueError(
                f"CNF.velocity: built for context_features={self.context_features} but called "
                f"{'without' if context is None else 'with'} a context"
            )
        dynamics = CNFDynamics(self.field, None if context is None else context.to(x.dtype),
                               None, False)
        dynamics.nfe_forward = 2  # skip the first-call shape probe: checked here instead
        out = dynamics.evaluate(self.t1 * t, x)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"CNF.velocity: the field returned {got} for x of shape "
                             f"{tuple(x.shape)}")
        return self.t1 * out

    # -- solving ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def solver(
        self,
        method: str | None = None,
        steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> Iterator[CNF]:
        """Use another solver for the calls inside a ``with`` block (restored after).

        ``with cnf.solver(method="rk4", steps=20): x = flow.sample(1000)`` samples with 20
        fourth-order steps (80 field evaluations); ``with cnf.solver(rtol=1e-7, atol=1e-7):``
        tightens the adaptive solver. Arguments left None keep their current value; giving
        an adaptive ``method`` drops a fixed step count (``continuous.solvers.solver_settings``,
        shared with ``SphereCNF``).

        Raises:
            ValueError: an unknown method, a non-positive step count or tolerance, a
                fixed-grid method without steps.
        """
        with solver_settings(self, method, steps, rtol, atol):
            yield self

    def _tolerances(self, dtype: torch.dtype) -> tuple[float, float]:
        rtol, atol = default_tolerances(dtype)
        return (self.rtol or rtol, self.atol or atol)

    def _solver_options(self) -> dict:
        return grid_options(self.method, self.steps, self.options)

    def _solve(
        self, value: Tensor, context: Tensor | None, t0: float, t1: float, density: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """The state at ``t1`` and, with ``density``, the accumulated trace (else None)."""
        if density and torch.is_inference_mode_enabled():
            # the trace needs autograd: leave inference mode with ordinary copies of the inputs
            with torch.inference_mode(False), torch.no_grad():
                value = value.clone()
                context = None if context is None else context.clone()
                return self._solve(value, context, t0, t1)
        record = SolveRecord()
        self.__dict__["_record"] = record
        batch = value.shape[0]
        if not self.context_features:
            context = None
        elif context is not None:
            context = context.to(value.dtype)
        regularizing = density and self.regularizing
        dynamics: CNFDynamics
        if density:
            noise = sample_noise(value, self.noise) if self.trace == "hutchinson" else None
            dynamics = CNFDynamics(self.field, context, noise, regularizing)
        else:
            dynamics = FieldDynamics(self.field, context)
        record.dynamics = dynamics
        if batch == 0:
            return value, value.new_zeros(0)
        # the state, then the log-determinant and the two RNODE integrals where they are wanted
        integrals = 3 if regularizing else 1 if density else 0
        state = (value, *[value.new_zeros(batch)] * integrals)
        params: tuple[Tensor, ...] = tuple(self.field.parameters())
        if context is not None and context.requires_grad:
            params = (*params, context)
        rtol, atol = self._tolerances(value.dtype)
        try:
            out = solve(
                dynamics, state, t0, t1, rtol=rtol, atol=atol, method=self.method,
                options=self._solver_options(), adjoint=self.adjoint, adjoint_params=params,
                controlled=2 if density else 1,
            )
        finally:
            dynamics.solving = False
        if regularizing:
            sign = 1.0 if t1 > t0 else -1.0
            record.kinetic, record.frobenius = sign * out[2], sign * out[3]
        return out[0], (out[1] if density else None)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x, ladj = self._solve(z, context, 0.0, self.t1)
        return x, cast(Tensor, ladj)

    def _push(self, z: Tensor, context: Tensor | None) -> Tensor:
        # dz/dt alone: no trace, no autograd in the right-hand side
        return self._solve(z, context, 0.0, self.t1, density=False)[0]

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, ladj = self._solve(x, context, self.t1, 0.0)
        return z, cast(Tensor, ladj)

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        parts = [super().extra_repr(), f"trace={self.trace!r}", f"method={self.method!r}",
                 f"t1={self.t1}"]
        if self.steps is not None:
            parts.append(f"steps={self.steps}")
        parts.append(f"path={self.path!r}")
        if self.trace == "hutchinson":
            parts.append(f"noise={self.noise!r}")
        if self.rtol is not None or self.atol is not None:
            parts.append(f"rtol={self.rtol}, atol={self.atol}")
        if self.adjoint:
            parts.append("adjoint=True")
        if self.regularizing:
            parts.append(f"kinetic={self.kinetic}, jacobian={self.jacobian}")
        if self.augment:
            parts.append(f"augment={self.augment}")
        return ", ".join(p for p in parts if p)
