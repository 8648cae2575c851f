"""Named datasets and user files, split by seed into train / val / test.

``load_dataset(source, seed)`` returns a ``DataBundle``: the splits as tensors (vectors) or
``DequantizedImages`` (images), the pre-processing layers a flow trained on it must end with
(standardisation, logit), and a JSON ``spec`` that rebuilds the same bundle (stored in a
checkpoint's ``config.json`` so ``eval`` can find the test split again).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward.core import Transform, from_spec
from pushforward.data.images import (
    IDX_DATASETS,
    DequantizedImages,
    digits,
    idx_dataset,
)
from pushforward.data.tabular import latlon_to_unit, load_table, unit_to_latlon
from pushforward.data.toy import TOY_DATASETS, toy

__all__ = ["DataBundle", "load_dataset", "datasets", "split_indices"]

TOY_SIZE = 20_000
FRACTIONS = (0.8, 0.1, 0.1)

_DESCRIPTIONS = {
    "8gaussians": "2-D, eight Gaussians on a circle (FFJORD toy)",
    "checkerboard": "2-D, uniform on a 4x4 checkerboard (FFJORD toy)",
    "pinwheel": "2-D, five curved arms (FFJORD toy)",
    "2spirals": "2-D, two interleaved spirals (FFJORD toy)",
    "rings": "2-D, four concentric rings (FFJORD toy)",
    "moons": "2-D, two interleaved half circles, noise 0.1 (scikit-learn make_moons)",
    "circles": "2-D, two concentric circles (scikit-learn make_circles)",
    "swissroll": "2-D, the swiss roll seen from above (FFJORD toy)",
    "digits": "images 1x8x8, scikit-learn's bundled handwritten digits (1,797), 17 levels",
    "fashion-mnist": "images 1x28x28, Fashion-MNIST IDX files (apt-get install "
                     "dataset-fashion-mnist)",
    "mnist": "images 1x28x28, MNIST IDX files from $PUSHFORWARD_DATA/mnist or "
             "/usr/share/datasets/mnist (or pass the folder as --dataset PATH)",
}


FolderLoader = Callable[[Path, int], dict[str, Any]]
_FOLDER_SOURCES: dict[str, tuple[Callable[[Path], bool], FolderLoader]] = {}


def register_folder_source(kind: str, accepts: Callable[[Path], bool],
                           load: FolderLoader) -> None:
    """Let a package load folders of its own files without this package importing it.

    ``load_dataset(folder)`` asks every registered source, in registration order, whether it
    ``accepts(folder)``; the first that does builds the bundle from ``load(folder, seed)``, a
    dict with ``"train"``, ``"val"``, ``"test"`` and ``"event_shape"`` (``pushforward.audio``
    registers its WAV folders this way, as ``kind="audio"``).

    Args:
        kind: the bundle's kind.
        accepts: whether a folder is this source's.
        load: ``(folder, seed) -> parts``.
    """
    _FOLDER_SOURCES[kind] = (accepts, load)


def datasets() -> dict[str, str]:
    """The built-in dataset names and a one-line description of each.

    Returns:
        ``{name: description}`` for the toys, ``digits``, ``fashion-mnist`` and ``mnist``.
    """
    return dict(_DESCRIPTIONS)


def split_indices(n: int, seed: int, fractions: tuple[float, ...] = FRACTIONS) -> list[Tensor]:
    """A seeded random partition of ``range(n)`` into parts of the given fractions.

    Args:
        n: the number of rows.
        seed: seeds the permutation.
        fractions: the parts' shares of ``n`` (the last part takes the rounding remainder).

    Returns:
        One index tensor per fraction, disjoint, together a permutation of ``range(n)``.

    Raises:
        ValueError: fewer rows than parts.
    """
    if n < len(fractions):
        raise ValueError(f"need at least {len(fractions)} rows to split, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919),
                           device="cpu")
    sizes = [max(1, math.floor(f * n)) for f in fractions[1:]]
    first = n - sum(sizes)
    bounds = np.cumsum([0, first, *sizes])
    return [order[bounds[i]:bounds[i + 1]] for i in range(len(fractions))]


@dataclasses.dataclass
class DataBundle:
    """A dataset split into train / val / test, with what a flow needs to model it.

    Attributes:
        name: the dataset's name or file path.
        kind: ``"vector"``, ``"image"``, ``"sphere"`` or ``"audio"`` (waveform segments with
            their mel spectrograms as context: ``(x, context)`` data for ``--flow vocoder``).
        event_shape: shape of one sample as the flow sees it.
        train: the training split, a tensor ``(N, *event_shape)`` or ``DequantizedImages``.
        val: the validation split, of the same kind.
        test: the test split, of the same kind.
        preprocess: fixed layers to prepend to a flow (``flow.prepend(bundle.preprocess)``;
            the data side last), e.g. a standardisation; built from their records
            (``pushforward.specs``), so this package needs no transform module.
        levels: number of pixel levels (images), else None.
        spec: a JSON record ``load_dataset(**spec)`` accepts to rebuild this bundle.
    """

    name: str
    kind: str
    event_shape: tuple[int, ...]
    train: Any
    val: Any
    test: Any
    preprocess: list[Transform]
    levels: int | None
    spec: dict[str, Any]

    @property
    def dims(self) -> int:
        """``D``: the number of values in one sample."""
        return math.prod(self.event_shape)

    def to_user(self, x: Tensor) -> np.ndarray:
        """Samples in the user's units: lat/lon degrees on the sphere, pixel scale for images."""
        array = x.detach().cpu().double().numpy()
        if self.kind == "sphere":
            return unit_to_latlon(array)
        return array


def _standardization(train: Tensor) -> Transform:
    """The fixed ``x = μ + σ ⊙ y`` (``pf.transforms.Standardization``) of the training split."""
    loc = train.mean(0)
    scale = train.std(0)
    scale = torch.where(scale > 1e-12 * (1 + loc.abs()), scale, torch.ones_like(scale))
    return from_spec({"type": "standardization", "loc": loc.double().tolist(),
                      "scale": scale.double().tolist()})


def _vector_bundle(name: str, data: np.ndarray, seed: int, spec: dict[str, Any],
                   standardize: bool = True) -> DataBundle:
    x = torch.as_tensor(data, dtype=torch.get_default_dtype())
    train_i, val_i, test_i = split_indices(len(x), seed)
    train = x[train_i]
    layers: list[Transform] = [_standardization(train)] if standardize else []
    return DataBundle(name, "vector", tuple(x.shape[1:]), train, x[val_i], x[test_i], layers,
                      None, spec)


def load_dataset(source: str | os.PathLike, seed: int = 0, manifold: str | None = None,
                 image_preprocessing: str = "logit", size: int | None = None) -> DataBundle:
    """Load a built-in dataset or a user file and split it by ``seed`` (80 / 10 / 10 %).

    Args:
        source: a name from ``datasets()``, a ``.csv``/``.npy`` file, or a folder / file of IDX
            images.
        seed: seeds the toy generator and the split.
        manifold: ``"sphere"``: the file holds latitude, longitude in degrees; the data become
            unit vectors in R³ (no standardisation: the flow lives on S²).
        image_preprocessing: ``"logit"`` (``y = logit(α + (1 − 2α)u)``, α = 0.05) or ``"unit"``
            (the flow sees ``u ∈ [0, 1]`` directly).
        size: number of points drawn from a toy density (default 20,000).

    Returns:
        A ``DataBundle``: the ``train`` / ``val`` / ``test`` tensors, the ``preprocess`` layers to
        append to a flow (``pf.data.preprocess.wrap``), the data's kind, event shape and
        pixel levels, and the ``spec`` that rebuilds the bundle.

    Raises:
        ValueError: unknown name, bad option, malformed file.
        FileNotFoundError: a named file or IDX dataset is not there.

    Example:
        >>> import pushforward as pf
        >>> bundle = pf.load_dataset("moons", seed=0, size=1000)
        >>> tuple(bundle.train.shape), tuple(bundle.test.shape)
        ((800, 2), (100, 2))
    """
    key = str(source)
    seed = int(seed)
    spec: dict[str, Any] = {"source": key, "seed": seed, "manifold": manifold,
                            "image_preprocessing": image_preprocessing, "size": size}
    if manifold not in (None, "sphere"):
        raise ValueError(f"unknown manifold {manifold!r}; the CLI knows 'sphere'")
    if image_preprocessing not in ("logit", "unit"):
        raise ValueError(f"image_preprocessing must be 'logit' or 'unit', got "
                         f"{image_preprocessing!r}")
    lower = key.lower()
    if lower in TOY_DATASETS:
        if manifold is not None:
            raise ValueError(f"{key} is a 2-D dataset, not latitude/longitude data")
        n = TOY_SIZE if size is None else int(size)
        return _vector_bundle(lower, toy(lower, n, seed), seed, spec)
    path = Path(key)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".npy", ".txt", ".tsv"):
        table = load_table(path)
        if manifold == "sphere":
            units = torch.as_tensor(latlon_to_unit(table), dtype=torch.get_default_dtype())
            train_i, val_i, test_i = split_indices(len(units), seed)
            return DataBundle(key, "sphere", (3,), units[train_i], units[val_i], units[test_i],
                              [], None, spec)
        return _vector_bundle(key, table.reshape(len(table), -1), seed, spec)
    if manifold is not None:
        raise ValueError(f"--manifold {manifold} needs a latitude/longitude .csv or .npy file")
    for kind, (accepts, load) in _FOLDER_SOURCES.items():  # e.g. a folder of WAVs (audio)
        if path.is_dir() and accepts(path):
            parts = load(path, seed)
            return DataBundle(key, kind, parts["event_shape"], parts["train"], parts["val"],
                              parts["test"], [], None, spec)
    if lower == "digits":
        images, labels, levels = digits()
        test_images = None
    elif lower in IDX_DATASETS or path.is_dir() or "idx" in path.name:
        images, test_images = idx_dataset(key if lower not in IDX_DATASETS else lower)
        labels, levels = None, 256
        if lower in IDX_DATASETS:
            key = lower
    else:
        if not path.suffix and not path.exists():
            known = ", ".join(datasets())
            raise ValueError(f"unknown dataset {key!r}; choose one of {known}, or give a "
                             ".csv/.npy file")
        if not path.exists():
            raise FileNotFoundError(f"no such file: {path}")
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .csv or .npy)")
    all_images = DequantizedImages(images, levels, labels)
    if test_images is None:
        train_i, val_i, test_i = split_indices(len(all_images), seed)
        test = all_images.subset(test_i)
    else:
        train_i, val_i = split_indices(len(all_images), seed, (0.9, 0.1))
        test = DequantizedImages(test_images, levels)
    shape = all_images.shape
    layers: list[Transform] = (
        [from_spec({"type": "logit", "shape": list(shape), "alpha": 0.05})]
        if image_preprocessing == "logit" else []
    )
    return DataBundle(key, "image", shape, all_images.subset(train_i),
                      all_images.subset(val_i), test, layers, levels, spec)
