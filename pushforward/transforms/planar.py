"""Planar and radial flows (Rezende & Mohamed, 2015), plain and conditional on a context.

Both are residual maps ``x = z + (something)``. Planar has no closed-form inverse: it is
inverted numerically by a bracketed, safeguarded Newton iteration on one scalar per sample.
Radial inverts in closed form through a scalar quadratic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Transform
from pushforward.nn import MLP
from pushforward.specs import serializable

__all__ = ["Planar", "Radial"]

# m(c) = 0 for c = log(e − 1): wᵀu = c makes û = 0, the identity.
_IDENTITY = math.log(math.e - 1)
_V_INIT = 1e-2


class _Parameters(nn.Module):
    """Free parameters, optionally shifted by a network of the context (one row per sample).

    ``params(context)`` returns a ``(batch or 1, n)`` tensor: the free vector ``θ`` when
    unconditional, ``θ + g(context)`` when conditional (``g`` an MLP with a zero-initialised last
    layer, so a fresh conditional layer equals its unconditional counterpart).
    """

    def __init__(
        self,
        initial: Tensor,
        context: int,
        hidden: Sequence[int],
        activation: str | Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        self.free = nn.Parameter(initial.clone())
        self.net = (
            MLP(context, initial.numel(), hidden, activation, zero_last=True) if context else None
        )

    def forward(self, context: Tensor | None, like: Tensor) -> Tensor:
        free = self.free.to(like.dtype).unsqueeze(0)
        if self.net is None:
            return free
        if context is None:
            raise ValueError("this conditional layer needs a context")
        return free + self.net(context.to(like.dtype))


def _planar_root(
    y: Tensor, a: Tensor, slope: Tensor, b: Tensor, max_iter: int = 200
) -> Tensor:
    """Solve ``g(α) = α + a·tanh(α + b) − y = 0`` for α, elementwise, to round-off.

    ``g'(α) = tanh²(α+b) + slope·sech²(α+b)`` with ``slope = 1 + a > 0``, so ``g`` is strictly
    increasing and the root lies in ``[y − |a|, y + |a|]`` (because ``|tanh| ≤ 1``). Newton steps
    that leave the current bracket, or shrink too slowly, are replaced by bisection (rtsafe), so
    the bracket shrinks geometrically; converged entries are frozen while the others iterate.
    """
    lo = y - a.abs()
    hi = y + a.abs()
    alpha = y - a * torch.tanh(y + b)  # one fixed-point step: a good start when |a| is small
    alpha = torch.minimum(torch.maximum(alpha, lo), hi)
    eps = torch.finfo(y.dtype).eps
    active = torch.ones_like(y, dtype=torch.bool)
    dx = dx_old = hi - lo
    for _ in range(max_iter):
        t = torch.tanh(alpha + b)
        g = alpha + a * t - y
        dg = t * t + slope * (1 - t * t)
        # Update the bracket with the sign of g (g increasing).
        lo = torch.where(g < 0, alpha, lo)
        hi = torch.where(g > 0, alpha, hi)
        newton = alpha - g / dg
        # Newton only when it stays inside the bracket and converges fast enough (its step is
        # at most half the step before last, as in rtsafe); bisection otherwise, so oscillating
        # Newton iterates cannot stall the bracket.
        fast = 2 * (newton - alpha).abs() <= dx_old
        use_newton = (newton > lo) & (newton < hi) & torch.isfinite(newton) & fast
        nxt = torch.where(use_newton, newton, 0.5 * (lo + hi))
        dx_old, dx = dx, (nxt - alpha).abs()
        # Converged (α is kept): g at its evaluation noise, or a Newton step at α's round-off;
        # or the bracket itself is at round-off (its midpoint is taken).
        tol = 4 * eps * (1 + alpha.abs())
        settled = (g.abs() <= 4 * eps * (alpha.abs() + (a * t).abs() + y.abs())) | (
            (newton - alpha).abs() <= tol
        )
        nxt = torch.where(settled, alpha, nxt)
        done = settled | ((hi - lo) <= tol)
        alpha = torch.where(active, nxt, alpha)  # converged entries stay where they are
        active = active & ~done
        if not bool(active.any()):
            break
    return alpha


@serializable("planar")
class Planar(Transform):
    """Planar flow ``x = z + û · tanh(wᵀz + b)`` (Rezende & Mohamed, 2015).

    Invertibility needs ``wᵀû > −1``; it holds for every parameter value through the
    reparametrisation ``û = u + (m(wᵀu) − wᵀu) · w / ‖w‖²``, ``m(a) = −1 + softplus(a)``, so
    ``wᵀû = m(wᵀu)``. The free parameter is ``v = u − c·w/‖w‖²`` with ``c = log(e − 1)``
    (``m(c) = 0``), so ``v = 0`` is exactly the identity whatever ``w`` and ``b`` are; layers
    start at a small ``v``, and rescaling ``(v, w, b)`` keeps them well conditioned.

    ``ladj = log|1 + tanh'(wᵀz + b) · wᵀû|``, computed as
    ``log(tanh² + softplus(wᵀu) · sech²)`` (evaluated at ``wᵀz + b``), which stays finite even when
    ``wᵀû`` rounds to −1.

    Inverse (numerical, ``analytic_inverse = False``): with ``α = wᵀz`` the map gives
    ``wᵀx = α + wᵀû · tanh(α + b)``, strictly increasing in ``α``; ``α`` lies in
    ``[wᵀx − |wᵀû|, wᵀx + |wᵀû|]`` and is found by safeguarded Newton/bisection to float64
    round-off, then ``z = x − û · tanh(α + b)``. The inverse is differentiable: the root is found
    without gradient and one Newton step is re-evaluated with gradient, which gives the
    implicit-function gradient ``∂α/∂θ = −(∂g/∂θ) / g'(α)``.

    With ``context_features > 0`` a small MLP maps the context to offsets of ``(u, w, b)``, per
    sample; the reparametrisation then applies per sample.

    Args:
        features: the dimension ``d``.
        context_features: width of the context (0: unconditional).
        hidden: hidden widths of the context network.
        activation: activation of the context network.
        context: older spelling of ``context_features`` (kept as an alias).

    References:
        Variational Inference with Normalizing Flows, Rezende & Mohamed, 2015, arXiv:1505.05770.

    Example:
        >>> import torch
        >>> t = Planar(3)
        >>> x, ladj = t(torch.randn(4, 3))
        >>> z, ladj_inv = t.inverse(x)
        >>> bool(torch.allclose(t(z)[0], x, atol=1e-5))
        True
    """

    analytic_inverse = False

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden: Sequence[int] = (32,),
        activation: str | Callable[[], nn.Module] = "tanh",
        *,
        context: int | None = None,
    ) -> None:
        d = _v.check_int(features, "Planar", "features", type_error=False)
        super().__init__(d, context_features=_v.context_width(context_features, context,
                                                               "Planar"))
        self.features = d
        # v = 0 is the identity (see _unpack); a small v breaks the symmetry between layers.
        w = torch.randn(d) / d**0.5
        w = w / w.norm().clamp_min(1e-3) if d == 1 else w  # ‖w‖ well away from 0
        v = _V_INIT * torch.randn(d)
        initial = torch.cat([v, w, torch.zeros(1)])
        self.params = _Parameters(initial, self.context_features, hidden, activation)

    def _unpack(self, context: Tensor | None, like: Tensor) -> tuple[Tensor, ...]:
        """``(û, w, b, wᵀû, softplus(wᵀu))``, each with a leading batch (or 1) dimension."""
        theta = self.params(context if self.context_features else None, like)
        d = self.features
        v, w, b = theta[:, :d], theta[:, d : 2 * d], theta[:, 2 * d]
        # u = v + c·w/‖w‖² with c = log(e − 1), so wᵀu = wᵀv + c and
        # û = u + (m(wᵀu) − wᵀu)·w/‖w‖² = v + (m(wᵀv + c) − wᵀv)·w/‖w‖².
        wv = (w * v).sum(-1)
        slope = F.softplus(wv + _IDENTITY)  # 1 + wᵀû = softplus(wᵀu)
        wu_hat = slope - 1
        norm2 = (w * w).sum(-1).clamp_min(torch.finfo(like.dtype).tiny)
        u_hat = v + ((wu_hat - wv) / norm2).unsqueeze(-1) * w
        # softplus underflows to 0 for wᵀu < −745 (float64); keep the slope positive.
        slope = slope.clamp_min(torch.finfo(like.dtype).tiny)
        return u_hat, w, b, wu_hat, slope

    @staticmethod
    def _ladj(t: Tensor, slope: Tensor) -> Tensor:
        # 1 + (1 − t²)(slope − 1) = t² + slope·(1 − t²)
        return torch.log(t * t + slope * (1 - t * t))

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, _, slope = self._unpack(context, z)
        t = torch.tanh((w * z).sum(-1) + b)
        return z + u_hat * t.unsqueeze(-1), self._ladj(t, slope)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, a, slope = self._unpack(context, x)
        y = (w * x).sum(-1)
        with torch.no_grad():
            shape = y.shape
            alpha0 = _planar_root(
                y.detach(), a.detach().expand(shape), slope.detach().expand(shape),
                b.detach().expand(shape),
            )
        # One Newton step with gradient: same value at the root, implicit-function gradient.
        t0 = torch.tanh(alpha0 + b)
        g = alpha0 + a * t0 - y
        dg = (t0 * t0 + slope * (1 - t0 * t0)).detach()
        alpha = alpha0 - g / dg
        z = x - u_hat * torch.tanh(alpha + b).unsqueeze(-1)
        # Iterative refinement in z (value only): the Jacobian I + s·û wᵀ (s = sech²) stretches
        # by up to 1 + wᵀû along w, which amplifies the rounding of α; one or two solves of
        # J δ = x − f(z) (Sherman–Morrison) bring the residual down to f's own round-off.
        with torch.no_grad():
            refined = z.detach()
            for _ in range(2):
                t = torch.tanh((w * refined).sum(-1) + b)
                s = 1 - t * t
                r = x - (refined + u_hat * t.unsqueeze(-1))
                coef = s * (w * r).sum(-1) / (t * t + slope * s)
                refined = refined + r - u_hat * coef.unsqueeze(-1)
        z = z + (refined - z.detach())
        t = torch.tanh((w * z).sum(-1) + b)
        return z, -self._ladj(t, slope)


@serializable("radial")
class Radial(Transform):
    """Radial flow ``x = z + β h(α, r) (z − z₀)``, ``h = 1/(α + r)``, ``r = ‖z − z₀‖``.

    ``α = softplus(α̂) > 0`` and ``β = −α + softplus(β̂) > −α`` by parametrisation, which makes the
    map invertible. With ``h' = −1/(α + r)²``:
    ``ladj = (d − 1) log(1 + βh) + log(1 + βh + βh' r)``
    (the second term equals ``log(1 + αβ/(α + r)²)``).

    Inverse in closed form: taking norms, ``R = ‖x − z₀‖ = r (α + r + β)/(α + r)``, i.e.
    ``r² + (α + β − R) r − αR = 0``, whose non-negative root (computed without cancellation) gives
    ``z = z₀ + (x − z₀)(α + r)/(α + r + β)``.

    With ``context_features > 0`` a small MLP maps the context to offsets of ``(z₀, α̂, β̂)``
    per sample.

    Args:
        features: the dimension ``d``.
        context_features: width of the context (0: unconditional).
        hidden: hidden widths of the context network.
        activation: activation of the context network.
        context: older spelling of ``context_features`` (kept as an alias).

    References:
        Variational Inference with Normalizing Flows, Rezende & Mohamed, 2015, arXiv:1505.05770.

    Example:
        >>> import torch
        >>> t = Radial(2)
        >>> x, ladj = t(torch.randn(4, 2))
        >>> bool(torch.allclose(t(t.inverse(x)[0])[0], x, atol=1e-5))
        True
    """

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        hidden: Sequence[int] = (32,),
        activation: str | Callable[[], nn.Module] = "tanh",
        *,
        context: int | None = None,
    ) -> None:
        d = _v.check_int(features, "Radial", "features", type_error=False)
        super().__init__(d, context_features=_v.context_width(context_features, context,
                                                               "Radial"))
        self.features = d
        initial = torch.cat([
            torch.randn(d),                      # z0
            torch.zeros(1),                      # α̂: α = softplus(0) = log 2
            torch.zeros(1),                      # β̂: β = −α + softplus(0) = 0, the identity
        ])
        self.params = _Parameters(initial, self.context_features, hidden, activation)

    def _unpack(self, context: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        theta = self.params(context if self.context_features else None, like)
        d = self.features
        z0 = theta[:, :d]
        alpha = F.softplus(theta[:, d])
        beta = -alpha + F.softplus(theta[:, d + 1]).clamp_min(torch.finfo(like.dtype).tiny)
        return z0, alpha, beta

    def _ladj(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        return (self.features - 1) * torch.log1p(beta * h) + torch.log1p(alpha * beta * h * h)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._unpack(context, z)
        diff = z - z0
        r = diff.norm(dim=-1)
        x = z + (beta / (alpha + r)).unsqueeze(-1) * diff
        return x, self._ladj(r, alpha, beta)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._unpack(context, x)
        diff = x - z0
        big_r = diff.norm(dim=-1)
        c = alpha + beta - big_r
        root = torch.hypot(c, 2 * torch.sqrt(alpha * big_r))  # √(c² + 4αR), no overflow
        # r = (−c + root)/2, written without cancellation on either sign of c.
        r = torch.where(c > 0, 2 * alpha * big_r / (c + root), (root - c) / 2)
        z = z0 + ((alpha + r) / (alpha + r + beta)).unsqueeze(-1) * diff
        return z, -self._ladj(r, alpha, beta)
