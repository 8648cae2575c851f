"""Normalization layers as flows: ActNorm (Glow's data-dependent affine) and BatchNorm (MAF)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pushforward.core import Transform
from pushforward.specs import serializable

__all__ = ["ActNorm", "BatchNorm"]


def _channel_view(param: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-channel ``(C,)`` parameter to broadcast over ``(batch, C, *spatial)``."""
    return param.reshape(1, -1, *([1] * (like.dim() - 2)))


@serializable("actnorm")
class ActNorm(Transform):
    """Per-channel affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    Forward ``x = z ⊙ exp(s) + μ`` per channel; ``ladj = (Π spatial) · Σ_c s_c``;
    inverse ``z = (x − μ) ⊙ exp(−s)``.

    On the first ``inverse`` call in training mode, ``μ`` and ``exp(s)`` are set to the per-channel
    mean and standard deviation of the batch (averaged over ranks under DDP), so the first batch
    maps to zero mean and unit variance. The ``initialized`` flag is a saved buffer: a reloaded
    model never re-initialises. A batch whose moments overflow the dtype (values near its
    largest) leaves the layer uninitialised rather than storing infinite parameters.

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
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            return  # moments overflow the dtype: stay uninitialised, the next batch decides
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


@serializable("batchnorm")
class BatchNorm(Transform):
    """Batch normalization as a flow layer (Papamakarios et al., 2017), per channel.

    Normalizing direction (``inverse``): ``z = (x − m) / sqrt(v + ε) ⊙ exp(γ) + β``,
    ``ladj = (Π spatial) · Σ_c [γ_c − ½ log(v_c + ε)]``. Forward (generative):
    ``x = (z − β) ⊙ exp(−γ) ⊙ sqrt(v + ε) + m``, ``ladj`` its negative.

    Statistics ``(m, v)``: in training mode the ``inverse`` uses the batch mean and (biased)
    variance over the batch and spatial dimensions — the ``ladj`` is computed from, and
    differentiated through, these same statistics — and updates the running averages
    ``running ← (1 − momentum) · running + momentum · batch`` (PyTorch's convention; the running
    variance uses the unbiased batch variance). In eval mode, and in the generative direction in
    every mode (samples have no batch of data), the persisted ``running_mean`` /
    ``running_var`` buffers are used, so an eval-mode layer is a fixed affine map whose inverse
    is exact. A training batch of one sample has no variance; it uses the running statistics.
    Under DDP the batch statistics are per rank (not synchronised).

    Args:
        shape: ``features`` for vectors or ``(C, H, W)`` for images (channels on dimension 1).
        momentum: weight of the current batch in the running averages, in ``(0, 1]``.
        eps: added to the variance, ``> 0``.

    References:
        Masked Autoregressive Flow for Density Estimation, Papamakarios, Pavlakou & Murray,
        2017, arXiv:1705.07057.
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> bn = BatchNorm(3)
        >>> z, ladj = bn.inverse(torch.randn(64, 3) * 4 + 1)
        >>> bool(z.std(0).sub(1).abs().max() < 0.05), bn.running_mean.shape
        (True, torch.Size([3]))
    """

    def __init__(
        self, shape: int | Sequence[int], momentum: float = 0.1, eps: float = 1e-5
    ) -> None:
        super().__init__(shape)
        assert self.event_shape is not None
        if not 0 < momentum <= 1:
            raise ValueError(f"BatchNorm: momentum must be in (0, 1], got {momentum}")
        if not eps > 0:
            raise ValueError(f"BatchNorm: eps must be positive, got {eps}")
        self.momentum, self.eps = float(momentum), float(eps)
        channels = self.event_shape[0]
        self.log_gamma = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self._spatial = 1
        for s in self.event_shape[1:]:
            self._spatial *= s

    def _statistics(self, x: Tensor) -> tuple[Tensor, Tensor]:
        count = x.numel() // x.shape[1] if x.numel() else 0
        if not (self.training and count > 1):
            return self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
            unbiased = var.detach() * (count / (count - 1))
            self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return mean, var

    def _log_scale(self, var: Tensor) -> Tensor:
        """Per-channel log of the normalizing scale ``exp(γ)/sqrt(v + ε)``."""
        return self.log_gamma - 0.5 * torch.log(var + self.eps)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, var = self._statistics(x)
        log_scale = self._log_scale(var)
        z = (x - _channel_view(mean, x)) * _channel_view(log_scale.exp(), x)
        z = z + _channel_view(self.beta, x)
        ladj = (self._spatial * log_scale.sum()).expand(x.shape[0])
        return z, ladj

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean.to(z.dtype), self.running_var.to(z.dtype)
        log_scale = self._log_scale(var)
        x = (z - _channel_view(self.beta, z)) * _channel_view((-log_scale).exp(), z)
        x = x + _channel_view(mean, z)
        return x, (-self._spatial * log_scale.sum()).expand(z.shape[0])
