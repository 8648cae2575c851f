"""Images: scikit-learn's 8×8 digits, IDX files (MNIST, Fashion-MNIST), dequantisation, bits/dim.

Pixels are integers ``k ∈ {0, …, K−1}`` (``K = levels``: 17 for the digits, 256 for MNIST). A flow
models the dequantised ``u = (k + ε)/K ∈ [0, 1]^D``, ``ε ~ U[0, 1)^D``, and the discrete
log-likelihood is bounded below by the continuous one (Theis et al., 2016):

    log P(k) ≥ E_ε[log p_u((k + ε)/K)] − D log K.

If the flow is trained on pre-processed ``y = g(u)`` (e.g. the logit map), ``log p_u(u) =
log p_y(g(u)) + log|det ∂g/∂u|``. Hence, in bits per dimension,

    bits/dim = (NLL_y − log|det ∂g/∂u| + D log K) / (D ln 2),

where ``NLL_y = −log p_y(y)``. pushforward keeps ``g`` inside the flow (``LogitPreprocessing``),
so ``flow.log_prob(u)`` already is ``log p_u(u)`` and ``bits_per_dim(nll_u, D, K)`` adds only the
``D log K`` term. With ``K = 256`` this is the usual ``log 256`` correction.

References:
    A note on the evaluation of generative models, Theis, van den Oord & Bethge, 2016,
    arXiv:1511.01844.
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DequantizedImages",
    "bits_per_dim",
    "digits",
    "load_idx",
    "idx_dataset",
    "IDX_DATASETS",
    "idx_search_dirs",
]

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# name -> (Debian package, training images, test images)
IDX_DATASETS = {
    "fashion-mnist": (
        "dataset-fashion-mnist",
        "train-images-idx3-ubyte",
        "t10k-images-idx3-ubyte",
    ),
    "mnist": ("", "train-images-idx3-ubyte", "t10k-images-idx3-ubyte"),
}


def bits_per_dim(nll: float | Tensor, dims: int, levels: int = 256,
                 log_det_preprocessing: float | Tensor = 0.0) -> float | Tensor:
    """Bits per dimension of a discrete image from a continuous NLL (see the module docstring).

    Args:
        nll: ``−log p`` in nats of the continuous model (per image, or a mean).
        dims: ``D``, the number of pixels × channels.
        levels: ``K``, the number of intensity levels of the discrete data.
        log_det_preprocessing: ``log|det ∂g/∂u|`` of a pre-processing the NLL was computed after
            (0 when the flow includes it, as pushforward's image pipeline does).

    Returns:
        ``(nll − log_det_preprocessing + D log K) / (D ln 2)``.
    """
    if int(dims) <= 0:
        raise ValueError(f"dims must be positive, got {dims}")
    if int(levels) < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    d = int(dims)
    return (nll - log_det_preprocessing + d * math.log(int(levels))) / (d * math.log(2))


class DequantizedImages(Dataset):
    """Integer images dequantised on the fly: item ``i`` is ``(k_i + ε)/K`` with fresh ``ε``.

    The noise comes from torch's global generator, so a seeded run is reproducible and a resumed
    run (which restores the generator) continues the same stream. Indexing with a tensor of
    indices returns a whole batch at once.

    Args:
        images: integer pixel values ``(N, C, H, W)`` in ``{0, …, levels − 1}``.
        levels: the number of intensity levels ``K``.
        labels: optional ``(N,)`` class labels (kept for examples; not returned).
    """

    batch_indexing = True
    """``dataset[index_tensor]`` returns a whole batch (read by the training loop)."""

    def __init__(self, images: Tensor | np.ndarray, levels: int,
                 labels: Tensor | np.ndarray | None = None) -> None:
        images = torch.as_tensor(np.asarray(images))
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if images.is_floating_point() and not torch.equal(images, images.round()):
            raise ValueError("images must hold integer pixel values")
        levels = int(levels)
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        wide = images.to(torch.int64) if not images.is_floating_point() else images
        if images.numel() and (wide.min() < 0 or wide.max() >= levels):
            raise ValueError(f"pixel values must lie in [0, {levels - 1}]")
        self.images = images.to(torch.uint8 if levels <= 256 else torch.int64)
        self.levels = levels
        self.labels = None if labels is None else torch.as_tensor(np.asarray(labels))
        self.shape = tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int | Tensor) -> Tensor:
        k = self.images[index].to(torch.get_default_dtype())
        return (k + torch.rand_like(k)) / self.levels

    def subset(self, index: Tensor) -> DequantizedImages:
        """The images at ``index`` (a new dataset sharing nothing mutable)."""
        labels = None if self.labels is None else self.labels[index]
        return DequantizedImages(self.images[index], self.levels, labels)


def digits() -> tuple[np.ndarray, np.ndarray, int]:
    """scikit-learn's bundled 8×8 digits: images ``(1797, 1, 8, 8)`` in ``{0..16}``, labels, 17.

    Returns:
        ``(images, labels, levels)``: integer images ``(1797, 1, 8, 8)`` with values 0..16,
        integer labels ``(1797,)`` and the number of levels, 17.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.int64).reshape(-1, 1, 8, 8)
    return images, np.asarray(bunch.target), 17


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Args:
        path: an IDX file (``.gz`` allowed).

    Returns:
        The array with the file's shape and dtype (images: ``(N, H, W)`` uint8).

    Raises:
        ValueError: the file is not a well-formed IDX file.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot read IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(
            f"{path}: IDX body has {len(body)} bytes, the header {shape} needs {expected}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def idx_search_dirs(name: str) -> list[Path]:
    """Folders searched for the IDX dataset ``name``.

    ``$PUSHFORWARD_DATA/name`` then ``/usr/share/datasets/name`` (where the Debian packages put
    them).
    """
    dirs = []
    if os.environ.get("PUSHFORWARD_DATA"):
        dirs.append(Path(os.environ["PUSHFORWARD_DATA"]) / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        candidate = folder / (stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def idx_dataset(source: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """The images of an IDX dataset as ``(N, 1, H, W)`` uint8: ``(train, test or None)``.

    ``source`` is a registered name (``fashion-mnist``, ``mnist``), a folder holding
    ``train-images-idx3-ubyte[.gz]`` and/or ``t10k-images-idx3-ubyte[.gz]``, or one IDX images
    file. With both files the official test set is kept as the test split; with one file the
    split is made by seed later (``test`` is None).

    Args:
        source: a registered name, a folder, or an IDX images file.

    Returns:
        ``(train, test)``: uint8 arrays ``(N, 1, H, W)``; ``test`` is None when only one file was
        found.

    Raises:
        FileNotFoundError: the files are not there (the message says how to get them).
        ValueError: a file is not a valid IDX images file.
    """
    key = str(source).lower()
    train_file = test_file = None
    if key in IDX_DATASETS:
        package, train_stem, test_stem = IDX_DATASETS[key]
        for folder in idx_search_dirs(key):
            train_file, test_file = _find(folder, train_stem), _find(folder, test_stem)
            if train_file or test_file:
                break
        else:
            where = " or ".join(str(d) for d in idx_search_dirs(key))
            how = (f"install them with `apt-get install {package}`" if package
                   else "put the IDX files there, or pass their folder with --dataset PATH")
            raise FileNotFoundError(f"{key} IDX files not found in {where}; {how}")
    else:
        path = Path(source)
        if path.is_dir():
            train_file = _find(path, "train-images-idx3-ubyte")
            test_file = _find(path, "t10k-images-idx3-ubyte")
            if not (train_file or test_file):
                others = sorted(path.glob("*images-idx3-ubyte*"))
                if not others:
                    raise FileNotFoundError(f"no *images-idx3-ubyte[.gz] file in {path}")
                train_file = others[0]
        elif path.is_file():
            train_file = path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if train_file is None:
        train_file, test_file = test_file, None
    arrays = []
    for f in (train_file, test_file):
        if f is None:
            arrays.append(None)
            continue
        a = load_idx(f)
        if a.ndim != 3 or a.dtype != np.uint8:
            raise ValueError(f"{f}: expected uint8 images (N, H, W), got {a.dtype} {a.shape}")
        arrays.append(a[:, None])
    return arrays[0], arrays[1]
