"""Flows on the probability simplex ``Δⁿ⁻¹`` (SPEC §4.1): calibration and generalised calibration.

Both act on ambient coordinates ``(batch, n)`` (probability vectors with positive entries summing
to one). The ``ladj`` slot holds ``log R`` with ``R = |det(R F_p E)|``, ``E = [I_{n−1}; −1ᵀ]``,
``R = [I_{n−1} 0]``: the volume ratio with respect to the Lebesgue measure of the chart
``(p_1, …, p_{n−1})``. The simplex is flat, so this equals the ratio with respect to its Hausdorff
measure and the generic :func:`pushforward.manifolds.log_volume_ratio` (tested).

References:
    On Calibration of Modern Neural Networks. Guo, Pleiss, Sun, Weinberger, 2017.
    arXiv:1706.04599 (temperature scaling).
    Beyond temperature scaling: Obtaining well-calibrated multiclass probabilities with
    Dirichlet calibration. Kull, Perello-Nieto, Kängsepp, Silva Filho, Song, Flach, 2019.
    arXiv:1910.12656.
    Flow-based generative model, section "Flows on manifolds". Wikipedia (the source text).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward.manifolds._flow import ManifoldFlow
from pushforward.manifolds._params import (
    InvertibleMatrix,
    as_tensor,
    cast,
    initial_dtype,
    soft_clamp,
)
from pushforward.manifolds.spaces import Simplex
from pushforward.specs import serializable

__all__ = ["Calibration", "GeneralizedCalibration", "compose_calibrations"]


def _log_ratio(log_q: Tensor, log_p: Tensor) -> Tensor:
    """``Σ_i log q_i − Σ_i log p_i``."""
    return log_q.sum(-1) - log_p.sum(-1)


class _SimplexFlow(ManifoldFlow):
    def __init__(self, n: int, context_features: int, hidden: Sequence[int], size: int) -> None:
        super().__init__(Simplex(n), context_features, hidden, size)

    @property
    def simplex(self) -> Simplex:
        return self.manifold


@serializable("calibration")
class Calibration(_SimplexFlow):
    """Calibration map ``q = softmax(a⁻¹ log p + c)`` with ``a > 0``.

    ``log R = (1 − n) log a + Σ_i log q_i − Σ_i log p_i`` (chart Lebesgue measure, see the module
    docstring); inverse ``p = softmax(a log q − a c)``. ``a = exp(α)`` with ``α`` free, so
    ``a > 0`` for every parameter value (no direction reversal); ``c = 0`` is temperature scaling
    with temperature ``a``. With a context, a network adds per-sample offsets to ``α``
    (soft-clamped) and ``c``.

    Args:
        n: number of classes (ambient dimension).
        scale: initial ``a > 0`` (default 1); ``a ≤ 0`` raises ``ValueError``.
        shift: initial ``c`` (default 0).
        context_features: width of an optional context (0: unconditional).
        hidden: hidden widths of the context network.

    Example:
        >>> import torch
        >>> t = Calibration(3, scale=2.0)
        >>> q, ladj = t(torch.tensor([[0.7, 0.2, 0.1]]))  # temperature 2: q ∝ √p
        >>> [round(v, 4) for v in q[0].tolist()]
        [0.5229, 0.2795, 0.1976]
    """

    def __init__(self, n: int, scale: float | Tensor | None = None, shift: Tensor | None = None,
                 context_features: int = 0, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__(n, context_features, hidden, 1 + int(n))
        name = type(self).__name__
        dtype = initial_dtype(scale, shift)
        a = torch.ones((), dtype=torch.float64) if scale is None else as_tensor(
            scale, (), name, "scale")
        if not float(a) > 0:
            raise ValueError(f"{name}: scale a must be > 0, got {float(a):.6g}")
        c = torch.zeros(self.n, dtype=torch.float64) if shift is None else as_tensor(
            shift, (self.n,), name, "shift")
        self.log_scale = nn.Parameter(a.log().to(dtype))
        self.raw_shift = nn.Parameter(c.to(dtype))

    @property
    def scale(self) -> Tensor:
        """The effective ``a > 0`` (without the context offset)."""
        return self.log_scale.exp()

    @property
    def shift(self) -> Tensor:
        """The effective ``c`` (without the context offset)."""
        return self.raw_shift

    @property
    def matrix(self) -> Tensor:
        """``A = a⁻¹ I`` (the calibration map as a generalised calibration)."""
        return torch.eye(self.n, dtype=self.log_scale.dtype) / self.scale

    def _params(self, context: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        log_a = cast(self.log_scale, dtype).reshape(1, 1)
        c = cast(self.raw_shift, dtype)[None]
        delta = self._offsets(context, dtype)
        if delta is not None:
            log_a = log_a + soft_clamp(delta[:, :1])
            c = c + delta[:, 1:]
        return log_a, c

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_a, c = self._params(context, z.dtype)
        log_p = torch.log(z)
        log_q = torch.log_softmax(log_p * torch.exp(-log_a) + c, dim=-1)
        ladj = (1 - self.n) * log_a.squeeze(-1) + _log_ratio(log_q, log_p)
        return log_q.exp(), ladj

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        log_a, c = self._params(context, x.dtype)
        log_q = torch.log(x)
        log_p = torch.log_softmax(torch.exp(log_a) * (log_q - c), dim=-1)
        ladj = (1 - self.n) * log_a.squeeze(-1) + _log_ratio(log_q, log_p)
        return log_p.exp(), -ladj


@serializable("generalized-calibration")
class GeneralizedCalibration(_SimplexFlow):
    """Generalised calibration ``q = softmax(A log p + c)``, ``A 1 = λ 1``, ``A`` invertible.

    ``log R = log|det A| − log|λ| + Σ_i log q_i − Σ_i log p_i`` (chart Lebesgue measure); inverse
    ``p = softmax(A⁻¹ log q − A⁻¹ c)`` (``A⁻¹1 = λ⁻¹1``, so the inverse is a generalised
    calibration too). Parametrisation, in the orthonormal basis ``[H, e]`` (``H`` a Helmert
    basis of ``1⊥``, ``e = 1/√n``)::

        A = [H e] [[K, 0], [wᵀ, λ]] [H e]ᵀ,    K = P L U (invertible), λ = ±exp(μ),

    so ``A e = λ e`` (``A 1 = λ 1`` to round-off, for every parameter value, through any optimiser
    step) and ``det A = λ det K ≠ 0``; ``log|det A| − log|λ| = log|det K|``. The map depends on
    ``A`` only through ``K`` (``softmax`` ignores ``1 dᵀ`` added to ``A``), but ``w`` and ``λ`` are
    kept so that every valid ``A`` (and the group law's ``A₁A₂``) is represented exactly.

    Args:
        n: number of classes.
        matrix: initial ``A`` (default the identity); ``ValueError`` unless its rows have equal
            sums ``λ ≠ 0`` and it is invertible.
        shift: initial ``c`` (default 0).
        context_features: width of an optional context (0: unconditional).
        hidden: hidden widths of the context network.
    """

    def __init__(self, n: int, matrix: Tensor | None = None, shift: Tensor | None = None,
                 context_features: int = 0, hidden: Sequence[int] = (64, 64)) -> None:
        m = int(n) - 1
        super().__init__(n, context_features, hidden, m * m + m + 1 + int(n))
        name = type(self).__name__
        dtype = initial_dtype(matrix, shift)
        n = self.n
        a = torch.eye(n, dtype=torch.float64) if matrix is None else as_tensor(
            matrix, (n, n), name, "matrix")
        rows = a.sum(-1)
        lam = float(rows.mean())
        if float((rows - lam).abs().max()) > 1e-6 * max(1.0, float(a.abs().max())):
            raise ValueError(
                f"{name}: matrix must satisfy A 1 = λ 1 (equal row sums); row sums are "
                f"{[round(float(r), 6) for r in rows]}"
            )
        if abs(lam) <= 1e-12 * max(1.0, float(a.abs().max())):
            raise ValueError(f"{name}: matrix is singular (A 1 = λ 1 with λ = {lam:.3g})")
        h = self.simplex.basis(torch.float64)
        e = torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64)
        self.register_buffer("helmert", h.to(dtype))
        self.register_buffer("unit", e.to(dtype))
        self.reduced = InvertibleMatrix(m, h.T @ a @ h, dtype, name, "matrix (on 1⊥)")
        self.coupling = nn.Parameter((h.T @ a.T @ e).to(dtype))
        self.log_eigenvalue = nn.Parameter(torch.tensor(math.log(abs(lam)), dtype=dtype))
        self.register_buffer("sign_eigenvalue", torch.tensor(math.copysign(1.0, lam), dtype=dtype))
        c = torch.zeros(n, dtype=torch.float64) if shift is None else as_tensor(
            shift, (n,), name, "shift")
        self.raw_shift = nn.Parameter(c.to(dtype))

    def _params(self, context: Tensor | None, dtype: torch.dtype
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``(A, log|det K|, c)`` with a leading batch dimension (1 without context)."""
        m = self.n - 1
        delta = self._offsets(context, dtype)
        w = cast(self.coupling, dtype)
        mu = cast(self.log_eigenvalue, dtype)
        c = cast(self.raw_shift, dtype)
        h, e = cast(self.helmert, dtype), cast(self.unit, dtype)
        lam_sign = cast(self.sign_eigenvalue, dtype)
        if delta is None:  # one A for the batch: 2-D products, a leading 1 added at the end
            k, logdet = self.reduced.shared(dtype)
            a = h @ k @ h.T + torch.outer(e, h @ w + (lam_sign * mu.exp()) * e)
            return a[None], logdet, c[None]
        k, logdet = self.reduced(delta[:, : m * m].reshape(-1, m, m), dtype)
        w = w + delta[:, m * m: m * m + m]
        mu = mu + soft_clamp(delta[:, m * m + m])
        c = c + delta[:, m * m + m + 1:]
        lam = lam_sign * mu.exp()
        a = (h @ k @ h.T + e[:, None] * (w @ h.T)[:, None, :]
             + lam[:, None, None] * torch.outer(e, e))
        return a, logdet, c

    @property
    def matrix(self) -> Tensor:
        """The effective ``A`` (``A 1 = λ 1``; without the context offset)."""
        return self._params(None, self.raw_shift.dtype)[0][0]

    @property
    def eigenvalue(self) -> Tensor:
        """``λ`` of ``A 1 = λ 1``."""
        return self.sign_eigenvalue * self.log_eigenvalue.exp()

    @property
    def shift(self) -> Tensor:
        """The effective ``c`` (without the context offset)."""
        return self.raw_shift

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, logdet, c = self._params(context, z.dtype)
        log_p = torch.log(z)
        v = log_p @ a[0].T if a.shape[0] == 1 else (a @ log_p.unsqueeze(-1)).squeeze(-1)
        log_q = torch.log_softmax(v + c, dim=-1)
        return log_q.exp(), logdet + _log_ratio(log_q, log_p)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a, logdet, c = self._params(context, x.dtype)
        log_q = torch.log(x)
        rhs = log_q - c
        if a.shape[0] == 1:  # one small n × n inverse, then one product for the batch
            v = rhs @ torch.linalg.inv_ex(a[0])[0].T  # invertible: no error check, no sync
        else:
            v = torch.linalg.solve_ex(a, rhs.unsqueeze(-1))[0].squeeze(-1)
        log_p = torch.log_softmax(v, dim=-1)
        return log_p.exp(), -(logdet + _log_ratio(log_q, log_p))


def compose_calibrations(
    outer: Calibration | GeneralizedCalibration, inner: Calibration | GeneralizedCalibration
) -> GeneralizedCalibration:
    """The group law: ``fgcal(·; A₁, c₁) ∘ fgcal(·; A₂, c₂) = fgcal(·; A₁A₂, c₁ + A₁c₂)``.

    A :class:`Calibration` counts as ``A = a⁻¹I``.
    ``A₁A₂1 = λ₁λ₂1``, so the product satisfies the constraint.

    Args:
        outer: the map applied second.
        inner: the map applied first.

    Returns:
        One :class:`GeneralizedCalibration` equal to ``outer ∘ inner`` (``inner`` applied first,
        as in ``Chain([inner, outer])``).

    Raises:
        TypeError: an argument is not a (generalised) calibration.
        ValueError: dimensions differ, or a map is context-conditional (no single parameter).

    Example:
        >>> import torch
        >>> g = compose_calibrations(Calibration(3, scale=2.0), Calibration(3, scale=0.5))
        >>> torch.allclose(g.matrix, torch.eye(3), atol=1e-6)
        True
    """
    for g in (outer, inner):
        if not isinstance(g, (Calibration, GeneralizedCalibration)):
            raise TypeError(f"compose_calibrations: expected calibration maps, got {type(g)}")
        if g.context_features:
            raise ValueError("compose_calibrations: context-conditional maps have no single "
                             "parameter to compose")
    if outer.n != inner.n:
        raise ValueError(f"compose_calibrations: dimensions differ ({outer.n} vs {inner.n})")
    with torch.no_grad():
        a1, a2 = outer.matrix.double(), inner.matrix.double()
        c1, c2 = outer.shift.double(), inner.shift.double()
        dtype = outer.shift.dtype
        return GeneralizedCalibration(outer.n, matrix=(a1 @ a2).to(dtype),
                                      shift=(c1 + a1 @ c2).to(dtype))
