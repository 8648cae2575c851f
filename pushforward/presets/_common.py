"""Helpers shared by the preset families: sizes, widths and the vector/image plumbing."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pushforward.core import Chain, Flow, Transform
from pushforward.distributions import StandardNormal
from pushforward.transforms.images import Flatten

__all__ = ["dimension", "widths", "channels", "normalizing", "vector_flow", "image_shape"]


def dimension(name: str, features: int | None, shape: Sequence[int] | None) -> int:
    """The vector dimension from ``features`` or a flattened ``shape`` (they must agree).

    Args:
        name: the preset (for messages).
        features: the dimension, or None when ``shape`` is given.
        shape: an event shape to flatten, or None.

    Returns:
        ``features``, or the product of ``shape``.

    Raises:
        ValueError: neither is given, they disagree, or ``features < 1``.
    """
    if shape is not None:
        d = math.prod(int(s) for s in shape)
        if features is not None and int(features) != d:
            raise ValueError(f"{name}: features={features} disagrees with shape {tuple(shape)}")
        return d
    if features is None:
        raise ValueError(f"{name}: give features (vectors) or shape=(C, H, W) (images)")
    if int(features) < 1:
        raise ValueError(f"{name}: features must be >= 1, got {features}")
    return int(features)


def widths(hidden: int | Sequence[int] | None, default: Sequence[int]) -> tuple[int, ...]:
    """MLP hidden widths: ``default`` for None, two layers of ``hidden`` for an int."""
    if hidden is None:
        return tuple(default)
    if isinstance(hidden, int):
        return (hidden, hidden)
    return tuple(int(h) for h in hidden)


def channels(hidden: int | Sequence[int] | None, default: int) -> int:
    """Conv channels: ``default`` for None, the (first) width otherwise."""
    if hidden is None:
        return default
    return int(hidden) if isinstance(hidden, int) else int(list(hidden)[0])


def normalizing(layers: Sequence[Transform]) -> Chain:
    """A chain from layers listed in the normalizing order (data side first)."""
    return Chain(list(reversed(layers)))


def vector_flow(layers: list[Transform], d: int, shape: Sequence[int] | None) -> Flow:
    """Generative-order ``layers`` on ``(d,)``, reshaped to ``shape`` at the data end."""
    if shape is not None:
        layers = [*layers, Flatten(tuple(int(s) for s in shape))]
    return Flow(Chain(layers), StandardNormal(d))


def image_shape(name: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)`` with positive sizes.

    Raises:
        ValueError: not three positive sizes.
    """
    out = tuple(int(s) for s in shape)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{name}: shape must be (C, H, W) with positive sizes, got {out}")
    return out  # type: ignore[return-value]
