"""The manifolds of SPEC §4: the unit sphere ``𝕊ⁿ⁻¹`` and the open probability simplex ``Δⁿ⁻¹``.

Both live in ambient coordinates ``(batch, n)``; each has an idempotent projection, orthonormal
tangent bases, and a membership test with a tolerance whose failure message names the problem.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward._validation import InputOutsideDomain

__all__ = ["Sphere", "Simplex", "default_atol"]


def default_atol(dtype: torch.dtype) -> float:
    """Membership tolerance: ``1e-6`` in float64, ``1e-4`` in lower precision."""
    return 1e-6 if dtype == torch.float64 else 1e-4


def _check_points(x: object, n: int, owner: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"{owner}: points must be a floating-point tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != n:
        raise ValueError(f"{owner}: points must have shape (batch, {n}), got {tuple(x.shape)}")
    return x


class Sphere:
    """The unit sphere ``𝕊ⁿ⁻¹ = {x ∈ ℝⁿ : ‖x‖ = 1}``, an ``(n − 1)``-manifold.

    Args:
        n: the ambient dimension (``n = 3`` is the 2-sphere ``S²``).

    Example:
        >>> import torch
        >>> s = Sphere(3)
        >>> s.dim, round(s.log_volume, 6)  # log 4π
        (2, 2.531024)
        >>> s.contains(torch.tensor([[0.6, 0.8, 0.0], [1.0, 1.0, 0.0]])).tolist()
        [True, False]
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or int(n) != n or int(n) < 2:
            raise ValueError(f"Sphere: ambient dimension n must be an integer >= 2, got {n!r}")
        self.n = int(n)
        self.dim = self.n - 1

    @property
    def log_volume(self) -> float:
        """``log |𝕊ⁿ⁻¹| = log 2 + (n/2) log π − log Γ(n/2)``."""
        return math.log(2) + 0.5 * self.n * math.log(math.pi) - math.lgamma(0.5 * self.n)

    def project(self, z: Tensor) -> Tensor:
        r"""``π(z) = z / ‖z‖`` (idempotent on ``ℝⁿ \ {0}``)."""
        return z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)

    @staticmethod
    def to_tangent(x: Tensor, v: Tensor) -> Tensor:
        """``(I − xxᵀ) v``: ``v``'s component in the tangent space at the unit point ``x``."""
        return v - (v * x).sum(-1, keepdim=True) * x

    @staticmethod
    def exp(x: Tensor, v: Tensor) -> Tensor:
        """``exp_x(v) = cos‖v‖ x + sin‖v‖ v/‖v‖``, ``v`` tangent at ``x`` (finite at ``v = 0``)."""
        norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        # sin‖v‖/‖v‖ = sinc(‖v‖/π) (torch.sinc(u) = sin(πu)/(πu))
        return torch.cos(norm) * x + torch.sinc(norm / torch.pi) * v

    def tangent_basis(self, x: Tensor) -> Tensor:
        """Orthonormal bases ``(batch, n, n − 1)`` of the tangent spaces ``x⊥``.

        Built from the Householder reflection ``H`` that maps ``∓e_n`` to ``x``: its other
        columns are orthonormal and orthogonal to ``x``.
        """
        x = _check_points(x, self.n, "Sphere.tangent_basis")
        x = self.project(x)
        e = torch.zeros_like(x)
        sign = torch.where(x[:, -1:] >= 0, 1.0, -1.0).to(x.dtype)
        e[:, -1:] = sign
        u = x + e  # never near 0: |x_n + sign(x_n)| ≥ 1
        eye = torch.eye(self.n, dtype=x.dtype, device=x.device)
        h = eye - 2 * u.unsqueeze(-1) * u.unsqueeze(-2) / (u * u).sum(-1)[:, None, None]
        return h[..., :-1]

    def contains(self, x: Tensor, atol: float | None = None) -> Tensor:
        """Per point: ``|‖x‖ − 1| ≤ atol`` (default :func:`default_atol` of the dtype)."""
        x = _check_points(x, self.n, "Sphere.contains")
        atol = default_atol(x.dtype) if atol is None else float(atol)
        norm = torch.linalg.vector_norm(x, dim=-1)
        return torch.isfinite(norm) & ((norm - 1).abs() <= atol)

    def validate(self, x: Tensor, atol: float | None = None, owner: str = "Sphere") -> None:
        """Raise ``InputOutsideDomain`` (a ``ValueError``) if a point is off the sphere.

        The message names the first offending row and its norm, e.g.
        ``"point off the sphere: ‖x‖ = 1.3 at row 0"``.
        """
        ok = self.contains(x, atol)
        if x.shape[0] and not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            norm = float(torch.linalg.vector_norm(x[i]))
            atol = default_atol(x.dtype) if atol is None else float(atol)
            raise InputOutsideDomain(
                f"{owner}: point off the sphere: ‖x‖ = {norm:.6g} at row {i} "
                f"({int((~ok).sum())} of {x.shape[0]} rows off; tolerance {atol:g})"
            )

    def __repr__(self) -> str:
        return f"Sphere(n={self.n})"


class Simplex:
    """The open probability simplex ``Δⁿ⁻¹ = {p ∈ ℝⁿ : p_i > 0, Σ p_i = 1}``, flat, dim ``n − 1``.

    Densities on it are taken with respect to the Lebesgue measure of the chart
    ``(p_1, …, p_{n−1})`` (the usual Dirichlet convention); it differs from the Hausdorff measure
    of the embedded simplex by the constant ``√n``, which cancels in every volume ratio.

    Args:
        n: the ambient dimension (number of classes).
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or int(n) != n or int(n) < 2:
            raise ValueError(f"Simplex: ambient dimension n must be an integer >= 2, got {n!r}")
        self.n = int(n)
        self.dim = self.n - 1

    def project(self, z: Tensor) -> Tensor:
        """``π(z) = z / Σ z_i`` (idempotent on the positive orthant)."""
        return z / z.sum(-1, keepdim=True)

    def basis(self, dtype: torch.dtype = torch.float64, device: torch.device | None = None
              ) -> Tensor:
        """A fixed orthonormal basis ``(n, n − 1)`` of ``{v : Σ v_i = 0}`` (Helmert)."""
        n = self.n
        h = torch.zeros(n, n - 1, dtype=torch.float64)
        for k in range(1, n):
            h[:k, k - 1] = 1.0 / math.sqrt(k * (k + 1))
            h[k, k - 1] = -k / math.sqrt(k * (k + 1))
        return h.to(dtype=dtype, device=device)

    def tangent_basis(self, x: Tensor) -> Tensor:
        """The (constant) tangent bases ``(batch, n, n − 1)``: the Helmert basis of ``1⊥``."""
        x = _check_points(x, self.n, "Simplex.tangent_basis")
        return self.basis(x.dtype, x.device).expand(x.shape[0], self.n, self.n - 1)

    def contains(self, x: Tensor, atol: float | None = None) -> Tensor:
        """Per point: every ``p_i > 0`` and ``|Σ p_i − 1| ≤ atol``."""
        x = _check_points(x, self.n, "Simplex.contains")
        atol = default_atol(x.dtype) if atol is None else float(atol)
        finite = torch.isfinite(x).all(-1)
        return finite & (x > 0).all(-1) & ((x.sum(-1) - 1).abs() <= atol)

    def validate(self, x: Tensor, atol: float | None = None, owner: str = "Simplex") -> None:
        """Raise ``InputOutsideDomain`` (a ``ValueError``) if a point is off the open simplex."""
        ok = self.contains(x, atol)
        if x.shape[0] and not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            row = x[i]
            atol = default_atol(x.dtype) if atol is None else float(atol)
            if not bool((row > 0).all()):
                problem = (f"point outside the open simplex: min p = {float(row.min()):.6g} "
                           "(probabilities must be positive)")
            else:
                problem = f"point off the simplex: Σ p = {float(row.sum()):.6g}"
            raise InputOutsideDomain(
                f"{owner}: {problem} at row {i} ({int((~ok).sum())} of {x.shape[0]} rows off; "
                f"tolerance {atol:g})"
            )

    def __repr__(self) -> str:
        return f"Simplex(n={self.n})"
