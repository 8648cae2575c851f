"""Coupling layers: one part of the input conditions an elementwise map of the other part.

``Coupling(mask, transformer)`` is the one class; the transformer is any elementwise map of
``pushforward.transforms.maps`` (``"additive"``: NICE, ``"affine"``: RealNVP/Glow, ``"spline"``:
neural spline flows). ``AdditiveCoupling`` and ``AffineCoupling`` are thin named subclasses.
Masks for vectors (half, alternating) and images (checkerboard, channel-wise) come from
``coupling_mask``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Transform
from pushforward.fused_affine import AffineStage
from pushforward.nn import MLP, ConvNet, with_context
from pushforward.specs import serializable
from pushforward.transforms.maps import AffineMap, ElementwiseMap, elementwise_map

__all__ = ["Coupling", "AdditiveCoupling", "AffineCoupling", "coupling_mask", "MASKS"]

MASKS = ("half", "alternating", "checkerboard", "channel")


def coupling_mask(shape: int | Sequence[int], kind: str = "half", flip: bool = False) -> Tensor:
    """A boolean mask of the event ``shape``; ``True`` marks the part that passes unchanged.

    Args:
        shape: ``features`` (vectors) or ``(C, H, W)`` (images).
        kind: ``"half"`` (the first ``⌈d/2⌉`` features; images: the first half of the
            channels, same as ``"channel"``), ``"alternating"`` (even features; images: even
            flat indices), ``"checkerboard"`` (images: pixels with ``i + j`` even, in every
            channel) or ``"channel"`` (images: the first ``⌈C/2⌉`` channels; vectors: as half).
        flip: swap the two parts (use alternately in a stack so every element gets transformed).

    Returns:
        A boolean tensor of shape ``shape``.

    Raises:
        ValueError: unknown kind, or a checkerboard on a non-image shape.
    """
    shape = _v.as_shape(shape)
    if kind not in MASKS:
        raise ValueError(f"coupling_mask: unknown kind {kind!r}; choose one of {MASKS}")
    if kind in ("half", "channel"):
        first = (shape[0] + 1) // 2
        mask = (torch.arange(shape[0]) < first).reshape(-1, *([1] * (len(shape) - 1)))
        mask = mask.expand(shape)
    elif kind == "alternating":
        mask = (torch.arange(int(torch.Size(shape).numel())) % 2 == 0).reshape(shape)
    else:
        if len(shape) != 3:
            raise ValueError(f"coupling_mask: a checkerboard needs a (C, H, W) shape, got {shape}")
        _, h, w = shape
        board = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2 == 0
        mask = board.expand(shape)
    mask = mask.clone()
    return ~mask if flip else mask


@serializable("coupling")
class Coupling(Transform):
    """Coupling layer ``x_A = z_A``, ``x_B = τ(z_B; θ(z_A, context))`` (Dinh et al.).

    ``A`` (mask ``True``) passes unchanged and feeds the conditioner; ``B`` (mask ``False``) is
    transformed elementwise by the map ``τ`` with ``τ.params`` numbers per element read from the
    conditioner output. ``ladj = Σ_{i∈B} log|∂τ/∂z_i|``; inverse ``z_A = x_A``,
    ``z_B = τ⁻¹(x_B; θ(x_A, context))`` (exact when ``τ`` inverts exactly).

    Conditioners (built unless given):

    * vectors ``(d,)``: an MLP from ``[z_A, context]`` (``|A| + context`` inputs) to
      ``|B| · τ.params`` outputs, read as ``(|B|, params)`` per sample;
    * images ``(C, H, W)``: a ``ConvNet`` from ``z ⊙ mask`` with the context broadcast as extra
      constant channels (``C + context`` channels) to ``C · params`` channels, read as
      ``(C, params, H, W)``; the values at ``B`` are used.

    With ``identity_init`` the last layer of a built conditioner is zero-initialised, so a fresh
    layer is the identity for the affine and additive maps (and for any map whose zero
    parameters mean identity). By default conv conditioners (images) start so, as in Glow, and
    MLP conditioners (vectors) start at random, which reaches a lower NLL at a fixed budget.

    Args:
        mask: boolean tensor of the event shape (``True``: passes through), e.g. from
            ``coupling_mask``. At least one element must be transformed.
        transformer: an elementwise map or its name (``"affine"``, ``"additive"``, ``"spline"``).
        context_features: width of the context (0: unconditional).
        conditioner: a custom network with the input/output sizes above (vectors: called on
            ``[z_A, context]``; images: on ``[z ⊙ mask, context channels]``).
        hidden: vectors: hidden widths of the MLP; images: the conv width (an int; a list uses
            its first entry).
        activation: activation of the built conditioner.
        blocks: residual blocks of the built conv conditioner (images only).
        identity_init: zero the built conditioner's last layer (None: for images only).
        context: older spelling of ``context_features`` (kept as an alias).
        **map_options: options of the named map (e.g. ``bound=`` for affine).

    References:
        NICE: Non-linear Independent Components Estimation, Dinh, Krueger & Bengio, 2014,
        arXiv:1410.8516. Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio,
        2016, arXiv:1605.08803.

    Example:
        >>> import torch
        >>> layer = Coupling(coupling_mask(4, "alternating"), "affine")
        >>> x, ladj = layer(torch.randn(3, 4))
        >>> ladj.shape
        torch.Size([3])
    """

    def __init__(
        self,
        mask: Tensor,
        transformer: str | ElementwiseMap = "affine",
        context_features: int = 0,
        conditioner: nn.Module | None = None,
        hidden: int | Sequence[int] = (64, 64),
        activation: str | Callable[[], nn.Module] = "relu",
        blocks: int = 1,
        identity_init: bool | None = None,
        *,
        context: int | None = None,
        **map_options: object,
    ) -> None:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            raise TypeError(f"{type(self).__name__}: mask must be a boolean tensor")
        if mask.dim() not in (1, 3):
            raise ValueError(
                f"{type(self).__name__}: mask must have a vector (d,) or image (C, H, W) shape, "
                f"got {tuple(mask.shape)}"
            )
        if bool(mask.all()):
            raise ValueError(f"{type(self).__name__}: the mask transforms no element")
        context_features = _v.context_width(context_features, context, type(self).__name__)
        super().__init__(tuple(mask.shape), context_features=context_features)
        self.map = elementwise_map(transformer, **map_options)
        n_params = int(self.map.params)
        self.image = mask.dim() == 3
        flat = mask.flatten()
        self.register_buffer("mask", mask.clone())
        self.register_buffer("identity_index", torch.nonzero(flat).flatten())
        self.register_buffer("transformed_index", torch.nonzero(~flat).flatten())
        order = torch.cat([self.identity_index, self.transformed_index])
        self.register_buffer("merge_index", torch.argsort(order))
        n_id, n_tr = len(self.identity_index), len(self.transformed_index)
        c = self.context_features
        if conditioner is None:
            if self.image:
                width = hidden if isinstance(hidden, int) else int(list(hidden)[0])
                conditioner = ConvNet(
                    mask.shape[0] + c, mask.shape[0] * n_params, hidden=width, blocks=blocks,
                    activation=activation, zero_last=identity_init is not False,
                )
            else:
                widths = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
                # one flat parameter and the fused ReLU path (pushforward.fused)
                conditioner = MLP(n_id + c, n_tr * n_params, widths, activation,
                                  zero_last=bool(identity_init), fused=True)
        self.conditioner = conditioner
        self._n_params = n_params
        # Regular index sets (halves, alternating features) are read as strided views.
        self._identity_slice = _as_slice(self.identity_index)
        self._transformed_slice = _as_slice(self.transformed_index)

    def _params(self, z: Tensor, context: Tensor | None) -> Tensor:
        """Map parameters of the transformed elements, ``(batch, |B|, params)``."""
        batch = z.shape[0]
        if self.context_features and context is None:
            raise ValueError(
                f"{type(self).__name__}: needs a context of width {self.context_features}"
            )
        if self.image:
            inputs = z * self.mask.to(z.dtype)
            if self.context_features:
                _, _, h, w = z.shape
                planes = context.to(z.dtype)[:, :, None, None].expand(-1, -1, h, w)
                inputs = torch.cat([inputs, planes], 1)
            out = self.conditioner(inputs)
            c, h, w = self.mask.shape
            out = out.reshape(batch, c, self._n_params, h, w).movedim(2, -1)
            return out.reshape(batch, c * h * w, self._n_params)[:, self.transformed_index]
        part = self._select(z, self._identity_slice, self.identity_index)
        inputs = with_context(part, context if self.context_features else None)
        return self.conditioner(inputs).reshape(batch, -1, self._n_params)

    @staticmethod
    def _select(flat: Tensor, part: slice | None, index: Tensor) -> Tensor:
        return flat[:, part] if part is not None else flat.index_select(1, index)

    def _couple(
        self, value: Tensor, context: Tensor | None, forward: bool
    ) -> tuple[Tensor, Tensor]:
        flat = value.reshape(value.shape[0], -1)
        moved = self._select(flat, self._transformed_slice, self.transformed_index)
        params = self._params(value, context)
        step = self.map.forward if forward else self.map.inverse
        out, ladj = step(moved, params)
        # One copy: the input with the transformed entries overwritten (its gradient flows to
        # the kept entries and, through index_select, to ``out``).
        merged = flat.index_copy(1, self.transformed_index, out)
        return merged.reshape(value.shape), ladj.sum(-1)

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, True)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, False)

    def _affine_stages(self) -> list[AffineStage] | None:
        net = self.conditioner
        if (type(self.map) is AffineMap and not self.image and not self.context_features
                and isinstance(net, MLP) and net._fused_plan() is not None
                and self._identity_slice is not None and self._transformed_slice is not None):
            parts = (self._identity_slice, self._transformed_slice)
            return [AffineStage(net, self.map.bound, parts)]
        return None

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        base = super().extra_repr()
        return f"{base}, map={type(self.map).__name__}, transformed={len(self.transformed_index)}"


def _as_slice(index: Tensor) -> slice | None:
    """``index`` as a slice when it is an arithmetic progression with a positive step."""
    n = len(index)
    if n == 0:
        return None
    start = int(index[0])
    step = int(index[1] - index[0]) if n > 1 else 1
    if step < 1 or not torch.equal(index.cpu(), torch.arange(start, start + step * n, step)):
        return None
    return slice(start, start + step * (n - 1) + 1, step)


@serializable("additive-coupling")
class AdditiveCoupling(Coupling):
    """NICE's additive coupling ``x_A = z_A``, ``x_B = z_B + m(z_A)``; ``ladj = 0``.

    Inverse ``z_B = x_B − m(x_A)``. A ``Coupling`` with the additive map; arguments as there.

    Args:
        mask: boolean, ``True`` on the part ``A`` that passes through (see ``coupling_mask``).
        context_features: width of the context the conditioner reads (0: unconditional).
        context: older spelling of ``context_features`` (kept as an alias).
        **options: ``Coupling``'s other arguments (``conditioner``, ``hidden``, ``activation``,
            ``blocks``, ``identity_init``) and the map's (``bound`` for the affine one).

    References:
        NICE: Non-linear Independent Components Estimation, Dinh, Krueger & Bengio, 2014,
        arXiv:1410.8516.
    """

    def __init__(self, mask: Tensor, context_features: int = 0, *, context: int | None = None,
                 **options: object) -> None:
        width = _v.context_width(context_features, context, type(self).__name__)
        super().__init__(mask, "additive", width, **options)  # type: ignore[arg-type]


@serializable("affine-coupling")
class AffineCoupling(Coupling):
    """RealNVP's affine coupling ``x_B = z_B ⊙ exp(s(z_A)) + t(z_A)``; ``ladj = Σ s``.

    Inverse ``z_B = (x_B − t(x_A)) ⊙ exp(−s(x_A))``. The log-scale is soft-clamped,
    ``s = B·tanh(ŝ/B)`` (``bound=B``, default 3), so no conditioner output can overflow. A
    ``Coupling`` with the affine map; arguments as there.

    Args:
        mask: boolean, ``True`` on the part ``A`` that passes through (see ``coupling_mask``).
        context_features: width of the context the conditioner reads (0: unconditional).
        context: older spelling of ``context_features`` (kept as an alias).
        **options: ``Coupling``'s other arguments (``conditioner``, ``hidden``, ``activation``,
            ``blocks``, ``identity_init``) and the map's (``bound`` for the affine one).

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803.
    """

    def __init__(self, mask: Tensor, context_features: int = 0, *, context: int | None = None,
                 **options: object) -> None:
        width = _v.context_width(context_features, context, type(self).__name__)
        super().__init__(mask, "affine", width, **options)  # type: ignore[arg-type]
