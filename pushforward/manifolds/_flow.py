"""Shared plumbing of the manifold flows (private).

Shape ``(n,)``, manifold validation of both sides, and an optional context network producing
per-sample parameter offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward.core import Transform
from pushforward.manifolds._params import ContextOffsets
from pushforward.manifolds.spaces import Simplex, Sphere


class ManifoldFlow(Transform):
    """A transform of a manifold onto itself, on ambient coordinates ``(batch, n)``."""

    def __init__(
        self,
        manifold: Sphere | Simplex,
        context_features: int,
        hidden: Sequence[int],
        size: int,
    ) -> None:
        self.manifold = manifold
        super().__init__((manifold.n,), context_features=context_features)
        self.n = manifold.n
        self.context_net = (
            ContextOffsets(self.context_features, size, hidden) if self.context_features else None
        )

    def _offsets(self, context: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        if self.context_net is None:
            return None
        if context is None:
            raise ValueError(f"{type(self).__name__}: is conditional and needs a context")
        return self.context_net(context, dtype)

    def _check_x(self, x: Tensor) -> None:
        self.manifold.validate(x, owner=type(self).__name__)

    def _check_z(self, z: Tensor) -> None:
        self.manifold.validate(z, owner=type(self).__name__)

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        extra = f", context_features={self.context_features}" if self.context_features else ""
        return f"n={self.n}{extra}"
