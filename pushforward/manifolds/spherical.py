"""Flows on the sphere ``𝕊ⁿ⁻¹`` (SPEC §4.2): normalised translation, linear and affine maps.

Each acts on ambient coordinates ``(batch, n)`` with ``‖z‖ = 1`` and returns, in the ``ladj`` slot,
the log differential volume ratio ``log R_f(z) = log|det(T_xᵀ F_z T_z)|`` (SPEC §4), so a base
density on the sphere (w.r.t. its surface measure) is pushed forward exactly:
``log p(x) = log p_0(z) − log R_f(z)``. Closed forms are checked against
:func:`pushforward.manifolds.log_volume_ratio` in the tests.

References:
    Normalizing Flows on Tori and Spheres. Rezende, Papamakarios, Racanière, Albergo, Kanwar,
    Shanahan, Cranmer, 2020. arXiv:2002.02428.
    Learning Distributions on Manifolds with Free-form Flows. Sorrenson, Draxler, Rousselot,
    Hummerich, Köthe, 2023. arXiv:2312.09852 (the Earth benchmark figures).
    Flow-based generative model, section "Flows on manifolds". Wikipedia (the source text).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward.manifolds._flow import ManifoldFlow
from pushforward.manifolds._fused import (
    normalized_affine_inverse_reference,
    normalized_affine_reference,
)
from pushforward.manifolds._params import (
    InvertibleMatrix,
    as_tensor,
    ball,
    cast,
    initial_dtype,
    unball,
)
from pushforward.manifolds.spaces import Sphere
from pushforward.specs import serializable

__all__ = ["NormalizedTranslation", "NormalizedLinear", "NormalizedAffine"]


def _normalized_affine(z: Tensor, m: Tensor | None, logdet: Tensor | None, b: Tensor | None
                       ) -> tuple[Tensor, Tensor]:
    """``x = M(z + b)/‖M(z + b)‖``; ``log R = log|det M| + log(1 + zᵀb) − n log‖M(z + b)‖``."""
    n = z.shape[-1]
    u = z if b is None else z + b
    if m is not None:
        u = u @ m[0].T if m.shape[0] == 1 else (m @ u.unsqueeze(-1)).squeeze(-1)
    r = torch.linalg.vector_norm(u, dim=-1)
    ladj = -n * torch.log(r)
    if b is not None:
        ladj = ladj + torch.log1p((z * b).sum(-1))
    if logdet is not None:
        ladj = ladj + logdet
    return u / r.unsqueeze(-1), ladj


def _normalized_affine_inverse(x: Tensor, m: Tensor | None, logdet: Tensor | None,
                               b: Tensor | None, s: Tensor | None) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_normalized_affine` and its ``log R`` at the image (negated).

    With ``w = M⁻¹x``, ``t = wᵀb``, ``d = sqrt(t² + ‖w‖²(1 − ‖b‖²))``: ``ℓ = (t + d)/‖w‖²``
    (written ``(1 − ‖b‖²)/(d − t)`` for ``t < 0``, free of cancellation), ``z = ℓw − b``, and
    ``−log R(z) = −log|det M| − log d + (n − 1) log ℓ`` since ``1 + zᵀb = ℓd`` and
    ``‖M(z + b)‖ = ℓ``.
    """
    n = x.shape[-1]
    if m is None:
        w = x
    elif m.shape[0] == 1:  # one matrix for the batch: one factorisation, many right-hand sides
        w = torch.linalg.solve_ex(m[0], x.T)[0].T  # M invertible: no error check (sync)
    else:
        w = torch.linalg.solve_ex(m, x.unsqueeze(-1))[0].squeeze(-1)
    rho2 = (w * w).sum(-1)
    if b is None:
        ladj = -0.5 * n * torch.log(rho2)
        z = w * torch.rsqrt(rho2).unsqueeze(-1)
    else:
        assert s is not None
        s = s.squeeze(-1)
        t = (w * b).sum(-1)
        d = torch.sqrt(t * t + rho2 * s)
        ell = torch.where(t >= 0, (t + d) / rho2, s / (d - t))
        z = ell.unsqueeze(-1) * w - b
        ladj = (n - 1) * torch.log(ell) - torch.log(d)
    if logdet is not None:
        ladj = ladj - logdet
    return z, ladj


def _shared(m: Tensor | None, b: Tensor | None) -> bool:
    """Whether one ``M`` (``(n, n)``) and one ``b`` (``(n,)``) serve the whole batch."""
    return (m is None or m.dim() == 2) and (b is None or b.dim() == 1)


def _apply(z: Tensor, m: Tensor | None, logdet: Tensor | None, b: Tensor | None
           ) -> tuple[Tensor, Tensor]:
    """:func:`_normalized_affine`; ``m`` is ``(n, n)`` when shared by the batch."""
    if not _shared(m, b):
        return _normalized_affine(z, m, logdet, b)
    x, ladj = normalized_affine_reference(z, m, b)
    return x, ladj if logdet is None else ladj + logdet


def _apply_inverse(x: Tensor, a: Tensor | None, logdet: Tensor | None, b: Tensor | None,
                   s: Tensor | None) -> tuple[Tensor, Tensor]:
    """The inverse normalized affine map (:func:`_normalized_affine_inverse`).

    A shared ``a`` is ``M⁻¹`` ``(n, n)`` (formed once per call from the factors); per-sample
    matrices ``(batch, n, n)`` are ``M`` (solved).
    """
    if not _shared(a, b):
        return _normalized_affine_inverse(x, a, logdet, b, s)
    z, ladj = normalized_affine_inverse_reference(x, a, b, s)
    return z, ladj if logdet is None else ladj - logdet


class _SphericalFlow(ManifoldFlow):
    def __init__(self, n: int, context_features: int, hidden: Sequence[int], size: int) -> None:
        super().__init__(Sphere(n), context_features, hidden, size)

    @property
    def sphere(self) -> Sphere:
        return self.manifold


@serializable("normalized-translation")
class NormalizedTranslation(_SphericalFlow):
    """Normalised translation on ``𝕊ⁿ⁻¹``: ``x = (z + c) / ‖z + c‖`` with ``‖c‖ < 1``.

    ``log R = log(1 + zᵀc) − n log‖z + c‖``. Inverse ``z = ℓx − c`` with
    ``ℓ = xᵀc + sqrt((xᵀc)² + 1 − cᵀc)``. The constraint ``‖c‖ < 1`` holds for every parameter
    value: ``c = v / sqrt(1 + ‖v‖²)`` with ``v`` free (plus, with a context, a per-sample offset
    ``Δv(context)`` from a network).

    Args:
        n: ambient dimension (``n = 3``: the 2-sphere).
        shift: initial ``c`` (default 0, the identity); ``‖c‖ ≥ 1`` raises ``ValueError``.
        context_features: width of an optional context (0: unconditional).
        hidden: hidden widths of the context network.

    Example:
        >>> import torch
        >>> t = NormalizedTranslation(3, shift=torch.tensor([0.0, 0.0, 0.5]))
        >>> x, ladj = t(torch.tensor([[1.0, 0.0, 0.0]]))
        >>> round(x.norm().item(), 6), round(x[0, 2].item(), 6)  # (z + c)/‖z + c‖
        (1.0, 0.447214)
    """

    def __init__(self, n: int, shift: Tensor | None = None, context_features: int = 0,
                 hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__(n, context_features, hidden, int(n))
        dtype = initial_dtype(shift)
        c = torch.zeros(self.n, dtype=torch.float64) if shift is None else as_tensor(
            shift, (self.n,), type(self).__name__, "shift")
        self.raw_shift = torch.nn.Parameter(unball(c, type(self).__name__, "shift").to(dtype))

    def _params(self, context: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        v = cast(self.raw_shift, dtype)
        delta = self._offsets(context, dtype)
        return ball(v if delta is None else v + delta)

    @property
    def shift(self) -> Tensor:
        """The effective ``c`` (``‖c‖ < 1``; without the context offset)."""
        return ball(self.raw_shift)[0]

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        c, _ = self._params(context, z.dtype)
        return _apply(z, None, None, c)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        c, s = self._params(context, x.dtype)
        return _apply_inverse(x, None, None, c, s)


@serializable("normalized-linear")
class NormalizedLinear(_SphericalFlow):
    """Normalised linear map on ``𝕊ⁿ⁻¹``: ``x = Mz / ‖Mz‖`` with ``M`` invertible.

    ``log R = log|det M| − n log‖Mz‖``; inverse ``z = M⁻¹x / ‖M⁻¹x‖``. Uniform on the sphere
    pushed through it is the angular central Gaussian with ``Σ = MMᵀ``. ``M = P L U`` with an
    exponentiated diagonal, invertible for every parameter value (a context adds per-sample
    offsets to ``L``, ``U`` and the soft-clamped log-diagonal).

    Args:
        n: ambient dimension.
        matrix: initial ``M`` (default the identity); a singular matrix raises ``ValueError``.
        context_features: width of an optional context (0: unconditional).
        hidden: hidden widths of the context network.

    References:
        Tyler, D. E. (1987). Statistical analysis for the angular central Gaussian distribution
        on the sphere. Biometrika 74(3).
    """

    def __init__(self, n: int, matrix: Tensor | None = None, context_features: int = 0,
                 hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__(n, context_features, hidden, int(n) ** 2)
        self.linear = InvertibleMatrix(self.n, matrix, initial_dtype(matrix), type(self).__name__)

    def _params(self, context: Tensor | None, dtype: torch.dtype, invert: bool = False
                ) -> tuple[Tensor, Tensor]:
        """``(M, log|det M|)``: shared ``(n, n)`` (``M⁻¹`` when ``invert``), else per sample."""
        delta = self._offsets(context, dtype)
        if delta is None:
            return self.linear.shared(dtype, invert)
        return self.linear(delta.view(-1, self.n, self.n), dtype)

    @property
    def matrix(self) -> Tensor:
        """The effective ``M`` (without the context offset)."""
        return self.linear()[0][0]

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        m, logdet = self._params(context, z.dtype)
        return _apply(z, m, logdet, None)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        m, logdet = self._params(context, x.dtype, invert=True)
        return _apply_inverse(x, m, logdet, None, None)


@serializable("normalized-affine")
class NormalizedAffine(_SphericalFlow):
    """Normalised affine map on ``𝕊ⁿ⁻¹``: ``x = (Mz + c) / ‖Mz + c‖`` with ``‖M⁻¹c‖ < 1``.

    ``log R = log|det M| + log(1 + zᵀM⁻¹c) − n log‖Mz + c‖``. Inverse ``z = M⁻¹(ℓx − c)`` with
    ``W = (MMᵀ)⁻¹`` and ``ℓ = (xᵀWc + sqrt((xᵀWc)² + xᵀWx·(1 − cᵀWc))) / xᵀWx``. Parametrised as
    ``c = M b`` with ``b = v / sqrt(1 + ‖v‖²)`` in the open unit ball (so ``‖M⁻¹c‖ = ‖b‖ < 1``
    always) and ``M = P L U`` invertible; it equals ``NormalizedLinear(M) ∘
    NormalizedTranslation(b)``.

    Args:
        n: ambient dimension.
        matrix: initial ``M`` (default the identity); singular raises ``ValueError``.
        shift: initial ``c`` (default 0); ``‖M⁻¹c‖ ≥ 1`` raises ``ValueError``.
        context_features: width of an optional context (0: unconditional).
        hidden: hidden widths of the context network.
    """

    def __init__(self, n: int, matrix: Tensor | None = None, shift: Tensor | None = None,
                 context_features: int = 0, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__(n, context_features, hidden, int(n) ** 2 + int(n))
        name = type(self).__name__
        dtype = initial_dtype(matrix, shift)
        self.linear = InvertibleMatrix(self.n, matrix, dtype, name)
        m = self.linear()[0][0].detach().double()
        c = torch.zeros(self.n, dtype=torch.float64) if shift is None else as_tensor(
            shift, (self.n,), name, "shift")
        b = torch.linalg.solve(m, c)
        if not float(b.norm()) < 1:
            raise ValueError(f"{name}: shift must satisfy ‖M⁻¹c‖ < 1, got {float(b.norm()):.6g}")
        self.raw_shift = torch.nn.Parameter(unball(b, name, "M⁻¹c").to(dtype))

    def _params(self, context: Tensor | None, dtype: torch.dtype, invert: bool = False
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(M, log|det M|, b, 1 − ‖b‖²)``: shared (``M⁻¹`` when ``invert``), else per sample."""
        delta = self._offsets(context, dtype)
        v = cast(self.raw_shift, dtype)
        if delta is None:
            m, logdet = self.linear.shared(dtype, invert)
        else:
            m, logdet = self.linear(delta[:, self.n:].reshape(-1, self.n, self.n), dtype)
            v = v + delta[:, : self.n]
        b, s = ball(v)
        return m, logdet, b, s

    @property
    def matrix(self) -> Tensor:
        """The effective ``M`` (without the context offset)."""
        return self.linear()[0][0]

    @property
    def shift(self) -> Tensor:
        """The effective ``c = M b`` (``‖M⁻¹c‖ < 1``; without the context offset)."""
        return self.matrix @ ball(self.raw_shift)[0]

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        m, logdet, b, _ = self._params(context, z.dtype)
        return _apply(z, m, logdet, b)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        m, logdet, b, s = self._params(context, x.dtype, invert=True)
        return _apply_inverse(x, m, logdet, b, s)
