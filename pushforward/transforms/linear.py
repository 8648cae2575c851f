"""Linear transforms: permutations and LU-parametrised invertible matrices (and 1×1 convs)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Transform
from pushforward.specs import serializable

__all__ = ["Permutation", "Reverse", "RandomPermutation", "LULinear", "InvertibleConv1x1"]


@serializable("permutation")
class Permutation(Transform):
    """Permute dimension 1 (features, or channels of an image): ``x = z[:, π]``.

    ``ladj = 0``; inverse ``z = x[:, π⁻¹]``.

    Args:
        perm: a permutation of ``0 … C−1``.
        shape: the event shape (default ``(C,)``); for images ``(C, H, W)``.
    """

    def __init__(self, perm: Sequence[int] | Tensor, shape: Sequence[int] | None = None) -> None:
        perm_t = torch.as_tensor(perm, dtype=torch.long).flatten()
        n = perm_t.numel()
        if n == 0 or not torch.equal(torch.sort(perm_t).values, torch.arange(n)):
            raise ValueError(f"Permutation: {perm!r} is not a permutation of 0..{n - 1}")
        shape = (n,) if shape is None else tuple(shape)
        if shape[0] != n:
            raise ValueError(f"Permutation: perm has {n} entries but shape {shape} has {shape[0]}")
        super().__init__(shape)
        self.register_buffer("perm", perm_t)
        self.register_buffer("inverse_perm", torch.argsort(perm_t))

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z.index_select(1, self.perm), z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.inverse_perm), x.new_zeros(x.shape[0])


@serializable("reverse")
class Reverse(Permutation):
    """Reverse the order of the features: ``x_i = z_{d−1−i}`` (``ladj = 0``).

    Args:
        features: the number of features ``d`` (of the flattened event).
        shape: the event shape, when it is not ``(features,)``.
    """

    def __init__(self, features: int, shape: Sequence[int] | None = None) -> None:
        super().__init__(torch.arange(int(features) - 1, -1, -1), shape)


@serializable("random-permutation")
class RandomPermutation(Permutation):
    """A fixed random permutation drawn from ``seed`` (``ladj = 0``).

    Args:
        features: the number of features ``d`` (of the flattened event).
        seed: seed of the permutation.
        shape: the event shape, when it is not ``(features,)``.
    """

    def __init__(
        self, features: int, seed: int = 0, shape: Sequence[int] | None = None
    ) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        super().__init__(torch.randperm(int(features), generator=generator), shape)


def _random_rotation(d: int) -> Tensor:
    """A random rotation (Haar-distributed orthogonal matrix), in float64."""
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@serializable("lu-linear")
class LULinear(Transform):
    """Invertible linear map ``x = W z + b`` with ``W = P L U`` (Kingma & Dhariwal, 2018).

    ``P`` is a fixed permutation, ``L`` unit lower triangular, ``U`` upper triangular with
    diagonal ``sign ⊙ exp(log|u|)`` (sign fixed), so ``W`` is invertible for every parameter value.
    ``ladj = Σ_i log|u_ii|`` in O(d); inverse ``z = U⁻¹ L⁻¹ Pᵀ (x − b)`` by triangular solves.
    Acts on dimension 1, so the same layer is a 1×1 convolution on images (``ladj`` times the
    number of pixels).

    Args:
        features: the dimension ``d``.
        matrix: initial ``W`` (default: a random rotation). A singular matrix is refused.
        bias: initial ``b`` (default 0).
        shape: the event shape (default ``(d,)``; ``(C, H, W)`` for images).
    """

    def __init__(
        self,
        features: int,
        matrix: Tensor | None = None,
        bias: Tensor | None = None,
        shape: Sequence[int] | None = None,
    ) -> None:
        d = int(features)
        shape = (d,) if shape is None else tuple(shape)
        if shape[0] != d:
            raise ValueError(f"{type(self).__name__}: shape {shape} must start with {d}")
        super().__init__(shape)
        # Factorised in float64, stored in the default dtype (like every other parameter).
        dtype = torch.get_default_dtype()
        w = _random_rotation(d) if matrix is None else torch.as_tensor(matrix, dtype=torch.float64)
        if w.shape != (d, d) or not torch.isfinite(w).all():
            raise ValueError(f"{type(self).__name__}: matrix must be a finite {d}x{d} tensor")
        p, lower, upper = torch.linalg.lu(w.double())
        diag = torch.diagonal(upper)
        if (diag.abs() <= 1e-12 * max(1.0, float(w.abs().max()))).any():
            raise ValueError(f"{type(self).__name__}: matrix is singular")
        self.register_buffer("permutation", p.to(dtype))
        self.lower = nn.Parameter(torch.tril(lower, -1).to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_diag = nn.Parameter(diag.abs().log().to(dtype))
        self.register_buffer("sign_diag", torch.sign(diag).to(dtype))
        b = torch.zeros(d) if bias is None else torch.as_tensor(bias, dtype=dtype)
        if b.shape != (d,):
            raise ValueError(f"{type(self).__name__}: bias must have shape ({d},)")
        self.bias = nn.Parameter(b.clone())
        self.register_buffer("_eye", torch.eye(d), persistent=False)
        self._pixels = 1
        for s in shape[1:]:
            self._pixels *= s

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = torch.tril(self.lower, -1) + self._eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign_diag * self.log_diag.exp())
        return lower, upper

    @property
    def matrix(self) -> Tensor:
        """The effective matrix ``W = P L U``."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def _ladj(self, batch: int) -> Tensor:
        return (self._pixels * self.log_diag.sum()).expand(batch)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = (z.movedim(1, -1) @ self.matrix.T + self.bias).movedim(-1, 1)
        return x, self._ladj(z.shape[0])

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        lower, upper = self._factors()
        y = (x.movedim(1, -1) - self.bias) @ self.permutation  # rows of Pᵀ(x − b)
        flat = y.reshape(-1, y.shape[-1])
        # Row form: solve A Lᵀ = y, then Z Uᵀ = A.
        a = torch.linalg.solve_triangular(lower.T, flat, upper=True, left=False,
                                          unitriangular=True)
        z = torch.linalg.solve_triangular(upper.T, a, upper=False, left=False)
        return z.reshape(y.shape).movedim(-1, 1), -self._ladj(x.shape[0])


@serializable("invertible-conv1x1")
class InvertibleConv1x1(LULinear):
    """Glow's invertible 1×1 convolution on ``(C, H, W)`` images, LU-parametrised.

    Per pixel ``x_ij = W z_ij + b``; ``ladj = H·W·Σ log|u_ii|``; inverse by triangular solves.

    Args:
        shape: the image shape ``(C, H, W)``.
        matrix: an initial invertible ``C × C`` matrix ``W`` (default: a random rotation).
    """

    def __init__(self, shape: Sequence[int], matrix: Tensor | None = None) -> None:
        shape = _v.as_shape(shape)
        if len(shape) != 3:
            raise ValueError(f"InvertibleConv1x1: shape must be (C, H, W), got {shape}")
        super().__init__(shape[0], matrix=matrix, shape=shape)
