"""From ``uint8`` videos to flow inputs and back.

Dequantisation, (frame, past) pairs, per-frame bits/dim and autoregressive rollouts.

Scale: a pixel ``v ∈ {0 … 255}`` is the bin ``[v, v + 1)/256 − ½``; training and evaluation
use ``x = (v + u)/256 − ½`` with ``u ~ U[0, 1)`` (uniform dequantisation), context frames use the
bin centres ``(v + ½)/256 − ½``. Then ``−log₂ P(v) ≤ −log₂ p(x) + D·8`` in expectation, and the
bits per dimension of a frame of ``D`` pixels are ``(−log p(x) + D log 256) / (D log 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pushforward import _validation as _v
from pushforward.core import Flow
from pushforward.evaluation import batched_negative_log_likelihood, eval_mode

__all__ = ["dequantize", "centres", "quantize", "FramePairs", "bits_per_frame", "rollout"]


def _as_videos(videos: np.ndarray | Tensor) -> Tensor:
    """``(N, T, H, W)`` or ``(N, T, C, H, W)`` integers as a ``uint8`` ``(N, T, C, H, W)``."""
    v = torch.as_tensor(np.asarray(videos) if not isinstance(videos, Tensor) else videos)
    if v.dim() == 4:
        v = v[:, :, None]
    if v.dim() != 5 or v.is_floating_point() or v.dtype == torch.bool:
        raise ValueError(f"videos must be integer (N, T, H, W) or (N, T, C, H, W) arrays, got "
                         f"{tuple(v.shape)} {v.dtype}")
    if v.numel() and (int(v.min()) < 0 or int(v.max()) > 255):
        raise ValueError("videos: pixel values must lie in 0 … 255")
    return v.to(torch.uint8)


def dequantize(pixels: Tensor, generator: torch.Generator | None = None,
               dtype: torch.dtype | None = None) -> Tensor:
    """``(v + u)/256 − ½`` with ``u ~ U[0, 1)``: integer pixels to the continuous scale.

    Args:
        pixels: integer pixel values ``v`` in ``0 … 255``, any shape.
        generator: the noise's random generator (None: torch's global one).
        dtype: the result's dtype (None: torch's default).

    Returns:
        Values in ``[−½, ½)``, same shape; ``quantize`` maps them back to ``pixels``.
    """
    dtype = dtype or torch.get_default_dtype()
    noise = torch.rand(pixels.shape, generator=generator, dtype=dtype)
    return (pixels.to(dtype) + noise) / 256.0 - 0.5


def centres(pixels: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Bin centres ``(v + ½)/256 − ½``: the deterministic continuous value of a pixel.

    Args:
        pixels: integer pixel values in ``0 … 255``, any shape.
        dtype: the result's dtype (None: torch's default).

    Returns:
        The centres, same shape.
    """
    return (pixels.to(dtype or torch.get_default_dtype()) + 0.5) / 256.0 - 0.5


def quantize(x: Tensor) -> Tensor:
    """Continuous values back to ``uint8`` pixels: ``clamp(⌊(x + ½)·256⌋, 0, 255)``.

    Args:
        x: values on the ``[−½, ½)`` scale (samples may stray outside; they are clamped).

    Returns:
        ``uint8`` pixels, same shape.
    """
    return torch.clamp(torch.floor((x + 0.5) * 256.0), 0, 255).to(torch.uint8)


class FramePairs(Dataset):
    """Every ``(frame t, frames t−past … t−1)`` of a set of videos, dequantised afresh per read.

    Items are ``(x, context)``: ``x`` the dequantised frame ``(C, H, W)``, ``context`` the past
    frames' bin centres flattened (oldest first), ``(past·C·H·W,)``; with ``past=0`` just ``x``
    (the unconditional model sees the same frames ``t ≥ predict_from``). Indexing with an index
    tensor returns a batch (``batch_indexing``), which ``pf.fit`` uses.

    Args:
        videos: ``uint8`` ``(N, T, H, W)`` or ``(N, T, C, H, W)``.
        past: frames of context.
        predict_from: first predicted frame (default ``past``; give the conditional model's
            ``past`` to the unconditional one so both see the same frames).
        seed: seed of the dequantisation noise.
    """

    batch_indexing = True

    def __init__(self, videos: np.ndarray | Tensor, past: int, predict_from: int | None = None,
                 seed: int = 0) -> None:
        self.videos = _as_videos(videos)
        self.past = int(past)
        start = self.past if predict_from is None else int(predict_from)
        if self.past < 0 or start < self.past or start >= self.videos.shape[1]:
            raise ValueError(f"FramePairs: need 0 <= past <= predict_from < frames "
                             f"({self.videos.shape[1]}), got past={past}, "
                             f"predict_from={predict_from}")
        n, t = self.videos.shape[:2]
        grid = torch.cartesian_prod(torch.arange(n), torch.arange(start, t))
        self.index = grid.reshape(-1, 2)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int | Tensor) -> Tensor | tuple[Tensor, Tensor]:
        pick = self.index[torch.as_tensor(i)]
        single = pick.dim() == 1
        pick = pick.reshape(-1, 2)
        video, frame = pick[:, 0], pick[:, 1]
        x = dequantize(self.videos[video, frame], self.generator)
        if self.past:
            steps = frame[:, None] - torch.arange(self.past, 0, -1)[None]
            past = centres(self.videos[video[:, None], steps]).reshape(len(pick), -1)
            return (x[0], past[0]) if single else (x, past)
        return x[0] if single else x


@torch.no_grad()
def bits_per_frame(flow: Flow, videos: np.ndarray | Tensor, past: int,
                   predict_from: int | None = None, batch_size: int = 256,
                   seed: int = 0) -> Tensor:
    """Test bits per dimension of each predicted frame, averaged over the videos.

    Frame ``t`` (for ``t ≥ predict_from``) is scored as ``−log₂ p(x_t | x_{t−past … t−1})/D + 8``
    with ``x_t`` dequantised by seeded uniform noise (an upper bound on the discrete code length
    in expectation); with ``past=0`` as ``−log₂ p(x_t)/D + 8``.

    Args:
        flow: a frame model (conditional when ``past > 0``).
        videos: ``uint8`` ``(N, T, H, W)`` or ``(N, T, C, H, W)``.
        past: context frames the flow reads.
        predict_from: first scored frame (default ``past``).
        batch_size: frames per forward pass.
        seed: seed of the dequantisation noise.

    Returns:
        ``(T − predict_from,)`` bits/dim, one per predicted frame index.
    """
    pairs = FramePairs(videos, past, predict_from, seed)

    def batches() -> Iterator[tuple[Tensor, Tensor | None]]:
        for start in range(0, len(pairs), batch_size):
            item = pairs[torch.arange(start, min(start + batch_size, len(pairs)))]
            yield item if past else (item, None)

    scores = -batched_negative_log_likelihood(flow, batches()).double().cpu()
    d = math.prod(pairs.videos.shape[2:])
    bits = (-scores / d + math.log(256.0)) / math.log(2.0)
    n, frames = pairs.videos.shape[0], pairs.videos.shape[1] - int(pairs.index[0, 1])
    return bits.reshape(n, frames).mean(0)


@torch.no_grad()
def rollout(flow: Flow, context_frames: np.ndarray | Tensor, steps: int, samples: int = 1,
            temperature: float = 1.0, past: int | None = None) -> Tensor:
    """Sample ``steps`` future frames autoregressively: draw frame ``t``, feed it back.

    Each drawn frame is quantised to 8 bits before it joins the context, as a real frame would.

    Args:
        flow: a conditional frame model reading ``past`` frames (or an unconditional one with
            ``past=0``: independent frames).
        context_frames: ``uint8`` ``(B, k, H, W)`` or ``(B, k, C, H, W)`` observed frames
            (``k ≥ past``; the last ``past`` are used).
        steps: frames to draw.
        samples: rollouts per video.
        temperature: the base's temperature (``< 1``: sharper, less diverse).
        past: context frames the flow reads (default: all ``k``).

    Returns:
        ``uint8`` ``(samples, B, steps, C, H, W)``.
    """
    frames = _as_videos(context_frames)
    b, k = frames.shape[:2]
    past = k if past is None else int(past)
    if past > k:
        raise ValueError(f"rollout: the flow reads {past} past frames, {k} were given")
    dtype = _v.dtype_of(flow)
    history = frames[None].expand(samples, -1, -1, -1, -1, -1).reshape(samples * b, k,
                                                                       *frames.shape[2:])
    drawn = []
    with eval_mode(flow):
        for _ in range(int(steps)):
            if past:
                ctx = centres(history[:, history.shape[1] - past:], dtype).reshape(
                    samples * b, -1)
                x = flow.sample(1, ctx, temperature=temperature)[0]
            else:
                x = flow.sample(samples * b, temperature=temperature).to(dtype)
            frame = quantize(x)
            drawn.append(frame)
            history = torch.cat([history, frame[:, None]], 1)
    return torch.stack(drawn, 1).reshape(samples, b, int(steps), *frames.shape[2:])
