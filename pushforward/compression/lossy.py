"""Lossy compression with a flow: quantise the latent, code it, decode through the inverse.

Following Helminger et al. (2020): the image's latent ``z = f⁻¹(x)`` is quantised with a step
``Δ``, ``q = ⌊z/Δ⌉``, and ``q`` is entropy-coded under a learned *factorised* prior (one mixture
of discretized logistics per channel of every latent part, fitted by maximum likelihood to the
quantised latents of training images); the decoder reconstructs ``x̂ = clip(f(Δ·q))``. Larger
steps give fewer bits and more distortion, tracing a rate–distortion curve. With ``prior=None``
the flow's own factor-out priors are used instead, rescaled to bins of width ``Δ`` and
conditioned on the kept channels that the decoder rebuilds from the quantised latent.

Here ``f`` is an integer discrete flow (``pushforward.flows.build("idf", ...)``), whose latent is
already in pixel units; its forward map accepts any integer latent, so ``Δ·q`` decodes exactly
as the encoder predicts (the decoded images' CRC32 is in the stream and checked).

References:
    Lossy Image Compression with Normalizing Flows, Helminger, Djelouah, Gross & Schroers,
    2020, arXiv:2008.10486.
"""

from __future__ import annotations

import copy
import math
import struct

import numpy as np
import torch
from torch import Tensor, nn

from pushforward.compression import stream
from pushforward.compression.lossless import (
    _as_images,
    _batches,
    _check_flow,
    _code_part,
    _constriction,
    _deterministic,
    _images_checksum,
    _restore,
    model_checksum,
)
from pushforward.discretized import clamp_log_scale, discretized_mixture_log_prob
from pushforward.presets.idf import IntegerFlow

__all__ = ["FactorizedPrior", "fit_prior", "quantize", "reconstruct", "encode_lossy",
           "decode_lossy"]

_MAGIC = b"PFLY"
_STEP = struct.Struct("<4sd")


class FactorizedPrior(nn.Module):
    """A discretized logistic mixture per channel of every latent part, on the integers ``q``.

    Args:
        shapes: the ``(c, h, w)`` shapes of the latent parts ``[o_0, …, z_top]``.
        components: mixture components.
    """

    def __init__(self, shapes: list[tuple[int, int, int]], components: int = 3) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]
        k = int(components)
        spread = torch.linspace(-1.0, 1.0, k) if k > 1 else torch.zeros(1)
        self.logits = nn.ParameterList([nn.Parameter(torch.zeros(s[0], k)) for s in shapes])
        self.loc = nn.ParameterList([nn.Parameter(spread.repeat(s[0], 1)) for s in shapes])
        self.log_scale = nn.ParameterList([nn.Parameter(torch.zeros(s[0], k)) for s in shapes])

    def params(self, part: int, batch: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, loc, log_scale)`` of part ``part``, each ``(batch, c, h, w, K)``."""
        c, h, w = self.shapes[part]
        k = self.logits[part].shape[-1]
        return tuple(p[:, None, None, :].expand(batch, c, h, w, k) for p in (  # type: ignore
            self.logits[part], self.loc[part], clamp_log_scale(self.log_scale[part])))

    def log_prob(self, parts: list[Tensor]) -> Tensor:
        """``log P(q)`` summed over every part, shape ``(batch,)``."""
        total = parts[0].new_zeros(parts[0].shape[0])
        for i, q in enumerate(parts):
            lp = discretized_mixture_log_prob(q, *self.params(i, q.shape[0]))
            total = total + lp.flatten(1).sum(-1)
        return total


def quantize(flow: IntegerFlow, images: Tensor | np.ndarray, step: float) -> list[Tensor]:
    """``q = ⌊f⁻¹(x)/Δ⌉`` as the latent parts ``[o_0, …, z_top]`` (float64 tensors of integers).

    Args:
        flow: a trained image IDF.
        images: integer images, as for ``pushforward.compression.encode``.
        step: the quantisation step ``Δ`` (pixel units).

    Returns:
        One tensor per latent part, ``(N, c, h, w)`` each.
    """
    flow = _check_flow(flow)
    step = _check_step(step)
    x, *_ = _as_images(flow, images)
    out: list[list[Tensor]] = []
    with _deterministic(flow) as model:
        for rows in _batches(len(x), 256):
            parts, _ = model.latent_parts(torch.from_numpy(x[rows]).double())
            out.append([torch.round(p / step) for p in parts])
    return [torch.cat(group) for group in zip(*out)]


def reconstruct(flow: IntegerFlow, parts: list[Tensor], step: float) -> np.ndarray:
    """``x̂ = clip(⌊f(Δ·q)⌉, 0, levels − 1)`` as int64 ``(N, C, H, W)``.

    Args:
        flow: the IDF that produced the latents.
        parts: the quantised latent parts, as ``quantize`` returns them.
        step: the step ``Δ`` they were quantised with.

    Returns:
        The reconstructed images.
    """
    flow = _check_flow(flow)
    with _deterministic(flow) as model:
        ms = model.transform
        last = len(ms.levels) - 1
        h = parts[last].double() * step
        for level in range(last, 0, -1):
            a, _ = ms.levels[level](h)
            h = torch.cat([parts[level - 1].double() * step, a], 1)
        x, _ = ms.levels[0](h)
    return np.clip(np.rint(x.numpy()), 0, flow.levels - 1).astype(np.int64)


def fit_prior(flow: IntegerFlow, images: Tensor | np.ndarray, step: float,
              components: int = 3, steps: int = 300, lr: float = 0.05) -> FactorizedPrior:
    """Fit a ``FactorizedPrior`` to the quantised latents of ``images`` (full-batch Adam).

    Args:
        flow: a trained image IDF.
        images: training images (integers), as for ``pushforward.compression.encode``.
        step: the quantisation step ``Δ`` the prior will code.
        components: logistic components per channel.
        steps: Adam steps.
        lr: Adam's learning rate.

    Returns:
        The fitted prior, in eval mode.
    """
    parts = [p.float() for p in quantize(flow, images, step)]
    prior = FactorizedPrior([tuple(p.shape[1:]) for p in parts], components)
    with torch.no_grad():  # start every channel at its mean and spread
        for i, q in enumerate(parts):
            mean = q.mean(dim=(0, 2, 3))
            std = q.std(dim=(0, 2, 3)).clamp_min(0.5)
            prior.loc[i].copy_(mean[:, None] + std[:, None] * prior.loc[i])
            prior.log_scale[i].copy_(torch.log(std * 0.5)[:, None].expand_as(prior.log_scale[i]))
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    for _ in range(int(steps)):
        optimizer.zero_grad()
        loss = -prior.log_prob(parts).mean()
        loss.backward()
        optimizer.step()
    return prior.eval()


def _check_step(step: float) -> float:
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"the quantisation step must be a positive number, got {step}")
    return step


def _checksum(flow: IntegerFlow, prior: FactorizedPrior | None) -> int:
    return model_checksum(flow) ^ (0 if prior is None else model_checksum(prior))


def _scaled(params: tuple[Tensor, Tensor, Tensor], step: float
            ) -> tuple[Tensor, Tensor, Tensor]:
    """A prior on ``z`` as a prior on ``q = z/Δ``: locations and scales divided by ``Δ``."""
    logits, loc, log_scale = params
    return logits, loc / step, clamp_log_scale(log_scale - math.log(step))


def _code(flow: IntegerFlow, prior: FactorizedPrior | None, step: float, coder: object,
          parts: list[Tensor] | None, count: int) -> list[Tensor]:
    """Encode ``parts`` (or decode them when None) in the decoder's order.

    The top part, then each factored-out part; with ``prior=None`` under the flow's own priors,
    conditioned on the kept channels rebuilt from the quantised latent (as the decoder sees them).
    """
    with _deterministic(flow) as model:
        base = model.base
        ms = model.transform
        prior64 = None if prior is None else copy.deepcopy(prior).double()
        last = len(ms.levels) - 1
        shapes = [(k, *ms.levels[i].latent_shape[1:]) for i, k in enumerate(ms._factored)]
        shapes.append(tuple(ms.levels[last].latent_shape))
        out: list[Tensor] = [torch.empty(0)] * (last + 1)

        def one(index: int, params: tuple[Tensor, Tensor, Tensor]) -> Tensor:
            symbols = None if parts is None else parts[index].reshape(-1).numpy().astype(
                np.int64)
            values = _code_part(coder, params, symbols)
            out[index] = torch.from_numpy(values.astype(np.float64)).reshape(count,
                                                                             *shapes[index])
            return out[index]

        def params_of(index: int, kept: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
            if prior64 is not None:
                return prior64.params(index, count)
            if kept is None:
                return _scaled(base.top.params(count), step)
            return _scaled(base.split_params(index, kept), step)

        h = one(last, params_of(last, None)) * step
        for level in range(last, 0, -1):
            a, _ = ms.levels[level](h)
            o = one(level - 1, params_of(level - 1, a))
            h = torch.cat([o * step, a], 1)
    return out


def encode_lossy(flow: IntegerFlow, prior: FactorizedPrior | None,
                 images: Tensor | np.ndarray, step: float) -> bytes:
    """Code ``q = ⌊f⁻¹(x)/Δ⌉`` and return the stream.

    The stream records ``Δ`` and the CRC32 of the reconstruction the decoder must produce.

    Args:
        flow: a trained image IDF.
        prior: a ``FactorizedPrior`` fitted with ``fit_prior`` at this step, or None to use
            the flow's own factor-out priors rescaled to bins of width ``Δ`` (each part
            conditioned on the kept channels rebuilt from the quantised latent).
        images: integer images, as for ``pushforward.compression.encode``.
        step: the quantisation step ``Δ`` (pixel units).

    Returns:
        The stream, as bytes.

    Raises:
        ValueError: as ``pushforward.compression.encode``, or a non-positive step.
    """
    flow = _check_flow(flow)
    step = _check_step(step)
    x, container, dtype, rank = _as_images(flow, images)
    parts = quantize(flow, x, step)
    coder = _constriction().stream.queue.RangeEncoder()
    _code(flow, prior, step, coder, parts, len(x))
    header = stream.Header(container, dtype, rank, tuple(flow.event_shape), len(x), len(x),
                           flow.levels, _checksum(flow, prior),
                           _images_checksum(reconstruct(flow, parts, step)))
    body = stream.pack(header, np.zeros(0, np.uint32), coder.get_compressed())
    return _STEP.pack(_MAGIC, step) + body


def decode_lossy(flow: IntegerFlow, prior: FactorizedPrior | None, data: bytes
                 ) -> Tensor | np.ndarray:
    """The reconstruction ``x̂`` from a stream of ``encode_lossy`` (same flow and prior).

    Args:
        flow: the IDF the stream was encoded with.
        prior: the same ``FactorizedPrior`` (or None) as at encoding.
        data: the stream.

    Returns:
        The reconstruction, in the container (tensor or array), dtype and rank of the encoded
        images.

    Raises:
        ValueError: a corrupted, truncated or foreign stream, another model or prior.
    """
    flow = _check_flow(flow)
    if not isinstance(data, (bytes, bytearray)) or len(data) < _STEP.size \
            or data[:4] != _MAGIC:
        raise ValueError("decode_lossy: not a lossy pushforward stream (bad magic or too short)")
    _, step = _STEP.unpack(bytes(data[:_STEP.size]))
    header, _, payload = stream.unpack(bytes(data[_STEP.size:]))
    if header.model_crc != _checksum(flow, prior):
        raise ValueError("decode_lossy: the stream was encoded with a different model or prior")
    step = _check_step(step)
    coder = _constriction().stream.queue.RangeDecoder(payload)
    try:
        parts = _code(flow, prior, step, coder, None, header.count)
    except Exception as error:  # noqa: BLE001 - the coder refuses what it cannot parse
        raise ValueError(f"decode_lossy: corrupted stream ({error})") from None
    x = reconstruct(flow, parts, step)
    if _images_checksum(x) != header.images_crc:
        raise ValueError("decode_lossy: the reconstruction fails the encoder's checksum")
    return _restore(x, header)
