"""Elementwise monotone maps ("transformers") shared by coupling and autoregressive layers.

A map is a pure function of ``(inputs, params)``: ``params`` has shape ``(*inputs.shape, n)``
with ``n = map.params`` numbers per element, produced by a conditioner. ``forward`` and
``inverse`` return the output and the elementwise ``log|∂out/∂in|`` (same shape as the input);
the layer sums it over the event. Affine → spline is one argument: ``elementwise_map("spline")``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "ElementwiseMap",
    "AffineMap",
    "AdditiveMap",
    "elementwise_map",
    "register_map",
    "soft_clamp",
]


def soft_clamp(u: Tensor, bound: float) -> Tensor:
    """``bound · tanh(u / bound)``: identity near 0, smoothly limited to ``(−bound, bound)``."""
    return bound * torch.tanh(u / bound)


class ElementwiseMap(Protocol):
    """Interface of an elementwise monotone map with ``params`` numbers per element."""

    params: int

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]: ...


class AffineMap:
    """``x = z · exp(s) + t`` with a soft-clamped log-scale ``s = B tanh(ŝ/B)``.

    ``log|∂x/∂z| = s``; inverse ``z = (x − t) · exp(−s)``. The clamp keeps ``exp(s)`` within
    ``[e^{−B}, e^{B}]`` so no raw conditioner output can overflow.

    Args:
        bound: the clamp ``B`` on the log-scale (default 3, chosen by the experiment in
            ``benchmarks/safety.py``); ``None`` (or ``inf``) disables it — unsafe, kept for
            experiments: a raw log-scale can overflow ``exp`` and produce inf/NaN.
    """

    params = 2

    def __init__(self, bound: float | None = 3.0) -> None:
        if bound is not None and not bound > 0:
            raise ValueError(f"AffineMap: bound must be positive or None, got {bound}")
        self.bound = None if bound is None or math.isinf(bound) else float(bound)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        raw_scale, shift = params.unbind(-1)
        if self.bound is None:
            return raw_scale, shift
        return soft_clamp(raw_scale, self.bound), shift

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._split(params)
        return z * log_scale.exp() + shift, log_scale

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = self._split(params)
        return (x - shift) * (-log_scale).exp(), -log_scale


class AdditiveMap:
    """``x = z + t`` (NICE): ``log|∂x/∂z| = 0``; inverse ``z = x − t``."""

    params = 1

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return z + params[..., 0], torch.zeros_like(z)

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x - params[..., 0], torch.zeros_like(x)


_FACTORIES: dict[str, type] = {"affine": AffineMap, "additive": AdditiveMap}


def register_map(name: str, factory: type) -> None:
    """Make ``elementwise_map(name, **options)`` build ``factory(**options)``."""
    _FACTORIES[name] = factory


def elementwise_map(name: str | ElementwiseMap, **options: object) -> ElementwiseMap:
    """An elementwise map by name (``"affine"``, ``"additive"``, ``"spline"``) or pass-through.

    Raises:
        ValueError: unknown name.
    """
    if not isinstance(name, str):
        return name
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown elementwise map {name!r}; choose one of {sorted(_FACTORIES)}"
        ) from None
    return factory(**options)
