"""Spectral analysis without torchaudio.

STFT magnitudes, a mel filterbank, log-mel spectrograms, mel inversion and Griffin-Lim phase
reconstruction.

Everything is ``torch.stft`` / ``torch.istft`` with a periodic Hann window, ``center=True`` and
reflect padding, so a signal of ``T`` samples has ``1 + T // hop`` frames.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

__all__ = [
    "SpectrogramConfig",
    "MelSpectrogram",
    "stft_magnitude",
    "mel_filterbank",
    "hz_to_mel",
    "mel_to_hz",
    "mel_to_linear",
    "griffin_lim",
]


def hz_to_mel(f: Tensor | float) -> Tensor:
    """The HTK mel scale ``m = 2595 log10(1 + f / 700)``.

    Args:
        f: frequencies in Hz.

    Returns:
        The mel values, as a tensor.
    """
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor | float) -> Tensor:
    """Inverse of ``hz_to_mel``: ``f = 700 (10^(m / 2595) − 1)``.

    Args:
        m: mel values.

    Returns:
        The frequencies in Hz, as a tensor.
    """
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> Tensor:
    """Triangular mel filters ``M`` of shape ``(n_mels, n_fft // 2 + 1)`` (HTK style).

    Band ``m`` rises linearly from the centre frequency of band ``m − 1`` to a peak of 1 at its
    own centre and falls to 0 at the centre of band ``m + 1``; the ``n_mels + 2`` edges are
    equally spaced on the mel scale between ``fmin`` and ``fmax``. A pure tone of frequency
    ``f`` therefore responds most in the band whose centre is nearest to ``f`` in mel.

    Args:
        n_mels: number of bands.
        n_fft: FFT size (``n_fft // 2 + 1`` frequency bins from 0 to ``sample_rate / 2``).
        sample_rate: sampling rate in Hz.
        fmin: lowest edge in Hz.
        fmax: highest edge in Hz (default: the Nyquist frequency).

    Returns:
        The filterbank, float64.

    Raises:
        ValueError: a size is not positive or ``0 <= fmin < fmax <= sample_rate / 2`` fails.

    Example:
        >>> mel_filterbank(40, 256, 8000).shape
        torch.Size([40, 129])
    """
    if n_mels < 1 or n_fft < 2 or sample_rate <= 0:
        raise ValueError(f"mel_filterbank: need n_mels >= 1, n_fft >= 2, sample_rate > 0; got "
                         f"{n_mels}, {n_fft}, {sample_rate}")
    fmax = sample_rate / 2 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel_filterbank: need 0 <= fmin < fmax <= {sample_rate / 2}, got "
                         f"fmin={fmin}, fmax={fmax}")
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(fmin)), float(hz_to_mel(fmax)),
                                     n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


@dataclasses.dataclass(frozen=True)
class SpectrogramConfig:
    """STFT and mel settings shared by the features, the vocoder and the metrics.

    The defaults suit 8 kHz speech: 32 ms Hann windows every 8 ms, 40 mel bands up to 4 kHz
    (WaveGlow's 22 kHz setting scaled to this rate).

    Attributes:
        sample_rate: Hz.
        n_fft: FFT size (= window length).
        hop: samples between frames.
        n_mels: mel bands.
        fmin: lowest mel edge (Hz).
        fmax: highest mel edge (Hz; None: Nyquist).
    """

    sample_rate: int = 8000
    n_fft: int = 256
    hop: int = 64
    n_mels: int = 40
    fmin: float = 0.0
    fmax: float | None = None

    def frames(self, samples: int) -> int:
        """Number of STFT frames of a signal of ``samples`` samples (``1 + samples // hop``)."""
        return 1 + samples // self.hop


def _window(n_fft: int, like: Tensor) -> Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=like.dtype, device=like.device)


def stft_magnitude(audio: Tensor, n_fft: int = 256, hop: int = 64) -> Tensor:
    """``|STFT(audio)|`` with a Hann window, centred frames and reflect padding.

    Args:
        audio: ``(T,)`` or ``(B, T)`` waveform.
        n_fft: FFT size (= window length).
        hop: hop length.

    Returns:
        ``(…, n_fft // 2 + 1, 1 + T // hop)`` magnitudes.

    Raises:
        ValueError: the signal is not longer than ``n_fft // 2`` (reflect padding needs it).
    """
    if audio.shape[-1] <= n_fft // 2:
        raise ValueError(f"stft_magnitude: the signal needs more than {n_fft // 2} samples, "
                         f"got {audio.shape[-1]}")
    spec = torch.stft(audio, n_fft, hop_length=hop, window=_window(n_fft, audio), center=True,
                      pad_mode="reflect", return_complex=True)
    return spec.abs()


class MelSpectrogram(nn.Module):
    """Log-mel spectrogram ``log(max(M |STFT(x)|, 1e-5))`` (magnitude mel, as WaveGlow).

    Args:
        config: the analysis settings.

    Example:
        >>> mel = MelSpectrogram(SpectrogramConfig())
        >>> mel(torch.zeros(2, 640)).shape  # 1 + 640 // 64 frames
        torch.Size([2, 40, 11])
    """

    floor: float = 1e-5

    def __init__(self, config: SpectrogramConfig | None = None) -> None:
        super().__init__()
        self.config = config or SpectrogramConfig()
        c = self.config
        bank = mel_filterbank(c.n_mels, c.n_fft, c.sample_rate, c.fmin, c.fmax)
        self.register_buffer("filterbank", bank.to(torch.get_default_dtype()), persistent=False)

    def magnitude(self, audio: Tensor) -> Tensor:
        """The mel magnitudes ``M |STFT(x)|``, ``(…, n_mels, frames)``."""
        spec = stft_magnitude(audio, self.config.n_fft, self.config.hop)
        return self.filterbank.to(spec.dtype) @ spec

    def forward(self, audio: Tensor) -> Tensor:
        """The log-mel spectrogram of ``audio`` ``(…, T)``: ``(…, n_mels, 1 + T // hop)``."""
        return torch.log(torch.clamp(self.magnitude(audio), min=self.floor))


def mel_to_linear(log_mel: Tensor, filterbank: Tensor, iterations: int = 200) -> Tensor:
    """Invert a log-mel spectrogram to STFT magnitudes by non-negative least squares.

    Solves ``min_{S >= 0} ‖M S − exp(log_mel)‖²`` frame by frame with projected gradient
    (step ``1 / ‖MᵀM‖₂``), started from the clamped pseudo-inverse ``max(M⁺ mel, 0)``.

    Args:
        log_mel: ``(…, n_mels, frames)``.
        filterbank: ``M``, ``(n_mels, bins)``.
        iterations: projected-gradient steps (0: the clamped pseudo-inverse only).

    Returns:
        ``(…, bins, frames)`` non-negative magnitudes.
    """
    mel = log_mel.exp()
    m = filterbank.to(mel.dtype)
    gram = m.T @ m
    step = 1.0 / float(torch.linalg.matrix_norm(gram.double(), ord=2))
    spec = torch.clamp(torch.linalg.pinv(m.double()).to(mel.dtype) @ mel, min=0.0)
    target = m.T @ mel
    for _ in range(iterations):
        spec = torch.clamp(spec - step * (gram @ spec - target), min=0.0)
    return spec


def griffin_lim(
    magnitude: Tensor,
    n_fft: int = 256,
    hop: int = 64,
    iterations: int = 100,
    length: int | None = None,
    momentum: float = 0.99,
    seed: int = 0,
) -> Tensor:
    """Griffin-Lim phase reconstruction (the fast variant of Perraudin et al., 2013).

    Alternates projections onto consistent spectrograms (``STFT(ISTFT(·))``) and onto the
    given magnitudes, with momentum ``α`` on the consistent estimate (``α = 0``: the original
    algorithm of Griffin & Lim, 1984). The phase starts random.

    Args:
        magnitude: ``(…, n_fft // 2 + 1, frames)`` target magnitudes.
        n_fft: FFT size (= window length).
        hop: hop length.
        iterations: projection rounds.
        length: output length in samples (default ``(frames − 1) · hop``).
        momentum: ``α`` of fast Griffin-Lim.
        seed: seed of the initial random phase.

    Returns:
        ``(…, length)`` waveform.

    References:
        Griffin & Lim, "Signal estimation from modified short-time Fourier transform", 1984.
        Perraudin, Balazs & Søndergaard, "A fast Griffin-Lim algorithm", 2013.
    """
    window = _window(n_fft, magnitude)
    length = (magnitude.shape[-1] - 1) * hop if length is None else int(length)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype) * 2 * math.pi
    angles = torch.polar(torch.ones_like(magnitude), phase.to(magnitude.device))
    previous = torch.zeros_like(angles)

    def istft(spec: Tensor) -> Tensor:
        return torch.istft(spec, n_fft, hop_length=hop, window=window, center=True,
                           length=length)

    for _ in range(iterations):
        rebuilt = torch.stft(istft(magnitude * angles), n_fft, hop_length=hop, window=window,
                             center=True, pad_mode="reflect", return_complex=True)
        accelerated = rebuilt - (momentum / (1 + momentum)) * previous
        angles = accelerated / accelerated.abs().clamp(min=1e-16)
        previous = rebuilt
    return istft(magnitude * angles)
