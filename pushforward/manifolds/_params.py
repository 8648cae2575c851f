"""Constrained parametrisations shared by the manifold flows (private).

* :class:`InvertibleMatrix`: ``M = P L U`` with ``L`` unit lower triangular and ``diag U =
  sign ⊙ exp(log|u|)`` (sign and ``P`` fixed at construction), invertible for every value.
* :func:`ball`: ``c = v / sqrt(1 + ‖v‖²)`` maps ``ℝⁿ`` onto the open unit ball, with
  ``1 − ‖c‖² = 1 / (1 + ‖v‖²)`` returned exactly (never rounded to 0 or below).
* :class:`ContextOffsets`: a network mapping a context to per-sample offsets of the raw
  parameters (zero-initialised, so a conditional flow starts at its unconditional parameters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.manifolds._fused import FactoredMatrix, factored_matrix_reference
from pushforward.nn import MLP


def initial_dtype(*values: object) -> torch.dtype:
    """The dtype of the first floating tensor given, else the default dtype."""
    for v in values:
        if isinstance(v, Tensor) and v.is_floating_point():
            return v.dtype
    return torch.get_default_dtype()


def as_tensor(value: object, shape: tuple[int, ...], owner: str, name: str) -> Tensor:
    """``value`` as a finite float64 tensor of the given shape (ValueError otherwise)."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{owner}: {name} must be a tensor of shape {shape}: {err}") from None
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{owner}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{owner}: {name} contains NaN or infinite values")
    return t


def cast(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` in ``dtype``, without a dispatcher call when it already is (the common case)."""
    return value if value.dtype == dtype else value.to(dtype)


def soft_clamp(x: Tensor, bound: float = 5.0) -> Tensor:
    """``bound · tanh(x / bound)``: identity near 0, never beyond ``±bound``."""
    return bound * torch.tanh(x / bound)


def ball(v: Tensor) -> tuple[Tensor, Tensor]:
    """``(c, 1 − ‖c‖²)`` with ``c = v / sqrt(1 + ‖v‖²)`` (so ``‖c‖ < 1`` always)."""
    q = 1 + (v * v).sum(-1, keepdim=True)
    return v * torch.rsqrt(q), 1 / q


def unball(c: Tensor, owner: str, name: str) -> Tensor:
    """The ``v`` with ``ball(v) = c``; ValueError unless ``‖c‖ < 1``."""
    sq = float((c * c).sum())
    if not sq < 1:
        raise ValueError(
            f"{owner}: {name} must lie in the open unit ball, got ‖{name}‖ = {sq ** 0.5:.6g}"
        )
    return c / (1 - (c * c).sum()).sqrt()


class InvertibleMatrix(nn.Module):
    """A ``d × d`` matrix ``M = P L U``, invertible for every parameter value.

    Calling it with optional per-sample offsets ``delta`` of shape ``(batch, d, d)`` (strict lower
    part → ``L``, strict upper → ``U``, diagonal → ``log|u|``, soft-clamped) returns
    ``(M, log|det M|)`` of shapes ``(batch or 1, d, d)`` and ``(batch or 1,)``.
    """

    def __init__(self, d: int, matrix: Tensor | None, dtype: torch.dtype, owner: str,
                 name: str = "matrix") -> None:
        super().__init__()
        self.d = d
        w = torch.eye(d, dtype=torch.float64) if matrix is None else as_tensor(
            matrix, (d, d), owner, name)
        p, lower, upper = torch.linalg.lu(w)
        diag = torch.diagonal(upper)
        scale = max(1.0, float(w.abs().max()))
        if bool((diag.abs() <= 1e-12 * scale).any()) or not bool(torch.isfinite(diag).all()):
            raise ValueError(f"{owner}: {name} is singular (|det| = {float(w.det().abs()):.3g})")
        self.register_buffer("permutation", p.to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_diag = nn.Parameter(diag.abs().log().to(dtype))
        self.register_buffer("sign_diag", torch.sign(diag).to(dtype))
        # The unit diagonal of L, made once (not per call); not saved: checkpoints keep their keys.
        self.register_buffer("identity", torch.eye(d, dtype=dtype), persistent=False)

    def forward(self, delta: Tensor | None = None, dtype: torch.dtype | None = None
                ) -> tuple[Tensor, Tensor]:
        dtype = dtype or self.lower.dtype
        lower, upper = cast(self.lower, dtype), cast(self.upper, dtype)
        log_diag = cast(self.log_diag, dtype)
        permutation, sign = cast(self.permutation, dtype), cast(self.sign_diag, dtype)
        if delta is None:
            m, logdet = self.shared(dtype)
            return m[None], logdet
        delta = cast(delta, dtype)
        lower = lower + delta
        upper = upper + delta
        log_diag = log_diag + soft_clamp(torch.diagonal(delta, dim1=-2, dim2=-1))
        lo = torch.tril(lower, -1) + cast(self.identity, dtype)
        up = torch.triu(upper, 1) + torch.diag_embed(sign * log_diag.exp())
        return permutation @ lo @ up, log_diag.sum(-1)

    def shared(self, dtype: torch.dtype | None = None, invert: bool = False
               ) -> tuple[Tensor, Tensor]:
        """One matrix for the batch: ``M`` (or ``M⁻¹``) ``(d, d)`` and ``log|det M|`` ``(1,)``.

        One autograd node with a hand-written backward
        (:class:`~pushforward.manifolds._fused.FactoredMatrix`); plain autograd operations inside
        a ``torch.func`` transform.

        Args:
            dtype: the computation dtype (default the parameters').
            invert: return ``M⁻¹`` instead of ``M`` (formed from the product, once per call).
        """
        dtype = dtype or self.lower.dtype
        args = (cast(self.lower, dtype), cast(self.upper, dtype), cast(self.log_diag, dtype),
                cast(self.permutation, dtype), cast(self.sign_diag, dtype),
                cast(self.identity, dtype), invert)
        if _v.in_torch_func():
            return factored_matrix_reference(*args)
        return FactoredMatrix.apply(*args)


class ContextOffsets(nn.Module):
    """``context -> (batch, size)`` offsets of a flow's raw parameters (MLP, zero last layer)."""

    def __init__(self, context_features: int, size: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.net = MLP(int(context_features), int(size), tuple(hidden), zero_last=True)

    def forward(self, context: Tensor, dtype: torch.dtype) -> Tensor:
        first = self.net[0]
        return self.net(context.to(first.weight.dtype)).to(dtype)
