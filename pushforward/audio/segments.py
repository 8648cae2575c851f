"""Training pairs for a vocoder: random waveform segments with their log-mel spectrograms."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pushforward.audio.spectral import MelSpectrogram, SpectrogramConfig

__all__ = ["WaveSegments", "dequantize"]


def dequantize(audio: Tensor, generator: torch.Generator | None = None,
               bits: int = 16) -> Tensor:
    """Uniform dequantisation of ``b``-bit audio in ``[−1, 1)``: ``x = (k + u) / 2^(b−1)``.

    ``audio = k / 2^(b−1)`` holds the integers ``k``; ``u ~ U[0, 1)`` is fresh noise. A density
    ``p`` of ``x`` then bounds the probability of the integers:
    ``−log₂ P(k) ≤ E_u[−log₂ p(x)] + (b − 1)`` bits per sample.

    Args:
        audio: quantised samples.
        generator: random source.
        bits: the bit depth.

    Returns:
        The dequantised samples, same shape.
    """
    noise = torch.rand(audio.shape, generator=generator, dtype=audio.dtype)
    return audio + noise.to(audio.device) / float(1 << (bits - 1))


class WaveSegments(Dataset):
    """Random dequantised segments of a set of waveforms, with their log-mel spectrograms.

    Each item is ``samples`` samples of a waveform; its flattened log-mel spectrogram is the
    context.

    Indexing with a tensor of indices (``batch_indexing``) returns ``(x, context)`` of shapes
    ``(B, samples)`` and ``(B, n_mels · (1 + samples // hop))``; every access draws a new
    random offset in each chosen recording (shorter recordings are zero-padded at the end) and
    new dequantisation noise. ``len`` is the number of recordings.

    Args:
        audio: the recordings, each ``(T_i,)`` with samples ``k / 32768``.
        samples: the segment length.
        config: the mel settings.
        seed: seed of the offsets and the noise.
        bits: bit depth of the recordings.
    """

    batch_indexing = True

    def __init__(self, audio: list[Tensor], samples: int, config: SpectrogramConfig | None = None,
                 seed: int = 0, bits: int = 16) -> None:
        if not audio:
            raise ValueError("WaveSegments: no recordings")
        self.audio = [a.float().flatten() for a in audio]
        self.samples = int(samples)
        self.mel = MelSpectrogram(config)
        self.bits = bits
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.audio)

    def crop(self, index: Tensor | list[int]) -> Tensor:
        """Random quantised crops ``(B, samples)`` of the recordings ``index``."""
        rows = []
        for i in torch.as_tensor(index).flatten().tolist():
            a = self.audio[int(i)]
            if a.numel() < self.samples:
                a = torch.nn.functional.pad(a, (0, self.samples - a.numel()))
            start = int(torch.randint(0, a.numel() - self.samples + 1, (1,),
                                      generator=self.generator))
            rows.append(a[start: start + self.samples])
        return torch.stack(rows)

    def __getitem__(self, index: Tensor | int) -> tuple[Tensor, Tensor]:
        clean = self.crop(torch.as_tensor(index).reshape(-1))
        x = dequantize(clean, self.generator, self.bits)
        context = self.mel(clean).flatten(1)
        if not isinstance(index, Tensor) or index.dim() == 0:
            return x[0], context[0]
        return x, context
