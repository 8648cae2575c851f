"""Euclidean base distributions: standard and diagonal Gaussians, plain and conditional.

Each is an ``nn.Module`` with ``log_prob(z, context=None)`` of shape ``(batch,)`` and
``sample(n, context=None, temperature=1.0)`` of shape ``(n, *event_shape)``; conditional ones take
one context row per sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import BaseDistribution
from pushforward.nn import MLP
from pushforward.specs import serializable

__all__ = [
    "BaseDistribution",
    "StandardNormal",
    "DiagonalNormal",
    "ConditionalDiagonalNormal",
]

_LOG_2PI = math.log(2 * math.pi)


_LOG_SCALE_BOUND = 10.0  # |log σ| of ConditionalDiagonalNormal stays below this


def _gaussian_log_prob(z: Tensor, loc: Tensor, log_scale: Tensor, event_dims: int) -> Tensor:
    """``Σ log N(z; loc, exp(log_scale)²)`` over the last ``event_dims`` dimensions."""
    u = (z - loc) * torch.exp(-log_scale)
    density = -0.5 * (u * u + _LOG_2PI) - log_scale
    return density.flatten(start_dim=z.dim() - event_dims).sum(-1)


@serializable("standard-normal")
class StandardNormal(BaseDistribution):
    """``N(0, I)`` on ``features`` (an int) or an event ``shape``.

    ``log p(z) = −½‖z‖² − (D/2) log 2π``.

    Args:
        shape: number of features or the event shape.
    """

    standard_normal = True

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _v.as_shape(shape)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        d = math.prod(self.event_shape)
        return -0.5 * z.flatten(1).pow(2).sum(-1) - 0.5 * d * _LOG_2PI

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        z = torch.randn(n, *self.event_shape, dtype=self._anchor.dtype,
                        device=self._anchor.device)
        return z if temperature == 1.0 else z * temperature

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"event_shape={self.event_shape}"


@serializable("diagonal-normal")
class DiagonalNormal(BaseDistribution):
    """``N(μ, diag σ²)`` with learnable ``μ`` and ``log σ`` (initialised to 0: standard normal).

    ``log p(z) = Σ_i [−½((z_i − μ_i)/σ_i)² − log σ_i − ½ log 2π]``.

    Args:
        shape: number of features or the event shape.
    """

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _v.as_shape(shape)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        return _gaussian_log_prob(z, self.loc, self.log_scale, len(self.event_shape))

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        eps = torch.randn(n, *self.event_shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + temperature * torch.exp(self.log_scale) * eps

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"event_shape={self.event_shape}"


@serializable("conditional-diagonal-normal")
class ConditionalDiagonalNormal(BaseDistribution):
    """``N(μ(c), diag σ(c)²)`` where a network maps the context ``c`` to ``(μ, log σ)``.

    ``log σ = 10 tanh(h/10)`` for the network output ``h`` (a soft clamp, the identity near 0).

    Args:
        shape: number of features or the event shape.
        context_features: width of the context.
        hidden: hidden widths of the context network (an MLP, zero-initialised last layer so the
            distribution starts as ``N(0, I)``).
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        context_features: int,
        hidden: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        self.event_shape = _v.as_shape(shape)
        self.context_features = _v.check_int(context_features, "ConditionalDiagonalNormal",
                                             "context_features", type_error=False)
        d = math.prod(self.event_shape)
        self.net = MLP(self.context_features, 2 * d, hidden, zero_last=True)

    def _params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.net(context).chunk(2, dim=-1)
        # Soft clamp (≈ identity for |log σ| ≲ 3): an extreme context cannot overflow exp(log σ).
        log_scale = _LOG_SCALE_BOUND * torch.tanh(log_scale / _LOG_SCALE_BOUND)
        shape = (context.shape[0], *self.event_shape)
        return loc.reshape(shape), log_scale.reshape(shape)

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        assert context is not None
        loc, log_scale = self._params(context)
        return _gaussian_log_prob(z, loc, log_scale, len(self.event_shape))

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        assert context is not None
        loc, log_scale = self._params(context)
        return loc + temperature * torch.exp(log_scale) * torch.randn_like(loc)

