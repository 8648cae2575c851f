"""Context pre-processing: a fixed standardiser for the conditioning variable of a flow.

A conditional flow learns faster when its context is on a unit scale. ``ContextStandardization``
maps the raw context ``c`` to ``(c − μ)/σ`` with ``μ`` and ``σ`` fixed from data (buffers, never
trained, saved with the state dict). Use it as a flow's ``embedding`` (alone, or first in an
``nn.Sequential`` before a learned embedding net). It does not change the flow's density in
``x``: the context is only an input of the conditioner.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ContextStandardization"]


class ContextStandardization(nn.Module):
    """The fixed map ``c ↦ (c − μ)/σ`` applied to a context of any event shape.

    Args:
        loc: ``μ``, the context's event shape (or broadcastable to it, e.g. a scalar).
        scale: ``σ > 0``, same shape as ``loc``.

    Raises:
        ValueError: ``loc``/``scale`` not finite, shapes differ, or a scale is not positive.

    Example:
        >>> import torch, pushforward as pf
        >>> context = torch.tensor([[1.0, 10.0], [3.0, 30.0]])
        >>> standardize = pf.ContextStandardization.from_data(context)
        >>> standardize(context)
        tensor([[-0.7071, -0.7071],
                [ 0.7071,  0.7071]])
    """

    def __init__(self, loc: Tensor | float | Sequence[float],
                 scale: Tensor | float | Sequence[float]) -> None:
        super().__init__()
        loc_t = torch.as_tensor(loc, dtype=torch.get_default_dtype()).detach().clone()
        scale_t = torch.as_tensor(scale, dtype=torch.get_default_dtype()).detach().clone()
        if loc_t.shape != scale_t.shape:
            raise ValueError(f"ContextStandardization: loc {tuple(loc_t.shape)} and scale "
                             f"{tuple(scale_t.shape)} must have the same shape")
        if not (torch.isfinite(loc_t).all() and torch.isfinite(scale_t).all()):
            raise ValueError("ContextStandardization: loc and scale must be finite")
        if not (scale_t > 0).all():
            raise ValueError("ContextStandardization: every scale must be positive")
        self.register_buffer("loc", loc_t)
        self.register_buffer("scale", scale_t)

    @classmethod
    def from_data(cls, context: Tensor, structured: bool = False,
                  min_scale: float = 1e-7) -> ContextStandardization:
        """The standardiser of a batch of contexts ``(N, *shape)``.

        ``μ`` and ``σ`` are the per-entry mean and standard deviation over the batch (NaN/inf
        rows are ignored); with ``structured=True`` one scalar ``μ``, ``σ`` for all entries (a
        time series, an image). A constant entry gets ``σ = 1``; ``σ`` is at least
        ``min_scale``.

        Args:
            context: the contexts, ``(N, *shape)`` with at least one finite row.
            structured: one mean and scale for all entries instead of one per entry.
            min_scale: the smallest ``σ`` kept.

        Returns:
            The standardiser, in the dtype of ``context``.

        Raises:
            ValueError: ``context`` is not a floating tensor ``(N, ...)`` with a finite row.
        """
        if not isinstance(context, Tensor) or context.dim() < 1 \
                or not context.is_floating_point():
            raise ValueError("ContextStandardization.from_data: context must be a floating "
                             "tensor (N, ...)")
        rows = context.reshape(context.shape[0], -1)
        finite = torch.isfinite(rows).all(1)
        if not bool(finite.any()):
            raise ValueError("ContextStandardization.from_data: no finite context row")
        data = context[finite].double()
        if structured:
            loc = data.mean()
            scale = data.std() if data.numel() > 1 else torch.ones((), dtype=data.dtype)
        else:
            loc = data.mean(0)
            scale = data.std(0) if data.shape[0] > 1 else torch.ones_like(loc)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).clamp_min(min_scale)
        return cls(loc.to(context.dtype), scale.to(context.dtype)).to(context.dtype)

    def forward(self, context: Tensor) -> Tensor:
        """``(c − μ)/σ`` for a context ``(batch, *shape)``."""
        return (context - self.loc) / self.scale

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"shape={tuple(self.loc.shape)}"
