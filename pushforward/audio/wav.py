"""WAV input/output with the standard library's ``wave`` module (PCM only), and folder loading.

Samples are returned as floats in ``[−1, 1)``: a ``b``-bit integer ``k`` becomes
``k / 2^(b−1)`` (8-bit WAVs are unsigned and are centred first).
"""

from __future__ import annotations

import dataclasses
import re
import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Recording", "read_wav", "write_wav", "load_wav_folder", "split_recordings"]

_FSDD_NAME = re.compile(r"^(\d+)_([A-Za-z]+)_(\d+)\.wav$")


@dataclasses.dataclass
class Recording:
    """One WAV file's audio.

    Attributes:
        audio: ``(T,)`` float32 samples in ``[−1, 1)`` (channels averaged).
        sample_rate: Hz.
        bits: bits per sample of the file's PCM encoding.
        path: where it was read from.
    """

    audio: Tensor
    sample_rate: int
    bits: int
    path: Path


def read_wav(path: str | Path) -> Recording:
    """Read a PCM WAV file (8, 16, 24 or 32 bits; several channels are averaged).

    Args:
        path: the file.

    Returns:
        The ``Recording``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable PCM WAV (not RIFF/WAVE, truncated, compressed
            or floating-point samples, no samples); the message names the file.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
        >>> write_wav(path, torch.zeros(80), 8000)
        >>> r = read_wav(path); (r.audio.shape, r.sample_rate, r.bits)
        (torch.Size([80]), 8000, 16)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_wav: no such file: {path}")
    try:
        with wave.open(str(path), "rb") as f:
            channels, width, rate, count = (f.getnchannels(), f.getsampwidth(),
                                            f.getframerate(), f.getnframes())
            raw = f.readframes(count)
    except (wave.Error, EOFError, OSError) as error:
        raise ValueError(f"read_wav: {path} is not a readable PCM WAV file ({error})") from error
    if width not in (1, 2, 3, 4) or channels < 1 or rate <= 0:
        raise ValueError(f"read_wav: {path}: unsupported format ({width}-byte samples, "
                         f"{channels} channels, {rate} Hz)")
    usable = len(raw) // (width * channels) * width * channels
    if usable == 0:
        raise ValueError(f"read_wav: {path} holds no audio samples")
    raw = raw[:usable]
    if width == 1:
        ints = np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
    else:
        ints = np.frombuffer(raw, dtype=f"<i{width}").astype(np.int64)
    audio = ints.reshape(-1, channels).mean(axis=1) / float(1 << (8 * width - 1))
    return Recording(torch.as_tensor(audio, dtype=torch.float32), rate, 8 * width, path)


def write_wav(path: str | Path, audio: Tensor, sample_rate: int) -> None:
    """Write mono 16-bit PCM: samples are clipped to ``[−1, 1]`` and rounded to ``k / 32768``.

    Args:
        path: the file to write (parent folders are created).
        audio: ``(T,)`` samples.
        sample_rate: Hz.

    Raises:
        ValueError: ``audio`` is not one-dimensional or not finite.
    """
    audio = torch.as_tensor(audio).detach().cpu().double()
    if audio.dim() != 1 or not torch.isfinite(audio).all():
        raise ValueError(f"write_wav: audio must be a finite (T,) tensor, got shape "
                         f"{tuple(audio.shape)}")
    ints = torch.clamp(torch.round(audio * 32768), -32768, 32767).to(torch.int16).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(ints.astype("<i2").tobytes())


def split_recordings(paths: list[Path], held_out_every: int = 10) -> tuple[list[Path], list[Path]]:
    """Train/test split of WAV files.

    Free-Spoken-Digit names ``{digit}_{speaker}_{index}.wav`` use the data set's standard split
    (index 0–4 of each speaker and digit held out); other names hold out every
    ``held_out_every``-th file in sorted order.

    Args:
        paths: the files.
        held_out_every: the stride of the fallback split.

    Returns:
        ``(train, test)`` lists of paths, sorted.
    """
    paths = sorted(paths)
    if paths and all(_FSDD_NAME.match(p.name) for p in paths):
        test = [p for p in paths if int(_FSDD_NAME.match(p.name).group(3)) < 5]  # type: ignore
    else:
        test = paths[::held_out_every]
    held = set(test)
    return [p for p in paths if p not in held], test


def load_wav_folder(
    folder: str | Path, split: str = "train", sample_rate: int | None = None
) -> list[Recording]:
    """Read every ``*.wav`` of a folder (recursively), one split of it.

    Args:
        folder: the folder.
        split: ``"train"``, ``"test"`` or ``"all"`` (see ``split_recordings``).
        sample_rate: when given, every file must have this rate.

    Returns:
        The recordings, in sorted path order.

    Raises:
        ValueError: no WAV file, an unknown split, a file of another rate, or an unreadable file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"load_wav_folder: {folder} is not a folder")
    paths = sorted(folder.rglob("*.wav"))
    if not paths:
        raise ValueError(f"load_wav_folder: no .wav files under {folder}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"load_wav_folder: split must be train, test or all, got {split!r}")
    train, test = split_recordings(paths)
    chosen = {"train": train, "test": test, "all": paths}[split]
    recordings = [read_wav(p) for p in chosen]
    for r in recordings:
        if sample_rate is not None and r.sample_rate != sample_rate:
            raise ValueError(f"load_wav_folder: {r.path} has {r.sample_rate} Hz, expected "
                             f"{sample_rate} Hz")
    return recordings
