"""Vocoding quality: log-spectral distance and mel cepstral distortion between two waveforms.

Both compare time-aligned signals of equal length frame by frame (no time warping: a vocoder
reproduces the timing of the spectrogram it is given).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward.audio.spectral import SpectrogramConfig, mel_filterbank, stft_magnitude

__all__ = ["log_spectral_distance", "mel_cepstral_distortion", "dct_matrix"]


def _check_pair(reference: Tensor, estimate: Tensor, name: str) -> None:
    if reference.shape != estimate.shape or reference.dim() != 1:
        raise ValueError(f"{name}: need two (T,) signals of equal length, got "
                         f"{tuple(reference.shape)} and {tuple(estimate.shape)}")


def log_spectral_distance(
    reference: Tensor, estimate: Tensor, config: SpectrogramConfig | None = None,
    eps: float = 1e-10
) -> float:
    """Log-spectral distance in dB, averaged over frames.

    ``LSD = mean_t sqrt(mean_f (10 log10(|X_tf|² + ε) − 10 log10(|X̂_tf|² + ε))²)`` on the
    STFT of ``config`` (Hann window, ``n_fft`` bins).

    Args:
        reference: ``(T,)`` original waveform.
        estimate: ``(T,)`` reconstruction.
        config: the STFT settings (default ``SpectrogramConfig()``).
        eps: power floor.

    Returns:
        The distance in dB (0 for identical signals).

    Example:
        >>> x = torch.randn(800)
        >>> log_spectral_distance(x, x)
        0.0
    """
    _check_pair(reference, estimate, "log_spectral_distance")
    c = config or SpectrogramConfig()
    power = [stft_magnitude(s.double(), c.n_fft, c.hop) ** 2 for s in (reference, estimate)]
    diff = 10 * torch.log10(power[0] + eps) - 10 * torch.log10(power[1] + eps)
    return float(diff.pow(2).mean(dim=0).sqrt().mean())


def dct_matrix(n: int, k: int) -> Tensor:
    """The first ``k`` rows of the orthonormal DCT-II of size ``n``, float64 ``(k, n)``."""
    i = torch.arange(n, dtype=torch.float64)
    rows = torch.arange(k, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / n * (i + 0.5) * rows) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def mel_cepstral_distortion(
    reference: Tensor, estimate: Tensor, config: SpectrogramConfig | None = None,
    coefficients: int = 24, floor: float = 1e-5
) -> float:
    """Mel cepstral distortion in dB, averaged over frames.

    Mel cepstra ``c = DCT(log max(M |X|, floor))`` (orthonormal DCT-II of the log mel amplitude
    spectrum, ``config.n_mels`` bands); with ``c_0`` (the energy) excluded,
    ``MCD = mean_t (10 / ln 10) sqrt(2 Σ_{d=1}^{D} (c_td − ĉ_td)²)``.

    Args:
        reference: ``(T,)`` original waveform.
        estimate: ``(T,)`` reconstruction.
        config: the analysis settings (default ``SpectrogramConfig()``).
        coefficients: ``D``, cepstral coefficients compared (at most ``n_mels − 1``).
        floor: amplitude floor before the log.

    Returns:
        The distortion in dB (0 for identical signals).

    Raises:
        ValueError: different shapes, or ``coefficients`` out of ``1 … n_mels − 1``.
    """
    _check_pair(reference, estimate, "mel_cepstral_distortion")
    c = config or SpectrogramConfig()
    if not 1 <= coefficients < c.n_mels:
        raise ValueError(f"mel_cepstral_distortion: coefficients must be in 1..{c.n_mels - 1}, "
                         f"got {coefficients}")
    bank = mel_filterbank(c.n_mels, c.n_fft, c.sample_rate, c.fmin, c.fmax)
    dct = dct_matrix(c.n_mels, coefficients + 1)[1:]
    cepstra = [dct @ torch.log(torch.clamp(bank @ stft_magnitude(s.double(), c.n_fft, c.hop),
                                           min=floor)) for s in (reference, estimate)]
    per_frame = (2 * (cepstra[0] - cepstra[1]).pow(2).sum(dim=0)).sqrt()
    return float(10 / math.log(10) * per_frame.mean())
