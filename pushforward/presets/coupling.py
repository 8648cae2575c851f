"""Coupling presets: NICE, RealNVP and Glow.

Every preset is ``Preset(features=None, context=0, *, shape=None, ...) -> Flow`` with a
``StandardNormal`` base. ``NICE`` given ``shape=(C, H, W)`` models the flattened image;
``RealNVP`` and ``Glow`` given ``shape`` build the multi-scale image architecture, whose latent is
one flat vector of ``C·H·W`` numbers. Every coupling takes the context (``context > 0``) through
its conditioner (concatenated to an MLP's input, broadcast as channels to a conv net's input).
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._registry import register
from pushforward._validation import check_int
from pushforward.core import Chain, Flow, Transform
from pushforward.distributions import StandardNormal
from pushforward.presets._common import (
    channels,
    dimension,
    image_shape,
    normalizing,
    vector_flow,
    widths,
)
from pushforward.transforms.coupling import AdditiveCoupling, AffineCoupling, coupling_mask
from pushforward.transforms.elementwise import Affine
from pushforward.transforms.images import MultiScale, Squeeze
from pushforward.transforms.linear import InvertibleConv1x1, LULinear
from pushforward.transforms.normalization import ActNorm

__all__ = ["NICE", "RealNVP", "Glow"]


@register("nice", accepts=("vectors", "images", "context"))
def NICE(
    features: int | None = None,
    context: int = 0,
    *,
    shape: Sequence[int] | None = None,
    transforms: int = 4,
    hidden: int | Sequence[int] = (64, 64),
    mask: str = "alternating",
    activation: str = "relu",
    identity_init: bool = False,
) -> Flow:
    """NICE: additive couplings with alternating masks, then a diagonal scaling (Dinh et al.).

    Normalizing direction ``z = exp(S) ⊙ c_K(… c_1(x))`` with additive couplings ``c_k`` whose
    masks flip from layer to layer; the scaling is ``pushforward.transforms.Affine`` (a learned
    per-feature scale and shift, the only volume change: ``ladj = Σ log|a|``).

    Args:
        features: the dimension, at least 2 (or give ``shape``: the image is flattened).
        context: context width, concatenated to every conditioner's input.
        shape: an event shape to model flattened.
        transforms: the number of coupling layers.
        hidden: hidden widths of the MLP conditioners.
        mask: ``"alternating"`` (even/odd features) or ``"half"`` (first/second half).
        activation: activation of the conditioners.
        identity_init: start every coupling at the identity (zero last conditioner layer).

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        NICE: Non-linear Independent Components Estimation, Dinh, Krueger & Bengio, 2014,
        arXiv:1410.8516.

    Example:
        >>> import torch
        >>> NICE(4).log_prob(torch.randn(3, 4)).shape
        torch.Size([3])
    """
    d = dimension("NICE", features, shape)
    if d < 2:
        raise ValueError("NICE: coupling layers need features >= 2")
    if mask not in ("alternating", "half"):
        raise ValueError(f"NICE: mask must be 'alternating' or 'half', got {mask!r}")
    k = check_int(transforms, "NICE", "transforms")
    couplings = [
        AdditiveCoupling(coupling_mask(d, mask, flip=i % 2 == 1), context,
                         hidden=widths(hidden, (64, 64)), activation=activation,
                         identity_init=identity_init)
        for i in range(k)
    ]
    return vector_flow([Affine(d), *reversed(couplings)], d, shape)


def _checkerboard_or_channel(shape: tuple[int, int, int], flip: bool) -> object:
    if shape[1] * shape[2] >= 2:
        return coupling_mask(shape, "checkerboard", flip)
    if shape[0] >= 2:
        return coupling_mask(shape, "channel", flip)
    raise ValueError(f"RealNVP: a (1, 1, 1) image cannot be split for a coupling: {shape}")


def _realnvp_levels(shape: tuple[int, int, int], requested: int) -> int:
    _, h, w = shape
    levels = 1
    while levels < requested and h % 2 == 0 and w % 2 == 0 and h >= 4 and w >= 4:
        h, w = h // 2, w // 2
        levels += 1
    return levels


@register("realnvp", accepts=("vectors", "images", "context"))
def RealNVP(
    features: int | None = None,
    context: int = 0,
    *,
    shape: Sequence[int] | None = None,
    transforms: int | None = None,
    hidden: int | Sequence[int] | None = None,
    levels: int = 3,
    blocks: int = 2,
    bound: float = 3.0,
    activation: str = "relu",
    identity_init: bool | None = None,
) -> Flow:
    """RealNVP: affine couplings with alternating masks; multi-scale on images (Dinh et al.).

    Vectors (``features``): ``transforms`` (default 6) affine couplings with alternating
    even/odd masks and MLP conditioners (``hidden``, default ``(64, 64)``).

    Images (``shape=(C, H, W)``): a ``MultiScale`` flow. Each level but the last (normalizing
    direction): ``transforms`` (default 3) checkerboard couplings, a ``Squeeze``, ``transforms``
    channel-wise couplings, then half the channels are factored out; the last level:
    ``transforms + 1`` checkerboard couplings. The conditioners are residual conv nets
    (``hidden`` channels, default 64; ``blocks`` residual blocks). ``levels`` is capped so that
    every squeeze leaves at least 2×2 pixels (1×4×4 images get 2 levels, 8×8 digits 3).

    The affine log-scale is soft-clamped to ``(−bound, bound)``.

    Args:
        features: the dimension, at least 2 (vectors).
        context: context width (MLP input / conv channels).
        shape: ``(C, H, W)`` for the image architecture.
        transforms: couplings (vectors) or couplings per mask group (images).
        hidden: MLP widths (vectors) or conv channels (images).
        levels: number of scales (images).
        blocks: residual blocks per conv conditioner (images).
        bound: the clamp of the affine log-scale.
        activation: activation of the conditioners.
        identity_init: start every coupling at the identity (zero last conditioner layer);
            None: images do (conv conditioners, as in Glow), vectors start at random.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2016,
        arXiv:1605.08803.

    Example:
        >>> import torch
        >>> RealNVP(shape=(1, 4, 4), hidden=8).log_prob(torch.randn(2, 1, 4, 4)).shape
        torch.Size([2])
    """
    if shape is None:
        d = dimension("RealNVP", features, None)
        if d < 2:
            raise ValueError("RealNVP: coupling layers need features >= 2")
        k = check_int(6 if transforms is None else transforms, "RealNVP", "transforms")
        couplings = [
            AffineCoupling(coupling_mask(d, "alternating", flip=i % 2 == 1), context,
                           hidden=widths(hidden, (64, 64)), activation=activation, bound=bound,
                           identity_init=identity_init)
            for i in range(k)
        ]
        return Flow(normalizing(couplings), StandardNormal(d))

    c, h, w = image_shape("RealNVP", shape)
    if features is not None and int(features) != c * h * w:
        raise ValueError(f"RealNVP: features={features} disagrees with shape {tuple(shape)}")
    k = check_int(3 if transforms is None else transforms, "RealNVP", "transforms")
    n_levels = _realnvp_levels((c, h, w), check_int(levels, "RealNVP", "levels"))
    width = channels(hidden, 64)
    options = dict(hidden=width, blocks=blocks, activation=activation, bound=bound,
                   identity_init=identity_init)
    current = (c, h, w)
    stages: list[Transform] = []
    for level in range(n_levels):
        layers: list[Transform] = []
        last = level == n_levels - 1
        for i in range(k + 1 if last else k):
            layers.append(AffineCoupling(_checkerboard_or_channel(current, i % 2 == 1), context,
                                         **options))
        if not last:
            squeeze = Squeeze(current)
            layers.append(squeeze)
            squeezed = squeeze.latent_shape
            assert squeezed is not None
            for i in range(k):
                mask = coupling_mask(squeezed, "channel", flip=i % 2 == 1)
                layers.append(AffineCoupling(mask, context, **options))
            cc, hh, ww = squeezed
            current = (cc - cc // 2, hh, ww)
        stages.append(normalizing(layers))
    return Flow(MultiScale(stages), StandardNormal(c * h * w))


def _glow_step(shape: int | tuple[int, int, int], context: int, flip: bool,
               options: dict) -> Chain:
    """ActNorm → invertible linear (1×1 conv on images) → affine coupling (normalizing order)."""
    if isinstance(shape, int):
        mixing: Transform = LULinear(shape)
        mask = coupling_mask(shape, "half", flip)
    else:
        mixing = InvertibleConv1x1(shape)
        mask = coupling_mask(shape, "channel", flip)
    return normalizing([ActNorm(shape), mixing, AffineCoupling(mask, context, **options)])


@register("glow", accepts=("vectors", "images", "context"))
def Glow(
    features: int | None = None,
    context: int = 0,
    *,
    shape: Sequence[int] | None = None,
    transforms: int | None = None,
    hidden: int | Sequence[int] | None = None,
    levels: int = 3,
    blocks: int = 1,
    bound: float = 3.0,
    activation: str = "relu",
    identity_init: bool | None = None,
) -> Flow:
    """Glow: steps of ActNorm → invertible 1×1 conv → affine coupling (Kingma & Dhariwal, 2018).

    Images (``shape=(C, H, W)``): a ``MultiScale`` flow; each level (normalizing direction) is a
    ``Squeeze`` then ``transforms`` steps (default 4) with channel-wise couplings and residual conv
    conditioners (``hidden`` channels, default 64, zero-initialised last conv); half the
    channels are factored out after every level but the last. ``levels`` is capped by how often
    ``H`` and ``W`` can be halved (1×4×4 images: 2, 8×8 digits: 3).

    Vectors (``features``): ``transforms`` steps (default 6) of ActNorm → ``LULinear`` → affine
    coupling on half the features (alternating halves), MLP conditioners (default ``(64, 64)``).

    ActNorm initialises from the first batch seen in training mode.

    Args:
        features: the dimension, at least 2 (vectors).
        context: context width (MLP input / conv channels).
        shape: ``(C, H, W)`` for the image architecture.
        transforms: steps (vectors) or steps per level (images).
        hidden: MLP widths (vectors) or conv channels (images).
        levels: number of scales (images).
        blocks: residual blocks per conv conditioner (images).
        bound: the clamp of the affine log-scale.
        activation: activation of the conditioners.
        identity_init: start every coupling at the identity (zero last conditioner layer);
            None: images do (conv conditioners, as in Glow), vectors start at random.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018,
        arXiv:1807.03039.

    Example:
        >>> import torch
        >>> Glow(shape=(1, 4, 4), hidden=8).sample(3).shape
        torch.Size([3, 1, 4, 4])
    """
    if shape is None:
        d = dimension("Glow", features, None)
        if d < 2:
            raise ValueError("Glow: coupling layers need features >= 2")
        k = check_int(6 if transforms is None else transforms, "Glow", "transforms")
        options = dict(hidden=widths(hidden, (64, 64)), activation=activation, bound=bound,
                       identity_init=identity_init)
        steps = [_glow_step(d, context, i % 2 == 1, options) for i in range(k)]
        return Flow(normalizing(steps), StandardNormal(d))

    c, h, w = image_shape("Glow", shape)
    if features is not None and int(features) != c * h * w:
        raise ValueError(f"Glow: features={features} disagrees with shape {tuple(shape)}")
    k = check_int(4 if transforms is None else transforms, "Glow", "transforms")
    requested = check_int(levels, "Glow", "levels")
    n_levels, hh, ww = 0, h, w
    while n_levels < requested and hh % 2 == 0 and ww % 2 == 0:
        hh, ww = hh // 2, ww // 2
        n_levels += 1
    if n_levels == 0:
        raise ValueError(f"Glow: the image {tuple(shape)} has an odd height or width; it cannot "
                         "be squeezed")
    options = dict(hidden=channels(hidden, 64), blocks=blocks, activation=activation,
                   bound=bound, identity_init=identity_init)
    current = (c, h, w)
    stages: list[Transform] = []
    for _ in range(n_levels):
        squeeze = Squeeze(current)
        squeezed = squeeze.latent_shape
        assert squeezed is not None
        layers: list[Transform] = [squeeze]
        layers += [_glow_step(squeezed, context, False, options) for _ in range(k)]
        stages.append(normalizing(layers))
        cc, hs, ws = squeezed
        current = (cc - cc // 2, hs, ws)
    return Flow(MultiScale(stages), StandardNormal(c * h * w))
