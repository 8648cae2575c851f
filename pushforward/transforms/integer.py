"""Integer discrete flows: additive coupling with a rounded shift, a bijection of ``ℤᴰ``.

``IntegerCoupling`` maps integer vectors to integer vectors exactly (no float round-off can
creep in: the shift is an integer computed from the unchanged part only), so a flow made of
such layers and a discrete base defines an exact probability mass function ``P(x)`` over integer
images — the starting point of lossless compression (``pushforward.compression``).

Training differentiates through ``round`` with the straight-through estimator: the forward
value is ``⌊t⌉``, the gradient is that of ``t``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.nn import MLP, ConvNet
from pushforward.specs import serializable
from pushforward.transforms.coupling import Coupling

__all__ = ["IntegerCoupling", "IntegerAdditiveMap", "round_ste"]


def round_ste(t: Tensor) -> Tensor:
    """``⌊t⌉`` (round half to even) in value, identity in gradient (straight-through).

    Example:
        >>> import torch
        >>> t = torch.tensor([0.4, 1.6], requires_grad=True)
        >>> round_ste(t).tolist()
        [0.0, 2.0]
    """
    return t + (torch.round(t) - t).detach()


class IntegerAdditiveMap:
    """``x = z + ⌊t⌉`` (one parameter ``t`` per element); ``log|∂x/∂z| = 0``; ``z = x − ⌊t⌉``.

    On integers both directions are exact; ``⌊·⌉`` has a straight-through gradient.
    """

    params = 1

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``x = z + ⌊t⌉`` and a zero elementwise ``log|∂x/∂z|``."""
        return z + round_ste(params[..., 0]), torch.zeros_like(z)

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``z = x − ⌊t⌉`` and a zero elementwise ``log|∂z/∂x|``."""
        return x - round_ste(params[..., 0]), torch.zeros_like(x)


class _Scaled(nn.Module):
    """``output_scale · net(u)`` with the first ``channels`` inputs multiplied by ``scale``.

    Integers in the hundreds become O(1) network inputs, and O(1) outputs shifts of tens of
    pixels; a context, appended after them, is left as is.
    """

    def __init__(self, net: nn.Module, channels: int, scale: float,
                 output_scale: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.channels = int(channels)
        self.scale = float(scale)
        self.output_scale = float(output_scale)

    def forward(self, u: Tensor) -> Tensor:  # noqa: D102
        head = u[:, : self.channels] * self.scale
        u = torch.cat([head, u[:, self.channels:]], 1) if u.shape[1] > self.channels else head
        # Contiguous input: the decoder rebuilds the same values with another memory layout,
        # and the coder needs bit-identical network outputs in both directions.
        out = self.net(u.contiguous())
        return out if self.output_scale == 1.0 else out * self.output_scale


@serializable("integer-coupling")
class IntegerCoupling(Coupling):
    """Integer additive coupling: ``x_A = z_A``, ``x_B = z_B + ⌊t(z_A, context)⌉``; ``ladj = 0``.

    Inverse ``z_A = x_A``, ``z_B = x_B − ⌊t(x_A, context)⌉``. On integer inputs both directions
    are exact integer maps, so the layer is a bijection of ``ℤᴰ`` and a flow of such layers
    keeps probability masses unchanged (``P_x(x) = P_z(f⁻¹(x))``, no Jacobian term). ``⌊·⌉``
    rounds half to even in value and passes the gradient straight through (Hoogeboom et al.,
    2019). On real inputs the layer is still an exact volume-preserving bijection (``ladj = 0``
    agrees with the autograd Jacobian under the straight-through gradient), which is how the
    generic test kit checks it.

    The conditioner sees the unchanged part multiplied by ``input_scale`` (pixels ``0…255`` are
    fed as ``0…2``), its output is multiplied by ``output_scale`` (the shift's unit, in
    pixels) and its last layer starts at zero, so a fresh layer is the identity.

    Args:
        mask: boolean tensor of the event shape (``True``: passes through), e.g. from
            ``coupling_mask``.
        context_features: width of the context (0: unconditional).
        hidden: images: conv channels; vectors: MLP widths.
        blocks: residual blocks of the conv conditioner (images).
        activation: activation of the conditioner.
        input_scale: factor applied to the conditioner's input values.
        output_scale: factor applied to the conditioner's output (the shift ``t``).
        conditioner: a custom network (then ``hidden``/``blocks``/``input_scale`` are unused);
            input and output sizes as for ``Coupling`` with one parameter per element.
        context: older spelling of ``context_features`` (kept as an alias).

    References:
        Integer Discrete Flows and Lossless Compression, Hoogeboom, Peters, van den Berg &
        Welling, 2019, arXiv:1905.07376.

    Example:
        >>> import torch
        >>> from pushforward.transforms import coupling_mask
        >>> layer = IntegerCoupling(coupling_mask((2, 4, 4), "channel"), hidden=8)
        >>> x = torch.randint(0, 256, (3, 2, 4, 4)).double()
        >>> z, ladj = layer.double().inverse(x)
        >>> bool(torch.equal(layer(z)[0], x)), ladj.tolist()
        (True, [0.0, 0.0, 0.0])
    """

    def __init__(
        self,
        mask: Tensor,
        context_features: int = 0,
        hidden: int | Sequence[int] = 64,
        blocks: int = 1,
        activation: str = "relu",
        input_scale: float = 1.0 / 128,
        output_scale: float = 1.0,
        conditioner: nn.Module | None = None,
        *,
        context: int | None = None,
    ) -> None:
        context = _v.context_width(context_features, context, "IntegerCoupling")
        mask = torch.as_tensor(mask)
        if conditioner is None and mask.dtype == torch.bool and mask.dim() in (1, 3):
            if mask.dim() == 3:
                width = hidden if isinstance(hidden, int) else int(list(hidden)[0])
                c = mask.shape[0]
                net: nn.Module = ConvNet(c + int(context), c, hidden=width, blocks=blocks,
                                         activation=activation, zero_last=True)
                conditioner = _Scaled(net, c, input_scale, output_scale)
            else:
                widths = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
                kept = int(mask.sum())
                net = MLP(kept + int(context), int((~mask).sum()), widths, activation,
                          zero_last=True)
                conditioner = _Scaled(net, kept, input_scale, output_scale)
        super().__init__(mask, IntegerAdditiveMap(), context, conditioner=conditioner)
