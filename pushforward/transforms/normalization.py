"""Normalization layers as flows: ActNorm (Glow's per-channel affine with data-dependent init)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pushforward.core import Transform

__all__ = ["ActNorm"]


def _channel_view(param: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-channel ``(C,)`` parameter to broadcast over ``(batch, C, *spatial)``."""
    return param.reshape(1, -1, *([1] * (like.dim() - 2)))


class ActNorm(Transform):
    """Per-channel affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    Forward ``x = z ⊙ exp(s) + μ`` per channel; ``ladj = (Π spatial) · Σ_c s_c``;
    inverse ``z = (x − μ) ⊙ exp(−s)``.

    On the first ``inverse`` call in training mode, ``μ`` and ``exp(s)`` are set to the per-channel
    mean and standard deviation of the batch (averaged over ranks under DDP), so the first batch
    maps to zero mean and unit variance. The ``initialized`` flag is a saved buffer: a reloaded
    model never re-initialises.

    Args:
        shape: ``features`` for vectors or ``(C, H, W)`` for images (channels on dimension 1).

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.
    """

    def __init__(self, shape: int | Sequence[int]) -> None:
        super().__init__(shape)
        assert self.event_shape is not None
        channels = self.event_shape[0]
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._spatial = 1
        for s in self.event_shape[1:]:
            self._spatial *= s

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        dims = [0, *range(2, x.dim())]
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        moments = torch.stack([x.sum(dims), (x * x).sum(dims)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
            dist.all_reduce(count)
        mean = moments[0] / count
        var = (moments[1] / count - mean * mean).clamp_min(1e-12)
        self.loc.copy_(mean)
        self.log_scale.copy_(0.5 * torch.log(var))
        self.initialized.fill_(True)

    def _ladj(self, batch: int, like: Tensor) -> Tensor:
        return (self._spatial * self.log_scale.sum()).expand(batch).to(like.dtype)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = z * _channel_view(self.log_scale.exp(), z) + _channel_view(self.loc, z)
        return x, self._ladj(z.shape[0], z)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized) and x.shape[0] > 1:
            self._initialize(x)
        z = (x - _channel_view(self.loc, x)) * _channel_view((-self.log_scale).exp(), x)
        return z, -self._ladj(x.shape[0], x)
