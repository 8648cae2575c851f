"""Built-in datasets (2-D toys, digits, IDX images), CSV/NPY loaders, bits/dim.

This package only loads data: it imports nothing of pushforward but ``core``. The learned
dequantisation lives with the losses (``pushforward.training.VariationalDequantization``).
"""

from pushforward.data import preprocess
from pushforward.data.datasets import DataBundle, datasets, load_dataset, split_indices
from pushforward.data.images import (
    DequantizedImages,
    bits_per_dim,
    digits,
    idx_dataset,
    load_idx,
)
from pushforward.data.tabular import (
    latlon_to_unit,
    load_csv,
    load_npy,
    load_table,
    unit_to_latlon,
)
from pushforward.data.toy import TOY_DATASETS, toy, toy_names

__all__ = [
    "DataBundle",
    "preprocess",
    "DequantizedImages",
    "TOY_DATASETS",
    "bits_per_dim",
    "datasets",
    "digits",
    "idx_dataset",
    "latlon_to_unit",
    "load_csv",
    "load_dataset",
    "load_idx",
    "load_npy",
    "load_table",
    "split_indices",
    "toy",
    "toy_names",
    "unit_to_latlon",
]
