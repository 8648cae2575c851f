"""Moving MNIST (Srivastava et al., 2015): digits bouncing inside small frames, made on the fly.

Nothing is downloaded or copied: the digits come from the MNIST test set a user already has
(``t10k-images-idx3-ubyte.gz``, IDX format), and a seeded generator turns them into videos. The
digit images are split once (by a fixed seed) into a training and a test pool, so test videos
show digits the model never saw. Only NumPy is used; the videos are ``uint8`` arrays
``(videos, frames, size, size)``.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["IMAGES", "load_digits", "split_digits", "bouncing_paths", "generate",
           "moving_mnist"]

IMAGES = "t10k-images-idx3-ubyte.gz"
SPLITS = ("train", "test")


def load_digits(path: str | Path) -> np.ndarray:
    """The MNIST digits of an IDX image file, ``uint8`` array ``(N, 28, 28)``.

    Args:
        path: the IDX file (``.gz`` or not) or a folder holding ``t10k-images-idx3-ubyte.gz``
            (or its unzipped twin).

    Returns:
        The images, ``(N, rows, cols)``, values ``0 … 255``.

    Raises:
        FileNotFoundError: no such file (the message names the path looked at).
        ValueError: the file is not an IDX image file (wrong magic number or size).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / IMAGES, path / IMAGES[:-3]]
        file = next((f for f in found if f.is_file()), None)
        if file is None:
            raise FileNotFoundError(
                f"Moving MNIST: no MNIST digits in {path} (looked for {found[0].name} or "
                f"{found[1].name}); pass the folder that holds the MNIST test images"
            )
    elif path.is_file():
        file = path
    else:
        raise FileNotFoundError(f"Moving MNIST: {path} does not exist; pass the MNIST test "
                                f"images ({IMAGES}) or the folder that holds them")
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rb") as handle:
        raw = handle.read()
    if len(raw) < 16 or int.from_bytes(raw[:4], "big") != 2051:
        raise ValueError(f"Moving MNIST: {file} is not an IDX image file (magic number 2051)")
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * rows * cols:
        raise ValueError(f"Moving MNIST: {file} is truncated ({len(raw) - 16} pixel bytes for "
                         f"{n} images of {rows}×{cols})")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols).copy()


def split_digits(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Disjoint training and test index sets over ``n`` digit images (a seeded permutation).

    Args:
        n: number of digit images.
        test_fraction: share of the images kept for test videos, in ``(0, 1)``.
        seed: the permutation's seed.

    Returns:
        ``(train, test)`` sorted index arrays; together they cover ``0 … n−1`` once.

    Raises:
        ValueError: ``n < 2`` or a fraction that leaves a pool empty.
    """
    if int(n) < 2 or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"split_digits: need n >= 2 and 0 < test_fraction < 1, got n={n}, "
                         f"test_fraction={test_fraction}")
    order = np.random.default_rng(seed).permutation(int(n))
    n_test = min(max(1, round(n * float(test_fraction))), int(n) - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def bouncing_paths(
    rng: np.random.Generator, n: int, frames: int, limit: int, speed: tuple[float, float]
) -> np.ndarray:
    """Top-left corners of ``n`` digits moving in straight lines and bouncing off the walls.

    Each digit starts at a uniform position in ``[0, limit]²`` with a uniform direction and a
    speed uniform in ``speed`` (pixels per frame); a coordinate that leaves ``[0, limit]`` is
    reflected back and its velocity component flips sign.

    Args:
        rng: the random generator.
        n: number of digits.
        frames: number of frames.
        limit: largest corner coordinate (frame size minus digit size).
        speed: ``(low, high)`` speed range.

    Returns:
        Integer corners ``(frames, n, 2)`` (row, column), all within ``[0, limit]``.
    """
    position = rng.uniform(0.0, limit, size=(n, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    velocity = rng.uniform(*speed, size=n)[:, None] * np.stack([np.sin(angle), np.cos(angle)], 1)
    corners = np.empty((frames, n, 2), dtype=np.int64)
    for t in range(frames):
        corners[t] = np.clip(np.rint(position), 0, limit)
        position = position + velocity
        low, high = position < 0.0, position > limit
        position = np.where(low, -position, np.where(high, 2.0 * limit - position, position))
        velocity = np.where(low | high, -velocity, velocity)
    return corners


def _shrink(digits: np.ndarray, size: int) -> np.ndarray:
    """Digits ``(N, 28, 28)`` → ``(N, size, size)``.

    By block averaging when 28 is a multiple of ``size``, nearest-neighbour sampling otherwise.
    """
    n, rows, cols = digits.shape
    if rows == size and cols == size:
        return digits
    if rows % size == 0 and cols % size == 0:
        f, g = rows // size, cols // size
        blocks = digits.reshape(n, size, f, size, g).astype(np.float64).mean((2, 4))
        return np.rint(blocks).astype(np.uint8)
    r = (np.arange(size) * rows) // size
    c = (np.arange(size) * cols) // size
    return digits[:, r][:, :, c]


def generate(
    digits: np.ndarray,
    videos: int,
    frames: int = 10,
    size: int = 32,
    digit_size: int = 14,
    n_digits: int = 2,
    speed: Sequence[float] = (1.0, 2.0),
    seed: int = 0,
) -> np.ndarray:
    """Moving MNIST videos: ``n_digits`` digits bouncing in ``size × size`` frames.

    Each video draws its digits uniformly from ``digits`` (shrunk to ``digit_size`` pixels by
    block averaging) and their paths from ``bouncing_paths``; frames combine the digits by a
    pixel-wise maximum, on a black background. The same arguments and ``seed`` give the same
    videos.

    Args:
        digits: the digit images, ``(N, rows, cols)`` ``uint8``.
        videos: number of videos.
        frames: frames per video.
        size: frame height and width.
        digit_size: digit height and width inside the frame (at most ``size``).
        n_digits: digits per video.
        speed: ``(low, high)`` speed in pixels per frame.
        seed: the seed of everything random.

    Returns:
        ``uint8`` array ``(videos, frames, size, size)``.

    Raises:
        ValueError: empty or non-``(N, H, W)`` digits, or a non-positive count or size.

    Example:
        >>> import numpy as np
        >>> digits = np.full((3, 28, 28), 255, dtype=np.uint8)
        >>> generate(digits, videos=2, frames=4, seed=0).shape
        (2, 4, 32, 32)
    """
    digits = np.asarray(digits)
    if digits.ndim != 3 or len(digits) == 0:
        raise ValueError(f"generate: digits must be a non-empty (N, H, W) array, got shape "
                         f"{digits.shape}")
    for name, value in (("videos", videos), ("frames", frames), ("size", size),
                        ("digit_size", digit_size), ("n_digits", n_digits)):
        if int(value) < 1:
            raise ValueError(f"generate: {name} must be >= 1, got {value}")
    if digit_size > size:
        raise ValueError(f"generate: digit_size {digit_size} exceeds the frame size {size}")
    low, high = (float(s) for s in speed)
    if not 0.0 <= low <= high:
        raise ValueError(f"generate: speed must be (low, high) with 0 <= low <= high, got "
                         f"{tuple(speed)}")
    small = _shrink(digits.astype(np.uint8), digit_size)
    rng = np.random.default_rng(seed)
    out = np.zeros((videos, frames, size, size), dtype=np.uint8)
    limit = size - digit_size
    for v in range(videos):
        chosen = small[rng.integers(0, len(small), size=n_digits)]
        corners = bouncing_paths(rng, n_digits, frames, limit, (low, high))
        for t in range(frames):
            for k in range(n_digits):
                r, c = corners[t, k]
                window = out[v, t, r:r + digit_size, c:c + digit_size]
                np.maximum(window, chosen[k], out=window)
    return out


def moving_mnist(
    path: str | Path,
    split: str = "train",
    videos: int = 1000,
    frames: int = 10,
    seed: int | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    **options: object,
) -> np.ndarray:
    """Moving MNIST videos from the MNIST test digits at ``path``, train or test pool.

    The digit images are split by ``split_digits(N, test_fraction, split_seed)``; ``"train"``
    videos use only the training pool and ``"test"`` videos only the held-out pool.

    Args:
        path: the MNIST test images (``t10k-images-idx3-ubyte.gz``) or their folder.
        split: ``"train"`` or ``"test"``.
        videos: number of videos.
        frames: frames per video.
        seed: the videos' seed (None: 0 for train, 1 for test).
        test_fraction: share of the digits held out for test videos.
        split_seed: seed of the digit split (keep it fixed across train and test).
        **options: ``generate``'s other arguments (``size``, ``digit_size``, ``n_digits``,
            ``speed``).

    Returns:
        ``uint8`` array ``(videos, frames, size, size)``.

    Raises:
        FileNotFoundError: the digits are not at ``path``.
        ValueError: an unknown split or bad generator arguments.
    """
    if split not in SPLITS:
        raise ValueError(f"moving_mnist: split must be one of {SPLITS}, got {split!r}")
    digits = load_digits(path)
    train, test = split_digits(len(digits), test_fraction, split_seed)
    pool = digits[train if split == "train" else test]
    if seed is None:
        seed = SPLITS.index(split)
    return generate(pool, videos, frames, seed=seed, **options)  # type: ignore[arg-type]
