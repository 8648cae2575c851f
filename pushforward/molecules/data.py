"""The MOSES benchmark (Polykovskiy et al. 2020), read from the installed ``molsets`` wheel.

The data are not copied into this repository: ``moses_dir()`` locates the CSV files that the
PyPI wheel ``molsets==0.3.1`` installs (``moses/dataset/data/{train,test}.csv.gz``) without
importing the ``moses`` package (whose own dependencies are old and optional here). Install the
wheel alone with ``pip install --no-deps molsets==0.3.1``, or point the environment variable
``PUSHFORWARD_MOSES_DIR`` (or the ``directory=`` argument) at a folder holding those files.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from .graphs import ATOM_TYPES, smiles_to_graph

SPLITS = ("train", "test", "test_scaffolds")
# Heavy atoms of a SMILES without parsing it: bracket atoms, two-letter halogens, organic subset.
_HEAVY = re.compile(r"\[[^\]]*\]|Br|Cl|[BCNOSPFI]|[bcnosp]")


def heavy_atom_count(smiles: str) -> int:
    """Number of heavy atoms of a SMILES string, counted from its text (no RDKit).

    Exact for SMILES whose hydrogens are implicit or inside brackets (as in MOSES).

    Args:
        smiles: a SMILES string.

    Returns:
        The number of atoms other than hydrogen.

    Example:
        >>> heavy_atom_count("Clc1ccc[nH]1")
        6
    """
    return len(_HEAVY.findall(smiles))


def moses_dir(directory: str | os.PathLike | None = None) -> Path:
    """The folder that holds MOSES's ``train.csv.gz`` and ``test.csv.gz``.

    Args:
        directory: an explicit folder; else ``$PUSHFORWARD_MOSES_DIR``; else the data folder of
            the installed ``molsets`` wheel (found with ``importlib`` without importing it).

    Returns:
        The folder.

    Raises:
        FileNotFoundError: no folder holding ``train.csv.gz`` was found (the message says how
            to install the data).
    """
    candidates: list[Path] = []
    if directory is not None:
        candidates.append(Path(directory))
    elif os.environ.get("PUSHFORWARD_MOSES_DIR"):
        candidates.append(Path(os.environ["PUSHFORWARD_MOSES_DIR"]))
    else:
        spec = importlib.util.find_spec("moses")
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(Path(location) / "dataset" / "data")
    for folder in candidates:
        if (folder / "train.csv.gz").is_file():
            return folder
    raise FileNotFoundError(
        "MOSES data not found (looked in "
        f"{[str(c) for c in candidates] or 'no candidate folder'}): install the wheel with "
        "`pip install --no-deps molsets==0.3.1` or set PUSHFORWARD_MOSES_DIR"
    )


def moses_smiles(
    split: str = "train",
    max_atoms: int | None = None,
    limit: int | None = None,
    directory: str | os.PathLike | None = None,
) -> list[str]:
    """SMILES of one MOSES split, in file order, optionally only those with ≤ ``max_atoms``.

    Args:
        split: ``"train"``, ``"test"`` or ``"test_scaffolds"``.
        max_atoms: keep molecules with at most this many heavy atoms (None: all).
        limit: stop after this many molecules (None: all).
        directory: see ``moses_dir``.

    Returns:
        The SMILES strings as written in the file.

    Raises:
        ValueError: unknown split.
        FileNotFoundError: the data are not installed.
    """
    if split not in SPLITS:
        raise ValueError(f"moses_smiles: unknown split {split!r}; choose one of {SPLITS}")
    path = moses_dir(directory) / f"{split}.csv.gz"
    out: list[str] = []
    with gzip.open(path, "rt") as handle:
        header = handle.readline().strip().split(",")
        column = header.index("SMILES") if "SMILES" in header else 0
        for line in handle:
            smiles = line.rstrip("\n").split(",")[column]
            if max_atoms is None or heavy_atom_count(smiles) <= max_atoms:
                out.append(smiles)
                if limit is not None and len(out) >= limit:
                    break
    return out


def graph_dataset(
    smiles: list[str], max_atoms: int, atom_types: tuple[str, ...] = ATOM_TYPES
) -> tuple[Tensor, Tensor, list[str]]:
    """Stack the graph tensors of every representable molecule of ``smiles``.

    Molecules that ``smiles_to_graph`` refuses (too large, other elements, charges) are skipped.

    Args:
        smiles: the molecules.
        max_atoms: ``N``.
        atom_types: the element symbols.

    Returns:
        ``(bonds, atoms, kept)``: ``(M, 4, N, N)``, ``(M, N, len(atom_types) + 1)`` and the
        canonical SMILES of the ``M`` molecules kept.
    """
    from .graphs import graph_to_smiles

    bonds, atoms, kept = [], [], []
    for s in smiles:
        try:
            b, a = smiles_to_graph(s, max_atoms, atom_types)
        except ValueError:
            continue
        bonds.append(b)
        atoms.append(a)
        kept.append(graph_to_smiles(b, a, atom_types))
    if not bonds:
        n = len(atom_types) + 1
        return torch.zeros(0, 4, max_atoms, max_atoms), torch.zeros(0, max_atoms, n), []
    return torch.stack(bonds), torch.stack(atoms), kept
