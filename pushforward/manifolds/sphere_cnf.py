"""A continuous normalizing flow on the sphere ``𝕊ⁿ⁻¹``, trained by Riemannian flow matching.

The field is a network on ambient coordinates projected to the tangent space,
``v(t, x) = (I − x̂x̂ᵀ) f(t, x̂, c)`` with ``x̂ = x/‖x‖``; the flow is the time-1 map of
``dx/dt = v(t, x)`` and its log volume ratio is the integral of the Riemannian divergence

    log R(z) = ∫₀¹ div_𝕊 v(t, x_t) dt,   div_𝕊 v = tr J − x̂ᵀ J x̂,

``J`` the ambient Jacobian of ``v`` (``n`` vector-Jacobian products).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.continuous.solvers import (
    check_grid,
    check_method,
    check_steps,
    check_tolerance,
    default_tolerances,
    grid_options,
    solve,
    solver_settings,
)
from pushforward.core import Transform
from pushforward.manifolds.geodesic import GeodesicPath
from pushforward.manifolds.spaces import Sphere
from pushforward.nn import activation as make_activation

__all__ = ["SphereCNF", "SphereField"]


def _unit(x: Tensor) -> Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class SphereField(nn.Module):
    """An MLP vector field on ``𝕊ⁿ⁻¹``: ``v(t, x, c) = (I − x̂x̂ᵀ) MLP([φ(x̂), γ(t), c])``.

    The MLP reads the unit point ``x̂`` (so ``v`` is constant along rays and tangent to every
    sphere around 0) with optional Fourier features
    ``φ(x̂) = [x̂, sin(2ʲx̂), cos(2ʲx̂)]_{j=0…F−1}`` (which let a small network resolve sharp
    densities), a time embedding ``γ(t) = [t, sin(kπt), cos(kπt)]_{k=1…K}`` and the context;
    smooth activations keep the field differentiable for the divergence.

    Args:
        n: ambient dimension.
        hidden: hidden widths.
        context_features: context width (0: unconditional).
        activation: a smooth activation (``silu``, ``tanh``, ``softplus``).
        time_frequencies: ``K``, sinusoidal time features besides ``t`` itself.
        frequencies: ``F``, octaves of Fourier features of ``x̂`` besides ``x̂`` itself.

    Example:
        >>> import torch
        >>> f = SphereField(3, hidden=(16,))
        >>> x = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
        >>> v = f(torch.rand(4), x)
        >>> bool((v * x).sum(-1).abs().max() < 1e-6)  # tangent
        True
    """

    def __init__(
        self,
        n: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        context_features: int = 0,
        activation: str = "silu",
        time_frequencies: int = 0,
        frequencies: int = 0,
    ) -> None:
        super().__init__()
        self.n = Sphere(n).n
        self.frequencies = int(frequencies)
        self.context_features = int(context_features)
        self.time_frequencies = int(time_frequencies)
        if min(self.context_features, self.time_frequencies, self.frequencies) < 0:
            raise ValueError("SphereField: context_features, time_frequencies and frequencies "
                             "must be >= 0")
        inputs = self.n * (1 + 2 * self.frequencies) + 1 + 2 * self.time_frequencies
        widths = [inputs + self.context_features,
                  *(int(h) for h in hidden)]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), make_activation(activation)]
        layers.append(nn.Linear(widths[-1], self.n))
        self.net = nn.Sequential(*layers)

    def embed_time(self, t: Tensor) -> Tensor:
        """``γ(t)``, shape ``(batch, 1 + 2K)``, from ``t`` of shape ``(batch, 1)``."""
        if not self.time_frequencies:
            return t
        k = torch.arange(1, self.time_frequencies + 1, dtype=t.dtype, device=t.device) * math.pi
        return torch.cat([t, torch.sin(k * t), torch.cos(k * t)], dim=-1)

    def embed_point(self, x_hat: Tensor) -> Tensor:
        """``φ(x̂)``, shape ``(batch, n(1 + 2F))``."""
        if not self.frequencies:
            return x_hat
        k = 2.0 ** torch.arange(self.frequencies, dtype=x_hat.dtype, device=x_hat.device)
        scaled = (x_hat.unsqueeze(-1) * k).flatten(1)
        return torch.cat([x_hat, torch.sin(scaled), torch.cos(scaled)], dim=-1)

    def forward(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The tangent field at ``x`` (``(batch, n)``) and times ``t`` (scalar or ``(batch,)``)."""
        if (context is None) != (self.context_features == 0):
            raise ValueError(
                f"SphereField: built for context_features={self.context_features} but called "
                f"{'without' if context is None else 'with'} a context"
            )
        x_hat = _unit(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
        parts = [self.embed_point(x_hat), self.embed_time(t.expand(x.shape[0], 1))]
        if context is not None:
            parts.append(context.to(x.dtype))
        return Sphere.to_tangent(x_hat, self.net(torch.cat(parts, dim=-1)))


def _steps(value: int | None) -> int | None:
    return check_steps(value, "SphereCNF")


def _check_grid(method: str, steps: int | None, options: dict) -> None:
    check_grid(method, steps, options, "SphereCNF")


class _Dynamics:
    """``(t, (x, ℓ)) -> (v, div_𝕊 v)`` for one solve, counting field evaluations.

    Without ``density``: ``(t, (x,)) -> (v,)``, no autograd.
    """

    def __init__(self, velocity: nn.Module, context: Tensor | None, density: bool = True
                 ) -> None:
        self.velocity = velocity
        self.context = context
        self.density = density
        self.nfe = 0

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.nfe += 1
        if not self.density:
            return (self.velocity(t.expand(state[0].shape[0]), state[0], self.context),)
        create_graph = torch.is_grad_enabled()
        x = state[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            v = self.velocity(t.expand(x.shape[0]), x, self.context)
            x_hat = _unit(x)
            trace = x.new_zeros(x.shape[0])
            normal = x.new_zeros(x.shape[0])
            for i in range(x.shape[1]):
                if not v.requires_grad:
                    break
                (row,) = torch.autograd.grad(v[:, i].sum(), x, create_graph=create_graph,
                                             retain_graph=True, allow_unused=True)
                if row is None:
                    continue
                trace = trace + row[:, i]
                normal = normal + x_hat[:, i] * (row * x_hat).sum(-1)
            divergence = trace - normal  # tr J − x̂ᵀ J x̂
        if not create_graph:
            v, divergence = v.detach(), divergence.detach()
        return v, divergence


class SphereCNF(Transform):
    """A continuous flow on ``𝕊ⁿ⁻¹``: the time-1 map of a tangent vector field.

    Forward (generative, ``z -> x``): solve ``dx/dt = v(t, x, c)`` from ``x_0 = z`` (base side,
    ``t = 0``) to ``x = x_1`` (data side, ``t = 1``) and, jointly, ``ladj = log R(z) =
    ∫₀¹ div_𝕊 v dt`` with ``div_𝕊 v = tr J − x̂ᵀJx̂`` (``J`` the ambient Jacobian of ``v``):
    the log differential volume ratio of the map, so ``log p(x) = log p_0(z) − ladj``.
    Inverse (numerical): the same ODE from 1 back to 0. The field is tangent, so the exact
    solution stays on the sphere; the numerical one is renormalised at the end (the drift is
    of the order of the solver's tolerance). ``analytic_inverse`` is False.

    Solver choice: an adaptive method (``dopri5``) with ``rtol``/``atol``, or a fixed-grid one
    (``rk4``, ``euler``, ``midpoint``) with ``steps=N`` equal steps; ``solver(...)`` overrides
    these inside a ``with`` block (``with cnf.solver(method="rk4", steps=20): flow.sample(n)``).
    ``supports_torch_func`` is False: the divergence takes ``torch.autograd.grad`` inside the
    solve, which ``torch.func`` transforms cannot trace.

    ``velocity(t, x, context)`` is the projected field exactly as integrated and ``path`` the
    geodesic conditional path: together they are what flow matching trains
    (``pf.fit(flow, data, objective="flow-matching")``).

    Args:
        n: ambient dimension (3 for ``S²``).
        field: the field network, ``field(t, x, context) -> (batch, n)``; its output is
            projected to the tangent space. None: a ``SphereField`` with the options below.
        hidden: hidden widths of the default field.
        context_features: context width (0: unconditional).
        activation: activation of the default field.
        time_frequencies: sinusoidal time features of the default field.
        frequencies: octaves of Fourier features of ``x̂`` in the default field.
        rtol: solver relative tolerance; None: 1e-8 in float64, 1e-5 otherwise.
        atol: solver absolute tolerance; None: 1e-10 in float64, 1e-5 otherwise.
        method: a torchdiffeq solver (``dopri5``; fixed-grid ones such as ``rk4`` need
            ``steps``).
        steps: number of equal steps of a fixed-grid method (None with adaptive ones).
        options: extra solver options.
        time_power: the exponent ``p`` of the path's training times ``t = 1 − (1 − u)^p``
            (``GeodesicPath``).

    References:
        Flow Matching on General Geometries. R. T. Q. Chen, Y. Lipman, 2024. arXiv:2302.03660.
        Riemannian Continuous Normalizing Flows. E. Mathieu, M. Nickel, 2020. arXiv:2006.10605.

    Example:
        >>> import torch
        >>> from pushforward.manifolds import SphereCNF, Sphere
        >>> cnf = SphereCNF(3, hidden=(16,)).double()
        >>> z = Sphere(3).project(torch.randn(5, 3, dtype=torch.float64))
        >>> x, ladj = cnf(z)
        >>> bool(((x.norm(dim=-1) - 1).abs() < 1e-12).all()), ladj.shape
        (True, torch.Size([5]))
    """

    analytic_inverse = False
    supports_torch_func = False

    def __init__(
        self,
        n: int,
        field: nn.Module | None = None,
        hidden: Sequence[int] = (512, 512, 512, 512),
        context_features: int = 0,
        activation: str = "silu",
        time_frequencies: int = 0,
        frequencies: int = 0,
        rtol: float | None = None,
        atol: float | None = None,
        method: str = "dopri5",
        steps: int | None = None,
        options: dict | None = None,
        time_power: float = 3.0,
    ) -> None:
        self.sphere = Sphere(n)
        super().__init__((self.sphere.n,), context_features=int(context_features))
        if field is None:
            field = SphereField(self.sphere.n, hidden, self.context_features, activation,
                                time_frequencies, frequencies)
        if not isinstance(field, nn.Module):
            raise TypeError(f"SphereCNF: field must be an nn.Module, got {type(field).__name__}")
        self.field = field
        self.n = self.sphere.n
        self.path = GeodesicPath(self.n, time_power)
        self.rtol = check_tolerance("rtol", rtol, "SphereCNF")
        self.atol = check_tolerance("atol", atol, "SphereCNF")
        self.method = check_method(method)
        self.options = dict(options or {})
        self.steps = _steps(steps)
        _check_grid(self.method, self.steps, self.options)
        self.__dict__["_last_nfe"] = 0

    @contextlib.contextmanager
    def solver(self, method: str | None = None, steps: int | None = None,
               rtol: float | None = None, atol: float | None = None) -> Iterator[SphereCNF]:
        """Use another solver for the calls inside a ``with`` block (restored after).

        Args:
            method: a torchdiffeq method (None: keep the current one).
            steps: equal steps of a fixed-grid method (None: keep; dropped by an adaptive
                ``method``).
            rtol: relative tolerance of an adaptive method (None: keep).
            atol: absolute tolerance of an adaptive method (None: keep).

        Raises:
            ValueError: an unknown method, a fixed-grid method without steps, a non-positive
                step count or tolerance (``continuous.solvers.solver_settings``, shared with
                ``CNF``).
        """
        with solver_settings(self, method, steps, rtol, atol):
            yield self

    @property
    def nfe(self) -> int:
        """Field evaluations made by the solver in the last solve."""
        return self.__dict__["_last_nfe"]

    def velocity(self, t: Tensor, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The tangent field ``v(t, x, c) = (I − x̂x̂ᵀ) field(t, x̂, c)``, shape ``(batch, n)``.

        Args:
            t: times, ``(batch,)`` in ``[0, 1]`` (or a scalar).
            x: points ``(batch, n)`` (normalised before use).
            context: ``(batch, context_features)`` or None.
        """
        if not self.context_features:
            context = None
        elif context is None:
            raise ValueError("SphereCNF: is conditional and needs a context")
        x_hat = _unit(x)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if context is None:
            out = self.field(t, x_hat)
        else:
            out = self.field(t, x_hat, context.to(x.dtype))
        return Sphere.to_tangent(x_hat, out)

    def _solve(self, value: Tensor, context: Tensor | None, t0: float, t1: float,
               density: bool = True) -> tuple[Tensor, Tensor | None]:
        """The point at ``t1`` and, with ``density``, ``∫ div_𝕊 v dt`` (else None)."""
        if density and torch.is_inference_mode_enabled():
            with torch.inference_mode(False), torch.no_grad():
                value = value.clone()
                context = None if context is None else context.clone()
                return self._solve(value, context, t0, t1)
        if not self.context_features:
            context = None
        elif context is not None:
            context = context.to(value.dtype)
        dynamics = _Dynamics(self.velocity, context, density)
        rtol, atol = default_tolerances(value.dtype)
        rtol, atol = self.rtol or rtol, self.atol or atol
        state = (value, value.new_zeros(value.shape[0])) if density else (value,)
        try:
            options = grid_options(self.method, self.steps, self.options)
            out = solve(dynamics, state, t0, t1, rtol=rtol, atol=atol, method=self.method,
                        options=options, controlled=1)
        finally:
            self.__dict__["_last_nfe"] = dynamics.nfe
        return _unit(out[0]), (out[1] if density else None)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x, ladj = self._solve(z, context, 0.0, 1.0)
        return x, cast(Tensor, ladj)

    def _push(self, z: Tensor, context: Tensor | None) -> Tensor:
        # the tangent field alone: no divergence, no autograd in the right-hand side
        return self._solve(z, context, 0.0, 1.0, density=False)[0]

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z, ladj = self._solve(x, context, 1.0, 0.0)
        return z, cast(Tensor, ladj)

    def _check_x(self, x: Tensor) -> None:
        if _v.is_validating():
            self.sphere.validate(x, owner="SphereCNF")

    def _check_z(self, z: Tensor) -> None:
        if _v.is_validating():
            self.sphere.validate(z, owner="SphereCNF")

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        parts = [super().extra_repr(), f"method={self.method!r}"]
        if self.steps is not None:
            parts.append(f"steps={self.steps}")
        if self.rtol is not None or self.atol is not None:
            parts.append(f"rtol={self.rtol}, atol={self.atol}")
        return ", ".join(p for p in parts if p)
