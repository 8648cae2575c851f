"""The ``vocoder`` preset.

WaveGlow over waveform segments, conditioned on their mel spectrogram, and the helpers that vocode
and score whole utterances.

``Vocoder(features=T)`` is a ``Flow`` over ``(T,)`` waveform segments with a ``StandardNormal``
base whose context is the segment's log-mel spectrogram flattened (``n_mels · (1 + T // hop)``
numbers, from ``pushforward.audio.MelSpectrogram``). ``vocode`` turns a mel spectrogram of any
length into audio (sampling temperature ``σ``: ``z ~ N(0, σ² I)``, as in the WaveGlow paper);
``audio_log_prob`` scores an utterance of any length (a multiple of ``hop``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward._registry import register
from pushforward.audio.spectral import MelSpectrogram, SpectrogramConfig
from pushforward.audio.waveglow import WaveGlow
from pushforward.core import Flow
from pushforward.distributions import StandardNormal

__all__ = ["Vocoder", "vocode", "audio_log_prob", "bits_per_sample", "spectrogram_of"]


@register("vocoder", accepts=("audio",))
def Vocoder(
    features: int = 1024,
    context: int = 0,
    *,
    sample_rate: int = 8000,
    n_fft: int = 256,
    hop: int = 64,
    n_mels: int = 40,
    group: int = 8,
    transforms: int = 8,
    early_every: int = 4,
    early_size: int = 2,
    hidden: int = 32,
    layers: int = 4,
    kernel_size: int = 3,
    cond_channels: int = 64,
    data_scale: float = 0.05,
) -> Flow:
    """WaveGlow vocoder (Prenger, Valle & Catanzaro, 2019) over waveform segments.

    Args:
        features: segment length ``T`` in samples (a multiple of ``hop``).
        context: the context width; 0 (default) means ``n_mels · (1 + T // hop)``, the only
            accepted value otherwise (the context is always the mel spectrogram).
        sample_rate: Hz, for the mel filterbank.
        n_fft: FFT size and window length of the mel spectrogram.
        hop: hop length of the mel spectrogram.
        n_mels: mel bands.
        group: samples per vector (``G``).
        transforms: (1×1 convolution, affine coupling) steps ``K``.
        early_every: emit ``early_size`` channels to the latent every this many steps.
        early_size: channels per early output.
        hidden: WaveNet channels of each coupling's conditioner.
        layers: dilated layers per WaveNet.
        kernel_size: WaveNet kernel size.
        cond_channels: channels of the upsampled mel.
        data_scale: initial amplitude of the learned data-side scale (the audio's typical
            amplitude, so the untrained flow already matches its level).

    Returns:
        The flow; ``flow.transform`` is the ``WaveGlow`` and carries ``spectrogram`` (the
        ``SpectrogramConfig``).

    Raises:
        ValueError: inconsistent sizes (``features`` not a multiple of ``hop``, ``hop`` not a
            multiple of ``group``, a ``context`` other than the mel width).

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.build("vocoder", features=256, hidden=8, layers=2, transforms=2)
        >>> audio = 0.1 * torch.randn(2, 256)
        >>> mel = pf.presets.vocoder.spectrogram_of(flow, audio)
        >>> flow.log_prob(audio, mel).shape
        torch.Size([2])
    """
    config = SpectrogramConfig(sample_rate, n_fft, hop, n_mels)
    width = n_mels * config.frames(features)
    if context not in (0, width):
        raise ValueError(f"vocoder preset: the context is the flattened mel spectrogram of "
                         f"width {width} (n_mels · (1 + features // hop)); got context={context}")
    transform = WaveGlow(features, n_mels=n_mels, hop=hop, group=group, flows=transforms,
                         early_every=early_every, early_size=early_size, hidden=hidden,
                         layers=layers, kernel_size=kernel_size, cond_channels=cond_channels,
                         data_scale=data_scale)
    transform.spectrogram = config
    return Flow(transform, StandardNormal(features))


def _waveglow(flow: Flow) -> WaveGlow:
    if not isinstance(flow.transform, WaveGlow):
        raise ValueError(f"expected a vocoder flow (a WaveGlow transform), got "
                         f"{type(flow.transform).__name__}")
    return flow.transform


def spectrogram_of(flow: Flow, audio: Tensor) -> Tensor:
    """The context for ``flow``: the flattened log-mel spectrogram of ``audio (B, T)``."""
    config = getattr(_waveglow(flow), "spectrogram", SpectrogramConfig())
    return MelSpectrogram(config).to(audio.device)(audio).flatten(1)


@torch.no_grad()
def vocode(
    flow: Flow, log_mel: Tensor, temperature: float = 0.6, seed: int | None = None
) -> Tensor:
    """Audio from a log-mel spectrogram: ``x = f(z; mel)``, ``z ~ N(0, σ² I)``.

    Args:
        flow: a ``Vocoder`` flow.
        log_mel: ``(B, n_mels, F)`` log-mel spectrograms (``MelSpectrogram``), any ``F >= 2``.
        temperature: ``σ`` (the paper samples with ``σ = 0.6``).
        seed: seed of ``z`` (None: the global generator).

    Returns:
        ``(B, (F − 1) · hop)`` waveforms.

    Raises:
        ValueError: not a vocoder flow, a mel of the wrong shape, or ``σ <= 0``.
    """
    t = _waveglow(flow)
    if log_mel.dim() != 3 or log_mel.shape[1] != t.n_mels or log_mel.shape[2] < 2:
        raise ValueError(f"vocode: log_mel must be (B, {t.n_mels}, F >= 2), got "
                         f"{tuple(log_mel.shape)}")
    if not temperature > 0:
        raise ValueError(f"vocode: temperature must be > 0, got {temperature}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    samples = (log_mel.shape[2] - 1) * t.hop
    z = torch.randn(log_mel.shape[0], samples, generator=generator, dtype=log_mel.dtype)
    audio, _ = t.generate(temperature * z.to(log_mel.device), log_mel)
    return audio


def audio_log_prob(flow: Flow, audio: Tensor, log_mel: Tensor | None = None) -> Tensor:
    """``log p(x | mel)`` in nats of whole waveforms ``(B, T)`` (``T`` a multiple of ``hop``).

    Args:
        flow: a ``Vocoder`` flow.
        audio: dequantised waveforms.
        log_mel: their ``(B, n_mels, 1 + T // hop)`` log-mel spectrograms (default: computed
            from ``audio``).

    Returns:
        ``(B,)`` log-densities.

    Raises:
        ValueError: ``T`` is not a positive multiple of ``hop``.
    """
    t = _waveglow(flow)
    if audio.dim() != 2 or audio.shape[1] % t.hop or audio.shape[1] == 0:
        raise ValueError(f"audio_log_prob: audio must be (B, T) with T a multiple of {t.hop}, "
                         f"got {tuple(audio.shape)}")
    if log_mel is None:
        log_mel = spectrogram_of(flow, audio).reshape(audio.shape[0], t.n_mels, -1)
    z, ladj = t.normalize(audio, log_mel)
    log_pz = -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)
    return log_pz + ladj


def bits_per_sample(log_prob: Tensor, samples: int | Tensor, bits: int = 16) -> float:
    """Bits per sample of ``b``-bit audio from densities of ``x = (k + u) / 2^(b−1)``.

    ``−log₂ P(k) ≤ E_u[−log₂ p(x)] + (b − 1)`` per sample, as the bins have width
    ``2^−(b−1)``; the total over the waveforms is divided by their total length.

    Args:
        log_prob: ``(B,)`` log-densities in nats.
        samples: the length of every waveform (an int) or of each (a ``(B,)`` tensor).
        bits: the bit depth.

    Returns:
        The bits per sample.

    Example:
        >>> round(bits_per_sample(torch.tensor([0.0]), 100), 3)  # p = 1 on [0, 1)^100
        15.0
    """
    total = float(torch.as_tensor(samples).sum()) * (
        log_prob.numel() if isinstance(samples, int) else 1)
    nats = -float(log_prob.detach().double().sum()) / total
    return nats / math.log(2) + (bits - 1)
