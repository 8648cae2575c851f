"""Sylvester flows: ``x = z + Q R h(R̃ Qᵀ z + b)`` with orthogonal ``Q`` and triangular ``R, R̃``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Transform
from pushforward.nn import MLP
from pushforward.specs import serializable
from pushforward.transforms._roots import newton_attach, solve_increasing

__all__ = ["Sylvester"]

_VARIANTS = ("orthogonal", "householder", "triangular")
# r_ii r̃_ii = −1 + _FLOOR + softplus(a) ≥ −1 + _FLOOR: the determinant factor 1 + h' r_ii r̃_ii
# stays ≥ _FLOOR in floating point too (softplus underflows to 0 for very negative a).
_FLOOR = 1e-3
_ZERO = math.log(math.expm1(1.0 - _FLOOR))  # the raw a for which r_ii r̃_ii = 0


@serializable("sylvester")
class Sylvester(Transform):
    """A Sylvester flow layer (van den Berg et al., 2018).

    Forward ``x = z + Q R h(R̃ Qᵀ z + b)`` with ``h = tanh``, ``Q`` a ``d × M`` matrix with
    orthonormal columns (``M ≤ d``), ``R`` and ``R̃`` upper-triangular ``M × M`` and ``b ∈ ℝᴹ``.
    By Sylvester's determinant identity and ``QᵀQ = I``,
    ``ladj = Σᵢ log(1 + h'(wᵢ) rᵢᵢ r̃ᵢᵢ)`` with ``w = R̃ Qᵀ z + b``.

    Invertibility needs ``rᵢᵢ r̃ᵢᵢ > −1/‖h'‖∞ = −1``; it holds for every parameter value because
    ``r̃ᵢᵢ = exp(ãᵢ)`` and ``rᵢᵢ = (softplus(aᵢ) − 1 + 10⁻³) exp(−ãᵢ)``, so
    ``rᵢᵢ r̃ᵢᵢ = softplus(aᵢ) − 1 + 10⁻³ ≥ −1 + 10⁻³`` even in floating point (each determinant
    factor stays ``≥ 10⁻³``: no ``log 0``).

    Inverse (numerical): the part of ``x`` orthogonal to the columns of ``Q`` equals that of
    ``z``; in the column space, ``c = R̃ Qᵀ x + b`` satisfies ``c = w + T h(w)`` with the
    upper-triangular ``T = R̃ R`` (diagonal ``tᵢᵢ = rᵢᵢ r̃ᵢᵢ``). Back-substitution from ``i = M``
    down to 1 leaves one strictly increasing scalar equation per coordinate,
    ``wᵢ + tᵢᵢ h(wᵢ) = cᵢ − Σ_{j>i} Tᵢⱼ h(wⱼ)``, solved by a bracketed safeguarded Newton
    iteration to round-off; then ``z = x − Q R h(w)``. Gradients of the inverse are the implicit
    ones (one Newton step from the detached root).

    Variants (``Q``):
        ``"orthogonal"``: the first ``M`` columns of the Cayley transform
        ``(I + A)⁻¹ (I − A)`` of a learnable skew-symmetric ``A``.
        ``"householder"``: the first ``M`` columns of a product of ``reflections`` Householder
        reflections ``I − 2 v vᵀ / ‖v‖²``.
        ``"triangular"``: ``M = d`` and ``Q`` is the identity, or the reversal permutation when
        ``flip=True`` (alternate it between layers).

    With ``context_features > 0``, an MLP of the context shifts the raw entries of ``R``, ``R̃``,
    their diagonals and ``b`` (amortised parameters, as in the paper's VAE); ``Q`` is shared.

    Args:
        features: the dimension ``d``.
        columns: ``M`` (default ``d``); must be ``d`` for the triangular variant.
        variant: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        reflections: number of Householder reflections (householder variant; default ``d``).
        flip: use the reversal permutation as ``Q`` (triangular variant).
        context_features: width of the context (0: unconditional).
        hidden: hidden widths of the context network.

    References:
        Sylvester Normalizing Flows for Variational Inference, van den Berg, Hasenclever,
        Tomczak & Welling, 2018, arXiv:1803.05649.

    Example:
        >>> import torch
        >>> t = Sylvester(3, variant="householder")
        >>> z = torch.randn(4, 3)
        >>> x, ladj = t(z)
        >>> torch.allclose(t.inverse(x)[0], z, atol=1e-5)
        True
    """

    analytic_inverse = False

    def __init__(
        self,
        features: int,
        columns: int | None = None,
        variant: str = "orthogonal",
        reflections: int | None = None,
        flip: bool = False,
        context_features: int = 0,
        hidden: tuple[int, ...] | list[int] = (64,),
    ) -> None:
        super().__init__(features, context_features=context_features)
        d = int(features)
        if variant not in _VARIANTS:
            raise ValueError(f"Sylvester: variant must be one of {_VARIANTS}, got {variant!r}")
        m = d if columns is None else int(columns)
        if not 1 <= m <= d:
            raise ValueError(f"Sylvester: columns must be in [1, {d}], got {columns}")
        if variant == "triangular" and m != d:
            raise ValueError("Sylvester: the triangular variant uses M = d columns")
        self.features, self.columns, self.variant, self.flip = d, m, variant, bool(flip)
        if variant == "orthogonal":
            self.skew = nn.Parameter(0.1 * torch.randn(d, d))
        elif variant == "householder":
            k = d if reflections is None else _v.check_int(reflections, "Sylvester",
                                                           "reflections", type_error=False)
            self.reflections = nn.Parameter(torch.randn(k, d))
        self.r_upper = nn.Parameter(0.1 * torch.randn(m, m))
        self.r_tilde_upper = nn.Parameter(0.1 * torch.randn(m, m))
        # r_ii r̃_ii starts near 0 (near the identity map).
        self.diag_raw = nn.Parameter(_ZERO + 0.1 * torch.randn(m))
        self.diag_tilde = nn.Parameter(torch.zeros(m))
        self.bias = nn.Parameter(torch.zeros(m))
        self.register_buffer("_upper", torch.ones(m, m).triu(1), persistent=False)
        self.net = None
        if self.context_features:
            self._sizes = (m * m, m * m, m, m, m)
            self.net = MLP(self.context_features, sum(self._sizes), hidden, "elu", zero_last=True)

    # -- parameters ---------------------------------------------------------------------------
    def basis(self) -> Tensor:
        """``Q``: a ``d × M`` matrix with orthonormal columns."""
        d, m = self.features, self.columns
        if self.variant == "orthogonal":
            upper = self.skew.triu(1)
            a = upper - upper.T
            eye = torch.eye(d, dtype=a.dtype, device=a.device)
            return torch.linalg.solve(eye + a, eye - a)[:, :m]
        if self.variant == "householder":
            v = self.reflections / self.reflections.norm(dim=-1, keepdim=True)
            q = torch.eye(d, m, dtype=v.dtype, device=v.device)
            for k in range(v.shape[0] - 1, -1, -1):
                q = q - 2 * torch.outer(v[k], v[k] @ q)
            return q
        eye = torch.eye(d, dtype=self.bias.dtype, device=self.bias.device)
        return eye.flip(1) if self.flip else eye

    def _triangles(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``R``, ``R̃`` (``(1 or B, M, M)``) and ``b`` (``(1 or B, M)``)."""
        m = self.columns
        r_raw, rt_raw = self.r_upper.unsqueeze(0), self.r_tilde_upper.unsqueeze(0)
        a, at, b = self.diag_raw.unsqueeze(0), self.diag_tilde.unsqueeze(0), self.bias.unsqueeze(0)
        if self.net is not None:
            assert context is not None
            parts = self.net(context.to(b.dtype)).split(self._sizes, dim=-1)
            r_raw = r_raw + parts[0].reshape(-1, m, m)
            rt_raw = rt_raw + parts[1].reshape(-1, m, m)
            a, at, b = a + parts[2], at + parts[3], b + parts[4]
        r_tilde_diag = at.exp()
        r_diag = (F.softplus(a) - 1 + _FLOOR) * (-at).exp()
        r = r_raw * self._upper + torch.diag_embed(r_diag)
        r_tilde = rt_raw * self._upper + torch.diag_embed(r_tilde_diag)
        return r, r_tilde, b

    @staticmethod
    def _diag(r: Tensor) -> Tensor:
        return torch.diagonal(r, dim1=-2, dim2=-1)

    # -- the map ------------------------------------------------------------------------------
    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        q = self.basis().to(z.dtype)
        r, r_tilde, b = self._triangles(context)
        y = z @ q  # Qᵀ z
        w = torch.einsum("bij,bj->bi", r_tilde.expand(z.shape[0], -1, -1), y) + b
        h = torch.tanh(w)
        x = z + torch.einsum("bij,bj->bi", r.expand(z.shape[0], -1, -1), h) @ q.T
        t_diag = self._diag(r) * self._diag(r_tilde)
        ladj = torch.log1p((1 - h * h) * t_diag).sum(-1)
        return x, ladj

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        q = self.basis().to(x.dtype)
        r, r_tilde, b = self._triangles(context)
        batch = x.shape[0]
        r, r_tilde = r.expand(batch, -1, -1), r_tilde.expand(batch, -1, -1)
        b = b.expand(batch, -1)
        t = r_tilde @ r  # upper triangular, diagonal r_ii r̃_ii
        t_diag = self._diag(t)
        c = torch.einsum("bij,bj->bi", r_tilde, x @ q) + b
        h_cols: list[Tensor] = [x.new_zeros(batch)] * self.columns
        w_cols: list[Tensor] = [x.new_zeros(batch)] * self.columns
        for i in range(self.columns - 1, -1, -1):
            target = c[:, i]
            if i + 1 < self.columns:
                later = torch.stack(h_cols[i + 1 :], dim=-1)
                target = target - (t[:, i, i + 1 :] * later).sum(-1)
            p = t_diag[:, i]
            p_fixed = p.detach()

            def f(u: Tensor, p_fixed: Tensor = p_fixed) -> tuple[Tensor, Tensor]:
                th = torch.tanh(u)
                return u + p_fixed * th, 1 + p_fixed * (1 - th * th)

            spread = p_fixed.abs() + 1
            u = solve_increasing(f, target, target - spread, target + spread)
            th = torch.tanh(u)
            u = newton_attach(u, u + p * th, 1 + p_fixed * (1 - th * th), target)
            w_cols[i] = u
            h_cols[i] = torch.tanh(u)
        h = torch.stack(h_cols, dim=-1)
        z = x - torch.einsum("bij,bj->bi", r, h) @ q.T
        ladj = torch.log1p((1 - h * h) * t_diag).sum(-1)
        return z, -ladj

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"{super().extra_repr()}, columns={self.columns}, variant={self.variant!r}"
