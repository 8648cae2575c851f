"""A conditional Glow for next-frame prediction.

The past frames, encoded as maps, condition every coupling (VideoFlow-style, Kumar et al. 2019),
registered as the ``"video-glow"`` preset.

The raw context of the flow is flat, ``(batch, past·C·H·W + context)``: the ``past`` previous
frames flattened (oldest first), optionally followed by a plain context vector of width
``context``. ``FrameEncoder`` (the flow's embedding) turns the frames into feature maps
``(Cc, H, W)`` and passes the vector through; every ``SpatialCoupling`` reads the maps, averaged
down to its own scale, and the vector as constant planes. With ``past=0`` and ``context=0`` the
same architecture is an unconditional frame model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward._registry import register
from pushforward._validation import check_int
from pushforward.core import Chain, Flow, Transform
from pushforward.distributions import StandardNormal
from pushforward.nn import activation as make_activation
from pushforward.transforms.coupling import coupling_mask
from pushforward.transforms.images import MultiScale, Squeeze
from pushforward.transforms.linear import InvertibleConv1x1
from pushforward.transforms.normalization import ActNorm
from pushforward.video.coupling import SpatialCoupling

__all__ = ["FrameEncoder", "VideoGlow"]


class FrameEncoder(nn.Module):
    """Past frames → feature maps, flattened; a context vector after the frames passes through.

    Input ``(batch, past·C·H·W + vector)``: the frames are reshaped to ``(past·C, H, W)`` and
    go through ``conv3×3 → (act → conv3×3) × layers`` to ``maps`` channels. Output
    ``(batch, maps·H·W + vector)``: the maps flattened, then the vector unchanged (the layout
    ``SpatialCoupling`` reads).

    Args:
        shape: a frame's ``(C, H, W)``.
        past: number of past frames (0: none).
        vector: width of the extra context vector (0: none).
        maps: channels of the frame features.
        hidden: channels of the hidden convolutions.
        layers: hidden convolutions after the first.
        activation: the activation.

    Example:
        >>> import torch
        >>> FrameEncoder((1, 8, 8), past=2, maps=4, hidden=8)(torch.randn(3, 128)).shape
        torch.Size([3, 256])
        >>> FrameEncoder((1, 8, 8), past=2, vector=3, maps=4, hidden=8)(torch.randn(3, 131)).shape
        torch.Size([3, 259])
    """

    def __init__(self, shape: Sequence[int], past: int, vector: int = 0, maps: int = 16,
                 hidden: int = 32, layers: int = 2, activation: str = "relu") -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.past, self.vector, self.maps = int(past), int(vector), int(maps)
        if self.past < 1 or self.vector < 0 or self.maps < 1:
            raise ValueError(f"FrameEncoder: need past >= 1, vector >= 0 and maps >= 1, got "
                             f"past={past}, vector={vector}, maps={maps}")
        c, h, w = self.shape
        self.frame_width = self.past * c * h * w
        stack: list[nn.Module] = [nn.Conv2d(self.past * c, hidden, 3, padding=1)]
        for _ in range(int(layers)):
            stack += [make_activation(activation), nn.Conv2d(hidden, hidden, 3, padding=1)]
        stack += [make_activation(activation), nn.Conv2d(hidden, self.maps, 3, padding=1)]
        self.net = nn.Sequential(*stack)

    def forward(self, context: Tensor) -> Tensor:  # noqa: D102
        batch = context.shape[0]
        _, h, w = self.shape
        frames = context[:, : self.frame_width].reshape(batch, -1, h, w)
        return torch.cat([self.net(frames).reshape(batch, -1), context[:, self.frame_width:]], 1)


def _step(shape: tuple[int, int, int], maps: tuple[int, int, int] | None, vector: int,
          options: dict) -> Chain:
    """ActNorm → 1×1 conv → spatially conditioned affine coupling (listed generative-first)."""
    coupling = SpatialCoupling(coupling_mask(shape, "channel"), maps, vector, "affine",
                               **options)
    return Chain([coupling, InvertibleConv1x1(shape), ActNorm(shape)])


@register("video-glow", accepts=("images", "context"))
def VideoGlow(
    features: int | None = None,
    context: int = 0,
    *,
    shape: Sequence[int] | None = None,
    past: int = 0,
    transforms: int | None = None,
    hidden: int | Sequence[int] | None = None,
    levels: int = 3,
    blocks: int = 1,
    bound: float = 3.0,
    maps: int = 16,
    encoder_hidden: int = 32,
    encoder_layers: int = 2,
    activation: str = "relu",
) -> Flow:
    """A conditional multi-scale Glow for frames given the past frames (VideoFlow-style).

    As the ``"glow"`` image preset — levels of ``Squeeze`` then ``transforms`` steps of
    ActNorm → 1×1 conv → affine coupling, half the channels factored out after each level —
    but every coupling is a ``SpatialCoupling`` reading the ``FrameEncoder`` maps of the
    context at its own scale. The raw context is ``(batch, past·C·H·W + context)``: the past
    frames flattened (oldest first), then an optional vector. Frames are expected in the
    dequantised ``[−½, ½)`` scale (``pushforward.video.frames``). With ``past=0`` and
    ``context=0`` it is the same flow without conditioning: the baseline frame model.

    Args:
        features: must equal ``C·H·W`` when given (the event is the image ``shape``).
        context: width of an extra context vector after the frames (broadcast as constant
            planes). With ``embedding=`` (every preset's option) and ``past=0`` it is the
            embedding's output width, as for the other presets; with ``past > 0`` the given
            embedding replaces the ``FrameEncoder`` and must output ``maps·H·W + context``.
        shape: a frame's ``(C, H, W)``.
        past: number of past frames in the context.
        transforms: steps per level (default 4).
        hidden: conv channels of the coupling conditioners (default 64).
        levels: number of scales (capped by how often ``H``, ``W`` halve).
        blocks: residual blocks per coupling conditioner.
        bound: the clamp of the affine log-scale.
        maps: channels of the encoded past frames.
        encoder_hidden: channels of the encoder's hidden convolutions.
        encoder_layers: hidden convolutions of the encoder.
        activation: activation of the conditioners and the encoder.

    Returns:
        A ``Flow`` on ``StandardNormal(C·H·W)`` with a ``FrameEncoder`` embedding when
        conditional.

    Raises:
        ValueError: no or a bad ``shape``, ``features`` that disagree, negative ``past``.

    References:
        VideoFlow: A Conditional Flow-Based Model for Stochastic Video Generation, Kumar et al.,
        2019, arXiv:1903.01434. Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma
        & Dhariwal, 2018, arXiv:1807.03039.

    Example:
        >>> import torch
        >>> flow = VideoGlow(shape=(1, 8, 8), past=2, hidden=8, maps=4, encoder_hidden=8)
        >>> flow.log_prob(torch.rand(3, 1, 8, 8) - 0.5, torch.rand(3, 2 * 64) - 0.5).shape
        torch.Size([3])
    """
    if shape is None:
        raise ValueError("VideoGlow: give the frame shape=(C, H, W)")
    dims = tuple(int(s) for s in shape)
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"VideoGlow: shape must be (C, H, W) with positive sizes, got {dims}")
    c, h, w = dims
    if features is not None and int(features) != c * h * w:
        raise ValueError(f"VideoGlow: features={features} disagrees with shape {dims}")
    past = check_int(past, "VideoGlow", "past", 0)
    context = check_int(context, "VideoGlow", "context", 0)
    k = check_int(4 if transforms is None else transforms, "VideoGlow", "transforms")
    requested = check_int(levels, "VideoGlow", "levels")
    width = 64 if hidden is None else int(hidden if isinstance(hidden, int) else list(hidden)[0])
    n_levels, hh, ww = 0, h, w
    while n_levels < requested and hh % 2 == 0 and ww % 2 == 0:
        hh, ww = hh // 2, ww // 2
        n_levels += 1
    if n_levels == 0:
        raise ValueError(f"VideoGlow: the frame {dims} has an odd height or width")
    encoder = None
    if past:
        encoder = FrameEncoder(dims, past, context, maps, encoder_hidden, encoder_layers,
                               activation)
    context_maps = None if encoder is None else (encoder.maps, h, w)
    options = dict(hidden=width, blocks=blocks, activation=activation, bound=bound)
    current = dims
    stages: list[Transform] = []
    for _ in range(n_levels):
        squeeze = Squeeze(current)
        squeezed = squeeze.latent_shape
        assert squeezed is not None
        steps = [_step(squeezed, context_maps, context, options) for _ in range(k)]
        stages.append(Chain([*reversed(steps), squeeze]))
        cc, hs, ws = squeezed
        current = (cc - cc // 2, hs, ws)
    if encoder is None:  # the plain vector context (if any) is read as it is
        return Flow(MultiScale(stages), StandardNormal(c * h * w))
    return Flow(MultiScale(stages), StandardNormal(c * h * w), embedding=encoder,
                context_features=past * c * h * w + context)
