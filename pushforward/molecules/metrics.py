"""Sample-quality metrics of generated molecules: validity, uniqueness, novelty, properties."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .graphs import _rdkit


def _parse(smiles: str):  # noqa: ANN202 - an rdkit Mol or None
    chem = _rdkit()
    return chem.MolFromSmiles(smiles) if smiles else None


def sample_metrics(samples: Sequence[str], train: Iterable[str]) -> dict[str, float]:
    """Validity without correction, uniqueness and novelty of generated SMILES.

    Every sample counts (``len(samples)`` is the denominator of validity). A sample is
    *valid* when RDKit parses and sanitises it (``Chem.MolFromSmiles`` is not None, nothing
    repaired) and it is one connected molecule (no ``.`` in its SMILES) — MoFlow's criterion;
    ``validity_sanitize_only`` drops the connectivity requirement. *Uniqueness*: distinct
    canonical SMILES among the valid samples / valid samples. *Novelty* (MOSES): distinct valid
    samples absent from ``train`` / distinct valid samples.

    Args:
        samples: the generated SMILES (invalid ones included, e.g. from ``write_smiles``).
        train: the training molecules (any SMILES; canonicalised here).

    Returns:
        ``validity``, ``validity_sanitize_only``, ``uniqueness``, ``novelty``, ``valid_count``.

    Example:
        >>> m = sample_metrics(["CCO", "OCC", "C(C)(C)(C)(C)C", "C.C"], train=["CCO"])
        >>> m["validity"], m["validity_sanitize_only"], m["uniqueness"], m["novelty"]
        (0.5, 0.75, 0.5, 0.0)
    """
    chem = _rdkit()
    if len(samples) == 0:
        raise ValueError("sample_metrics: no samples")
    valid: list[str] = []
    sanitised = 0
    for smiles in samples:
        mol = _parse(smiles)
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        sanitised += 1
        canonical = chem.MolToSmiles(mol, isomericSmiles=False)
        if "." not in canonical:
            valid.append(canonical)
    known = set()
    for smiles in train:
        mol = _parse(smiles)
        if mol is not None:
            known.add(chem.MolToSmiles(mol, isomericSmiles=False))
    distinct = set(valid)
    return {
        "validity": len(valid) / len(samples),
        "validity_sanitize_only": sanitised / len(samples),
        "uniqueness": len(distinct) / len(valid) if valid else 0.0,
        "novelty": len(distinct - known) / len(distinct) if distinct else 0.0,
        "valid_count": float(len(valid)),
    }


def properties(smiles: Iterable[str]) -> dict[str, list[float]]:
    """QED, Crippen logP and molecular weight of every parseable SMILES.

    Args:
        smiles: molecules (unparseable ones are skipped).

    Returns:
        ``{"qed": [...], "logp": [...], "mw": [...]}``.
    """
    chem = _rdkit()
    from rdkit.Chem import QED, Crippen, Descriptors

    out: dict[str, list[float]] = {"qed": [], "logp": [], "mw": []}
    for s in smiles:
        mol = chem.MolFromSmiles(s) if s else None
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        out["qed"].append(float(QED.qed(mol)))
        out["logp"].append(float(Crippen.MolLogP(mol)))
        out["mw"].append(float(Descriptors.MolWt(mol)))
    return out


def property_distances(samples: Iterable[str], reference: Iterable[str]) -> dict[str, float]:
    """1-Wasserstein distances of the QED, logP and weight distributions (``scipy``).

    Args:
        samples: generated molecules (only the parseable ones count).
        reference: e.g. the test set.

    Returns:
        ``{"qed": W1, "logp": W1, "mw": W1}`` (NaN where no sample parses).

    Example:
        >>> property_distances(["CCO"], ["CCO"])["mw"]
        0.0
    """
    from scipy.stats import wasserstein_distance

    a, b = properties(samples), properties(reference)
    return {
        key: float(wasserstein_distance(a[key], b[key])) if a[key] and b[key] else float("nan")
        for key in a
    }


def draw_grid(smiles: Sequence[str], path: str, per_row: int = 6, size: int = 220) -> None:
    """Save an RDKit drawing of the parseable molecules of ``smiles`` as a PNG grid.

    Args:
        smiles: the molecules (unparseable ones skipped).
        path: the PNG file.
        per_row: molecules per row.
        size: pixels per molecule.
    """
    chem = _rdkit()
    from rdkit.Chem import Draw

    mols = [m for m in (chem.MolFromSmiles(s) for s in smiles if s) if m is not None]
    image = Draw.MolsToGridImage(
        mols, molsPerRow=per_row, subImgSize=(size, size),
        legends=[chem.MolToSmiles(m) for m in mols],
    )
    image.save(path)
