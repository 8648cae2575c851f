"""Image reshaping transforms: squeeze (space-to-depth), flatten, and the multi-scale architecture.

Direction convention (forward = generative, ``z -> x``): the *data* side is the image
``(C, H, W)``; the *latent* side is what the normalizing direction produces from it. So
``Squeeze.inverse`` is space-to-depth ``(C, H, W) -> (4C, H/2, W/2)`` and ``Squeeze.forward`` is
depth-to-space; ``MultiScale.inverse`` maps an image to one flat latent vector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Transform, serializable
from pushforward.specs import spec_name

__all__ = ["Squeeze", "Flatten", "MultiScale"]


def _image_shape(shape: int | Sequence[int], owner: str) -> tuple[int, int, int]:
    shape = _v.as_shape(shape)
    if len(shape) != 3:
        raise ValueError(f"{owner}: shape must be (C, H, W), got {shape}")
    return shape  # type: ignore[return-value]


@serializable("squeeze")
class Squeeze(Transform):
    """Space-to-depth: data ``(C, H, W)`` ↔ latent ``(f²C, H/f, W/f)`` (Dinh et al., 2016).

    Inverse (normalizing) ``z = pixel_unshuffle(x, f)``: each ``f × f`` block of pixels becomes
    ``f²`` channels; forward (generative) ``x = pixel_shuffle(z, f)``. A permutation, so
    ``ladj = 0``.

    Args:
        shape: the data-side image shape ``(C, H, W)``; ``H`` and ``W`` divisible by ``factor``.
        factor: the block size ``f``.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> Squeeze((1, 4, 4)).inverse(torch.randn(2, 1, 4, 4))[0].shape
        torch.Size([2, 4, 2, 2])
    """

    def __init__(self, shape: Sequence[int], factor: int = 2) -> None:
        c, h, w = _image_shape(shape, "Squeeze")
        f = int(factor)
        if f < 1 or h % f or w % f:
            raise ValueError(
                f"Squeeze: height {h} and width {w} must be divisible by the factor {factor}"
            )
        super().__init__((c, h, w), (c * f * f, h // f, w // f))
        self.factor = f

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F.pixel_shuffle(z, self.factor), z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return F.pixel_unshuffle(x, self.factor), x.new_zeros(x.shape[0])


@serializable("flatten")
class Flatten(Transform):
    """Data ``shape`` (e.g. ``(C, H, W)``) ↔ latent ``latent`` (default the vector ``(C·H·W,)``).

    Forward reshapes the latent to the event shape; inverse reshapes back; ``ladj = 0``. Lets a
    vector flow (NICE, planar, ...) model images.

    Args:
        shape: the data-side event shape.
        latent: the base-side event shape (same number of elements; default flat).

    Raises:
        ValueError: ``shape`` and ``latent`` differ in size.
    """

    def __init__(self, shape: int | Sequence[int], latent: int | Sequence[int] | None = None
                 ) -> None:
        shape = _v.as_shape(shape)
        latent = (math.prod(shape),) if latent is None else _v.as_shape(latent)
        if math.prod(shape) != math.prod(latent):
            raise ValueError(f"{type(self).__name__}: {latent} and {shape} differ in size")
        super().__init__(shape, latent)

    def spec(self) -> dict[str, object]:
        """The JSON record that rebuilds this layer."""
        return {"type": spec_name(type(self)), "shape": list(self.event_shape or ()),
                "latent": list(self.latent_shape or ())}

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        assert self.event_shape is not None
        return z.reshape(z.shape[0], *self.event_shape), z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        assert self.latent_shape is not None
        return x.reshape(x.shape[0], *self.latent_shape), x.new_zeros(x.shape[0])


@serializable("multiscale")
class MultiScale(Transform):
    """Multi-scale architecture: after each level, factor half the channels out to the base.

    Normalizing direction, level by level: ``h ← levelₗ⁻¹(h)`` (a level usually starts with a
    ``Squeeze``), then — except after the last level — the first ``⌊c/2⌋`` channels of ``h`` are
    factored out (flattened into the latent vector) and the rest feed the next level. The latent
    side is ONE flat vector ``z = [out₀, out₁, …, final]`` of size ``C·H·W``, so the base is
    ``StandardNormal(C·H·W)`` and the Jacobian is square. ``ladj = Σₗ ladjₗ``. Forward (generative)
    runs the levels in reverse, concatenating each factored-out part back in front of the
    channels before the level's forward map.

    Args:
        levels: transforms from data to latent images: level ``l`` has a ``(c, h, w)`` event
            shape and a ``(c', h', w')`` latent shape; level ``l + 1``'s event shape must be
            ``(c' − ⌊c'/2⌋, h', w')``. Contexts are passed to every level.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803. Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma &
        Dhariwal, 2018, arXiv:1807.03039.

    Example:
        >>> import torch
        >>> ms = MultiScale([Squeeze((1, 4, 4)), Squeeze((2, 2, 2))])
        >>> ms.inverse(torch.randn(3, 1, 4, 4))[0].shape
        torch.Size([3, 16])
    """

    def __init__(self, levels: Sequence[Transform]) -> None:
        levels = list(levels)
        if not levels:
            raise ValueError("MultiScale: needs at least one level")
        sizes, kept = [], []
        for i, level in enumerate(levels):
            if not isinstance(level, Transform):
                raise TypeError(f"MultiScale: level {i} is not a pushforward Transform")
            event, latent = level.event_shape, level.latent_shape
            if event is None or latent is None or len(event) != 3 or len(latent) != 3:
                raise ValueError(
                    f"MultiScale: level {i} must declare (C, H, W) event and latent shapes, "
                    f"got {event} and {latent}"
                )
            if math.prod(event) != math.prod(latent):
                raise ValueError(f"MultiScale: level {i} changes the dimension ({event} -> "
                                 f"{latent})")
            if i < len(levels) - 1:
                c, h, w = latent
                out = c // 2
                if out == 0:
                    raise ValueError(f"MultiScale: level {i} has 1 channel; nothing to factor out")
                expected = (c - out, h, w)
                if tuple(levels[i + 1].event_shape or ()) != expected:
                    raise ValueError(
                        f"MultiScale: level {i + 1} must take shape {expected} (the channels "
                        f"kept after level {i}), got {levels[i + 1].event_shape}"
                    )
                sizes.append(out * h * w)
                kept.append(out)
            else:
                sizes.append(math.prod(latent))
        event = levels[0].event_shape
        super().__init__(event, (sum(sizes),), max(t.context_features for t in levels))
        self.levels = nn.ModuleList(levels)
        self._sizes = sizes
        self._factored = kept
        self.analytic_inverse = all(t.analytic_inverse for t in levels)
        self.exact_ladj = all(t.exact_ladj for t in levels)

    @property
    def part_sizes(self) -> list[int]:
        """Sizes of the latent parts ``[o_0, …, o_{L−2}, z_top]`` (they concatenate to ``z``)."""
        return list(self._sizes)

    @property
    def factored_channels(self) -> list[int]:
        """Channels factored out after each level but the last."""
        return list(self._factored)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        parts = []
        h = x
        last = len(self.levels) - 1
        for i, level in enumerate(self.levels):
            h, ladj = level.inverse(h, context)
            total = total + ladj
            if i < last:
                out = self._factored[i]
                parts.append(h[:, :out].reshape(h.shape[0], -1))
                h = h[:, out:]
        parts.append(h.reshape(h.shape[0], -1))
        return torch.cat(parts, 1), total

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        parts = torch.split(z, self._sizes, dim=1)
        last = len(self.levels) - 1
        h = parts[last].reshape(z.shape[0], *self.levels[last].latent_shape)
        for i in range(last, -1, -1):
            if i < last:
                _, hh, ww = self.levels[i].latent_shape
                out = parts[i].reshape(z.shape[0], self._factored[i], hh, ww)
                h = torch.cat([out, h], 1)
            h, ladj = self.levels[i](h, context)
            total = total + ladj
        return h, total

    def _check_x(self, x: Tensor) -> None:
        self.levels[0]._check_x(x)  # type: ignore[operator]
