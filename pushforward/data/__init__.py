"""Built-in datasets (2-D toys, digits, IDX images), CSV/NPY loaders, dequantisation, bits/dim."""

from pushforward.data.datasets import DataBundle, datasets, load_dataset, split_indices
from pushforward.data.dequantization import VariationalDequantization, dequantized_log_prob
from pushforward.data.images import (
    DequantizedImages,
    bits_per_dim,
    digits,
    idx_dataset,
    load_idx,
)
from pushforward.data.preprocess import LogitPreprocessing, Standardization
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
    "DequantizedImages",
    "VariationalDequantization",
    "dequantized_log_prob",
    "LogitPreprocessing",
    "Standardization",
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
