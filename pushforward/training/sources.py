"""Batches for training: a tensor, an ``(x, context)`` pair or a sized Dataset, one interface."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset
from torch.utils.data._utils.collate import default_collate

__all__ = ["DataSource", "as_tensors"]


def as_tensors(data: Any, dtype: torch.dtype) -> Any:
    """Array-likes (NumPy arrays, nested lists) as tensors of ``dtype``.

    Tensors and Datasets pass through unchanged; a tuple ``(x, context)`` (or a list of two
    arrays) converts each half. So ``pf.fit(flow, pf.data.toy("moons", 1000))`` works as is.

    Args:
        data: the data as given to ``fit``.
        dtype: the flow's floating dtype.

    Returns:
        The data with array-likes converted.
    """
    if data is None or isinstance(data, (Tensor, Dataset)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(d, (Tensor, np.ndarray)) for d in data
    ):
        return tuple(as_tensors(d, dtype) for d in data)
    if isinstance(data, np.ndarray) or isinstance(data, (list, tuple)):
        array = np.asarray(data)
        if array.dtype.kind in "biuf":
            return torch.as_tensor(array, dtype=dtype)
    return data


class DataSource:
    """Uniform batch access to a tensor, an ``(x, context)`` pair or a sized Dataset.

    A Dataset is indexed with a whole tensor of indices at once when it is a
    ``TensorDataset`` or declares ``batch_indexing = True`` (e.g. ``DequantizedImages``, which
    draws the noise of a whole batch in one call); otherwise item by item and collated.

    Args:
        data: a tensor ``(N, *event)``, a pair ``(x, context)`` or a sized Dataset whose items
            are ``x`` or ``(x, context)``.
        name: what the data is called in messages (``"train"``, ``"val"``, ``"test"``).
        discrete: integer tensors are accepted (an integer discrete flow trains on them).

    Raises:
        TypeError: an unsupported kind of data, or a non-floating tensor.
        ValueError: a wrongly shaped, empty or non-finite tensor or context.
    """

    def __init__(self, data: Any, name: str, discrete: bool = False) -> None:
        self.context: Tensor | None = None
        self.dataset: Dataset | None = None
        self.tensor: Tensor | None = None
        if isinstance(data, Tensor):
            self.tensor = data
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data
        ):
            self.tensor, self.context = data
            if self.context.dim() != 2 or self.context.shape[0] != self.tensor.shape[0]:
                raise ValueError(
                    f"fit: {name} context must be (N, C) with N = {self.tensor.shape[0]}, got "
                    f"{tuple(self.context.shape)}"
                )
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.dataset = data
        else:
            raise TypeError(
                f"fit: {name} must be a tensor, an (x, context) pair of tensors or a sized "
                f"Dataset, got {type(data).__name__}"
            )
        if self.tensor is not None:
            self._check_tensor(name, discrete)
        if len(self) == 0:
            raise ValueError(f"fit: {name} is empty")

    def _check_tensor(self, name: str, discrete: bool) -> None:
        assert self.tensor is not None
        if discrete and not self.tensor.is_floating_point() and self.tensor.dtype not in (
                torch.bool, torch.complex64, torch.complex128):
            # An integer discrete flow (IDF) trains on the raw integers, not dequantised.
            self.tensor = self.tensor.to(torch.get_default_dtype())
        if not self.tensor.is_floating_point():
            raise TypeError(f"fit: {name} must be a floating-point tensor, got "
                            f"{self.tensor.dtype}")
        if self.tensor.dim() < 2:
            raise ValueError(f"fit: {name} must be shaped (N, *event), got "
                             f"{tuple(self.tensor.shape)}")
        if not torch.isfinite(self.tensor).all():
            raise ValueError(f"fit: {name} contains NaN or infinite values")
        if self.context is not None and not (
            self.context.is_floating_point() and torch.isfinite(self.context).all()
        ):
            raise ValueError(f"fit: {name} context must be finite floating-point values")

    def __len__(self) -> int:
        """The number of points."""
        return len(self.dataset) if self.dataset is not None else self.tensor.shape[0]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """The points at ``index`` and their context (None without one).

        Raises:
            ValueError: dataset items are neither ``x`` nor ``(x, context)``.
        """
        if self.tensor is not None:
            ctx = None if self.context is None else self.context[index]
            return self.tensor[index], ctx
        ds = self.dataset
        if isinstance(ds, TensorDataset) or getattr(ds, "batch_indexing", False):
            item = ds[index]
        else:
            item = default_collate([ds[int(i)] for i in index])
        if isinstance(item, (tuple, list)):
            if len(item) == 1:
                return item[0], None
            if len(item) == 2:
                return item[0], item[1]
            raise ValueError("fit: dataset items must be x or (x, context)")
        return item, None

    def batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor | None]]:
        """Every point once, in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.batch(torch.arange(start, min(start + batch_size, len(self)),
                                          device="cpu"))  # host-side index, like the data
