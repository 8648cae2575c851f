"""A folder of WAV files as a training bundle for the command line (``--flow vocoder``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from pushforward.audio.segments import WaveSegments, dequantize
from pushforward.audio.spectral import MelSpectrogram, SpectrogramConfig
from pushforward.audio.wav import load_wav_folder
from pushforward.data.datasets import register_folder_source

__all__ = ["has_wav_files", "wav_segments"]

SEGMENT = 1024


def has_wav_files(path: Path) -> bool:
    """Whether ``path`` is a folder holding at least one ``*.wav`` file (recursively)."""
    return path.is_dir() and next(path.rglob("*.wav"), None) is not None


def _fixed_segments(audio: list[torch.Tensor], mel: MelSpectrogram, seed: int, bits: int
                    ) -> TensorDataset:
    """Every whole ``SEGMENT``-sample piece of each recording, dequantised once (seeded)."""
    pieces = [a[: a.numel() // SEGMENT * SEGMENT].reshape(-1, SEGMENT) for a in audio]
    clean = torch.cat([p for p in pieces if p.numel()] or [torch.zeros(0, SEGMENT)])
    if not len(clean):
        raise ValueError(f"no recording is at least {SEGMENT} samples long")
    x = dequantize(clean, torch.Generator().manual_seed(seed), bits)
    return TensorDataset(x, mel(clean).flatten(1))


def wav_segments(folder: Path, seed: int = 0) -> dict[str, Any]:
    """Train / val / test ``(x, mel)`` data of a WAV folder, for a vocoder.

    The files are split by ``split_recordings`` (the Free Spoken Digit split, else every tenth
    file held out); every tenth training file is kept for validation. Training draws random
    ``1024``-sample segments afresh (``WaveSegments``); validation and test are every whole
    segment of their files, dequantised once with ``seed``. All files must share the first
    file's sample rate (it sets the mel filterbank; the other ``SpectrogramConfig`` settings are
    the defaults) and bit depth.

    Args:
        folder: the folder.
        seed: seeds the random segments and the dequantisation.

    Returns:
        ``{"train", "val", "test", "event_shape", "sample_rate"}``.

    Raises:
        ValueError: no WAV file, unreadable files, mixed sample rates, or recordings too short.
    """
    train_files = load_wav_folder(folder, "train")
    rate, bits = train_files[0].sample_rate, train_files[0].bits
    test_files = load_wav_folder(folder, "test", sample_rate=rate)
    for r in train_files:
        if (r.sample_rate, r.bits) != (rate, bits):
            raise ValueError(f"{r.path} has {r.sample_rate} Hz, {r.bits}-bit samples; the first "
                             f"file has {rate} Hz, {bits}-bit")
    config = SpectrogramConfig(sample_rate=rate)
    mel = MelSpectrogram(config)
    held = set(range(0, len(train_files), 10)) if len(train_files) >= 10 else {0}
    val_files = [r for i, r in enumerate(train_files) if i in held]
    fit_files = [r for i, r in enumerate(train_files) if i not in held] or train_files
    with torch.no_grad():
        return {
            "train": WaveSegments([r.audio for r in fit_files], SEGMENT, config, seed=seed,
                                  bits=bits),
            "val": _fixed_segments([r.audio for r in val_files], mel, seed + 1, bits),
            "test": _fixed_segments([r.audio for r in test_files], mel, seed + 2, bits),
            "event_shape": (SEGMENT,),
            "sample_rate": rate,
        }


register_folder_source("audio", has_wav_files, wav_segments)  # load_dataset(WAV folder)
