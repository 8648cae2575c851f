"""Distances between neighbouring points on the sphere: the widths of flow matching's smoothing.

``neighbour_distances(x, k)`` gives each point's geodesic distance to its nearest and ``k``-th
nearest other point; ``NeighbourDistances`` tabulates ``d₁``, ``d₂`` over a fixed training set
once and looks a batch's rows up by value (``GeodesicPath.smooth`` reads its bandwidths there).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["angle", "neighbour_distances", "smoothing_distances", "NeighbourDistances"]


def angle(a: Tensor, b: Tensor) -> Tensor:
    """The angle between unit vectors, ``2·atan2(‖a − b‖, ‖a + b‖)``: accurate at 0 and at π."""
    return 2 * torch.atan2(torch.linalg.vector_norm(a - b, dim=-1),
                           torch.linalg.vector_norm(a + b, dim=-1))


def neighbour_distances(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``(d₁, d_k)``: distances from each point to its nearest and ``k``-th nearest other.

    Geodesic, each ``(batch,)``, over the points of the batch (0 where there are not that many).
    """
    if x.shape[0] <= k:
        zero = x.new_zeros(x.shape[0])
        return zero, zero
    rows = max(1, (1 << 24) // x.shape[0])  # bounded memory: 2²⁴ cosines at a time
    nearest = []
    for start in range(0, x.shape[0], rows):
        cosine = x[start:start + rows] @ x.T
        index = torch.arange(start, start + cosine.shape[0], device=x.device)
        cosine[index - start, index] = -2.0  # not itself
        nearest.append(cosine.topk(k, dim=1).indices[:, [0, -1]])
    nearest = torch.cat(nearest)
    return angle(x, x[nearest[:, 0]]), angle(x, x[nearest[:, 1]])


def smoothing_distances(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(d₁, d₂, N₁/N)`` over the points ``x``.

    ``N₁/N`` is the share of points whose location occurs once (``d₁ > 0``): Good and Turing's
    estimate of the chance that a new point falls where none was seen.
    """
    nearest, second = neighbour_distances(x, 2)
    return nearest, second, (nearest > 0).to(x.dtype).mean()


def _key(x: Tensor) -> Tensor:
    """``((x₀π + x₁)π + x₂)…`` in float64, one scalar per row.

    Elementwise steps only, each correctly rounded: a row gets the same bits in any batch and on
    any device (a matrix product's rounding may depend on the row's place in the batch).
    """
    x = x.double()
    key = x[:, 0]
    for column in x.unbind(-1)[1:]:
        key = key * math.pi + column
    return key


class NeighbourDistances:
    """``d₁``, ``d₂`` of every point of a fixed data set, computed once and looked up by value.

    Smoothing a batch with distances measured inside the batch overstates them when the batch
    is a subsample: a batch holding a share ``f`` of the data has ``f`` times its density, so
    its ``k``-th neighbour distances are ``f^{−1/m}`` times the data set's on an
    ``m``-dimensional sphere (fire: 4,096 of 10,249 points, 1.6× too wide). This table holds the
    distances within the whole set and ``N₁/N`` over it; ``lookup(x)`` finds a batch's rows by
    a scalar key of each row (sorted, ``searchsorted``) and checks them for equality.

    Args:
        x: the data set ``(N, n)`` on the sphere.

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
        >>> table = NeighbourDistances(x)
        >>> d1, d2, unseen = table.lookup(x[:5])
        >>> d1.shape, bool((d2 >= d1).all()), float(unseen)
        (torch.Size([5]), True, 1.0)
    """

    #: the largest data set tabulated (the search costs ``N²`` cosines once; above it, ``fit``
    #: keeps the in-batch distances)
    limit = 1 << 15

    def __init__(self, x: Tensor) -> None:
        x = x.detach()
        key = _key(x)
        order = key.argsort()
        nearest, second, self.unseen = smoothing_distances(x)
        self.keys, self.points = key[order], x[order]
        self.nearest, self.second = nearest[order], second[order]

    def lookup(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(d₁, d₂, N₁/N)`` of the rows of ``x`` (each ``(batch,)``, and a scalar), or None.

        None when a row of ``x`` is not a point of the table (the caller measures in the batch).
        """
        if x.dim() != 2 or x.shape[1] != self.points.shape[1] or x.dtype != self.points.dtype:
            return None
        if x.device != self.points.device:  # once: the table follows the batches
            for name in ("keys", "points", "nearest", "second", "unseen"):
                setattr(self, name, getattr(self, name).to(x.device))
        index = torch.searchsorted(self.keys, _key(x)).clamp(max=self.keys.shape[0] - 1)
        if not torch.equal(self.points[index], x):
            return None
        return self.nearest[index], self.second[index], self.unseen
