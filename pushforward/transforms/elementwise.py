"""Elementwise transforms: learnable affine map, and the sigmoid / logit pair for boxes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Inverse, Transform, serializable

__all__ = ["Affine", "Sigmoid", "Logit"]


def _sum_event(values: Tensor) -> Tensor:
    """Sum every dimension but the batch: ``(batch, ...) -> (batch,)``."""
    return values.flatten(1).sum(-1) if values.dim() > 1 else values  # (batch,): scalar events


@serializable("affine")
class Affine(Transform):
    """Elementwise affine map ``x = a ⊙ z + b`` with learnable ``a ≠ 0`` and ``b``.

    ``a = sign ⊙ exp(log|a|)`` (the sign is fixed at construction), so ``a`` never reaches 0.
    ``ladj = Σ log|a_i|``; inverse ``z = (x − b) / a``.

    Args:
        shape: number of features or the event shape (inferred from ``scale``/``shift`` if None).
        scale: initial ``a`` (broadcast to ``shape``; default 1). Zero entries are refused.
        shift: initial ``b`` (broadcast to ``shape``; default 0).
        trainable: learn ``a`` and ``b`` (False: fixed buffers, e.g. a standardisation).
    """

    def __init__(
        self,
        shape: int | Sequence[int] | None = None,
        scale: Tensor | float | None = None,
        shift: Tensor | float | None = None,
        trainable: bool = True,
    ) -> None:
        if shape is None:
            given = next((torch.as_tensor(v) for v in (scale, shift) if v is not None), None)
            if given is None or given.dim() == 0:
                raise ValueError("Affine: give the shape, or a scale or shift tensor to infer it")
            shape = tuple(given.shape)
        super().__init__(shape)
        assert self.event_shape is not None
        a = torch.ones(self.event_shape)
        if scale is not None:
            a = torch.as_tensor(scale, dtype=a.dtype).expand(self.event_shape).clone()
        b = torch.zeros(self.event_shape)
        if shift is not None:
            b = torch.as_tensor(shift, dtype=b.dtype).expand(self.event_shape).clone()
        if not torch.isfinite(a).all() or (a == 0).any():
            raise ValueError("Affine: scale must be finite and non-zero everywhere")
        if not torch.isfinite(b).all():
            raise ValueError("Affine: shift must be finite")
        if trainable:
            self.log_abs_scale = nn.Parameter(a.abs().log())
            self.shift = nn.Parameter(b)
        else:
            self.register_buffer("log_abs_scale", a.abs().log())
            self.register_buffer("shift", b)
        self.register_buffer("sign", torch.sign(a))

    @property
    def scale(self) -> Tensor:
        """The effective scale ``a``."""
        return self.sign * torch.exp(self.log_abs_scale)

    def _ladj(self, batch: int) -> Tensor:
        return self.log_abs_scale.sum().expand(batch)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return z * self.scale + self.shift, self._ladj(z.shape[0])

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return (x - self.shift) / self.scale, -self._ladj(x.shape[0])


@serializable("sigmoid")
class Sigmoid(Transform):
    """Squash to a box: ``x = l + (h − l) σ(z)``, elementwise.

    ``ladj = Σ [log(h − l) + log σ(z) + log σ(−z)]``; inverse ``z = logit((x − l)/(h − l))``,
    defined on ``l ≤ x ≤ h`` (the end points are clamped one ulp inside so they stay finite).

    Args:
        low: lower bound ``l`` (a number or a per-feature tensor).
        high: upper bound ``h > l``.
        shape: optional event shape, for input checks.
    """

    def __init__(
        self,
        low: float | Tensor = 0.0,
        high: float | Tensor = 1.0,
        shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(shape)
        dtype = torch.get_default_dtype()
        low_t, high_t = torch.as_tensor(low, dtype=dtype), torch.as_tensor(high, dtype=dtype)
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()):
            raise ValueError("Sigmoid: bounds must be finite")
        if not (high_t > low_t).all():
            raise ValueError("Sigmoid: every upper bound must exceed its lower bound")
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)

    def spec(self) -> dict[str, object]:
        """A JSON record that rebuilds this layer (used by checkpoints of bounded flows)."""
        return {"type": "sigmoid", "low": self.low.tolist(), "high": self.high.tolist(),
                "shape": list(self.event_shape or ())}

    @classmethod
    def from_spec(cls, record: dict[str, Any]) -> Sigmoid:
        """Rebuild from ``spec()``."""
        return cls(torch.tensor(record["low"]), torch.tensor(record["high"]),
                   tuple(record["shape"]) or None)

    def _log_width(self, like: Tensor) -> Tensor:
        return torch.log(self.high - self.low).expand_as(like)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.low + (self.high - self.low) * torch.sigmoid(z)
        ladj = self._log_width(z) + F.logsigmoid(z) + F.logsigmoid(-z)
        return x, _sum_event(ladj)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        eps = torch.finfo(x.dtype).eps
        u = ((x - self.low) / (self.high - self.low)).clamp(eps, 1 - eps)
        z = torch.log(u) - torch.log1p(-u)
        ladj = -(self._log_width(x) + torch.log(u) + torch.log1p(-u))
        return z, _sum_event(ladj)

    def _inside_x(self, x: Tensor) -> Tensor:
        return ((x >= self.low) & (x <= self.high)).reshape(x.shape[0], -1).all(1)

    def _check_x(self, x: Tensor) -> None:
        outside = (x < self.low) | (x > self.high)
        if outside.any():
            raise _v.InputOutsideDomain(
                f"Sigmoid.inverse: {int(outside.sum())} value(s) lie outside the bounds "
                f"[{self.low.min().item():g}, {self.high.max().item():g}]"
            )


@serializable("box-logit")
class Logit(Inverse):
    """Unbounded from a box: ``x = logit((z − l)/(h − l))``, the inverse of ``Sigmoid(l, h)``.

    ``ladj = −Σ [log(h − l) + log u + log(1 − u)]``, ``u = (z − l)/(h − l)``.

    Args:
        low: the box's lower corner ``l`` (a float or a tensor broadcast to ``shape``).
        high: the box's upper corner ``h > l``.
        shape: the event shape (inferred from tensor bounds if None).
    """

    def __init__(
        self,
        low: float | Tensor = 0.0,
        high: float | Tensor = 1.0,
        shape: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(Sigmoid(low, high, shape))


