"""A coupling layer on images whose conditioner also reads context *maps* (spatial context).

``Coupling`` broadcasts a context vector as constant planes, which throws away where things
are. A video model needs the opposite: the past frames, encoded as feature maps, must reach each
pixel's conditioner at its own position. ``SpatialCoupling`` reads the flat context
``(batch, Cc·Hc·Wc)`` as maps ``(Cc, Hc, Wc)``, averages them down to the layer's resolution
and concatenates them to ``z ⊙ mask`` as extra channels of the conv conditioner (a plain
context vector may follow the maps; it is broadcast as constant planes, as in ``Coupling``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pushforward.nn import ConvNet
from pushforward.specs import serializable
from pushforward.transforms.coupling import Coupling
from pushforward.transforms.maps import ElementwiseMap, elementwise_map

__all__ = ["SpatialCoupling"]


@serializable("spatial-coupling")
class SpatialCoupling(Coupling):
    """Image coupling ``x_A = z_A``, ``x_B = τ(z_B; θ(z_A, pool(m), v))`` with context maps ``m``.

    The context is ``[m, v]``: the flattened maps ``m`` of shape ``context_shape = (Cc, Hc,
    Wc)``, then an optional vector ``v`` of width ``vector``. ``pool`` averages ``m`` over
    ``(Hc/H) × (Wc/W)`` blocks down to the layer's ``(H, W)``; ``v`` is broadcast as constant
    planes. The conditioner is a ``ConvNet`` from ``[z ⊙ mask, pool(m), v]`` (``C + Cc + |v|``
    channels) to ``C · τ.params`` channels, read at the transformed elements as in ``Coupling``.
    Forward ``ladj = Σ_{i∈B} log|∂τ/∂z_i|``; inverse ``z_B = τ⁻¹(x_B; θ(x_A, pool(m), v))``
    (exact for the affine and additive maps). Without ``context_shape`` and ``vector`` it is an
    unconditional image ``Coupling`` with the same conditioner, so a conditional model and its
    unconditional twin differ only in what the conditioner reads.

    Args:
        mask: boolean ``(C, H, W)`` tensor, ``True`` on the part that passes unchanged.
        context_shape: ``(Cc, Hc, Wc)`` of the context maps (``Hc``, ``Wc`` multiples of ``H``,
            ``W``), or None for no maps.
        vector: width of the context vector after the maps (0: none).
        transformer: the elementwise map or its name (``"affine"``, ``"additive"``, ``"spline"``).
        hidden: conv channels of the conditioner.
        blocks: residual blocks of the conditioner.
        activation: the conditioner's activation.
        identity_init: zero the conditioner's last conv, so the layer starts as the identity
            (default True, as in Glow).
        **map_options: options of the named map (e.g. ``bound=`` for affine).

    Raises:
        ValueError: a mask that is not ``(C, H, W)``, or context maps whose size is not a
            multiple of the layer's.

    References:
        VideoFlow: A Conditional Flow-Based Model for Stochastic Video Generation, Kumar,
        Babaeizadeh, Erhan, Finn, Levine, Dinh & Kingma, 2019, arXiv:1903.01434.

    Example:
        >>> import torch
        >>> from pushforward.transforms import coupling_mask
        >>> layer = SpatialCoupling(coupling_mask((2, 4, 4), "channel"), (3, 8, 8), hidden=8)
        >>> x, ladj = layer(torch.randn(5, 2, 4, 4), context=torch.randn(5, 3 * 8 * 8))
        >>> x.shape, ladj.shape
        (torch.Size([5, 2, 4, 4]), torch.Size([5]))
    """

    def __init__(
        self,
        mask: Tensor,
        context_shape: Sequence[int] | None = None,
        vector: int = 0,
        transformer: str | ElementwiseMap = "affine",
        hidden: int = 64,
        blocks: int = 1,
        activation: str | Callable = "relu",
        identity_init: bool = True,
        **map_options: object,
    ) -> None:
        mask = torch.as_tensor(mask)
        if mask.dim() != 3:
            raise ValueError(f"SpatialCoupling: mask must have an image shape (C, H, W), got "
                             f"{tuple(mask.shape)}")
        c, h, w = mask.shape
        maps: tuple[int, int, int] | None = None
        if context_shape is not None:
            maps = tuple(int(s) for s in context_shape)  # type: ignore[assignment]
            if len(maps) != 3 or min(maps) < 1 or maps[1] % h or maps[2] % w:
                raise ValueError(
                    f"SpatialCoupling: context_shape must be (Cc, Hc, Wc) with Hc, Wc multiples "
                    f"of the layer's {h}×{w}, got {tuple(context_shape)}"
                )
        vector = int(vector)
        if vector < 0:
            raise ValueError(f"SpatialCoupling: vector must be >= 0, got {vector}")
        transformer = elementwise_map(transformer, **map_options)
        extra = (0 if maps is None else maps[0]) + vector
        conditioner = ConvNet(c + extra, c * int(transformer.params), hidden=int(hidden),
                              blocks=blocks, activation=activation, zero_last=identity_init)
        self_maps = 0 if maps is None else maps[0] * maps[1] * maps[2]
        super().__init__(mask, transformer, self_maps + vector, conditioner=conditioner)
        self.context_shape = maps
        self.vector = vector
        self._map_width = self_maps

    def _params(self, z: Tensor, context: Tensor | None) -> Tensor:
        """Map parameters of the transformed elements, ``(batch, |B|, params)``."""
        if not self.context_features:
            return super()._params(z, context)
        if context is None:
            raise ValueError(f"SpatialCoupling: needs a context of width {self.context_features} "
                             f"(maps {self.context_shape} flattened, then {self.vector} more)")
        batch, c, h, w = z.shape
        context = context.to(z.dtype)
        inputs = [z * self.mask.to(z.dtype)]
        if self.context_shape is not None:
            maps = context[:, : self._map_width].reshape(batch, *self.context_shape)
            if maps.shape[-2:] != (h, w):
                maps = F.avg_pool2d(maps, (maps.shape[-2] // h, maps.shape[-1] // w))
            inputs.append(maps)
        if self.vector:
            inputs.append(context[:, self._map_width:, None, None].expand(-1, -1, h, w))
        out = self.conditioner(torch.cat(inputs, 1))
        out = out.reshape(batch, c, self._n_params, h, w).movedim(2, -1)
        return out.reshape(batch, c * h * w, self._n_params)[:, self.transformed_index]

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"{super().extra_repr()}, context_shape={self.context_shape}, vector={self.vector}"

