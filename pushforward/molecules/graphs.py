"""Molecules as graph tensors: SMILES ↔ (bond tensor, atom tensor) in a canonical atom order.

A molecule with ``n ≤ N`` heavy atoms becomes two one-hot tensors:

* ``bonds`` ``(len(BOND_TYPES), N, N)``: channel 0 is "no bond", then single, double, triple
  (the molecule is kekulised, so aromatic rings appear as alternating single and double bonds);
  symmetric, with "no bond" on the diagonal and on every pair that touches a padding slot;
* ``atoms`` ``(N, len(atom_types) + 1)``: one of ``atom_types`` per atom, then the "no atom"
  type for the ``N − n`` padding slots.

Permutations: the atom order is the order in which RDKit writes the canonical SMILES (a
depth-first walk from the canonically first atom), and the Kekulé structure is computed on that
canonical molecule, so the same molecule written with its atoms in any order gives the same
tensors. Hydrogens are implicit (RDKit recomputes them from the valences); stereochemistry is
dropped; formal charges are not represented (charged molecules are refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from rdkit import Chem

ATOM_TYPES: tuple[str, ...] = ("C", "N", "O", "F", "S", "Cl", "Br")
"""The element symbols of the atom channels, in order (the "no atom" channel follows them)."""
BOND_TYPES: tuple[str, ...] = ("none", "single", "double", "triple")
"""The bond channels, in order: no bond, then the kekulised bond orders 1, 2 and 3."""


def _rdkit():  # noqa: ANN202 - the rdkit module
    try:
        from rdkit import Chem, RDLogger
    except ImportError as error:  # pragma: no cover - the extra is absent
        raise ImportError(
            "pushforward.molecules needs RDKit: pip install 'pushforward[molecules]'"
        ) from error
    RDLogger.DisableLog("rdApp.*")
    return Chem


def canonical_mol(smiles: str) -> Chem.Mol:
    """Parse ``smiles`` into a kekulised RDKit molecule whose atoms are in canonical order.

    Args:
        smiles: a SMILES string.

    Returns:
        The molecule (``rdkit.Chem.Mol``, no explicit hydrogens, kekulised) with atom ``i`` the
        ``i``-th atom of its canonical SMILES.

    Raises:
        ValueError: ``smiles`` is not a string or RDKit cannot parse or sanitise it.
    """
    chem = _rdkit()
    if not isinstance(smiles, str) or not smiles.strip():
        raise ValueError(f"invalid SMILES {smiles!r}: expected a non-empty string")
    mol = chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"invalid SMILES {smiles!r}: RDKit cannot parse or sanitise it")
    canonical = chem.MolToSmiles(mol, isomericSmiles=False, canonical=True)
    mol = chem.MolFromSmiles(canonical)  # atoms numbered in the canonical output order
    if mol is None:  # pragma: no cover - RDKit's own canonical SMILES always parses
        raise ValueError(f"invalid SMILES {smiles!r}: its canonical form does not parse")
    chem.Kekulize(mol, clearAromaticFlags=True)
    return mol


def smiles_to_graph(
    smiles: str, max_atoms: int, atom_types: Sequence[str] = ATOM_TYPES
) -> tuple[Tensor, Tensor]:
    """One-hot graph tensors of a molecule in canonical atom order.

    Args:
        smiles: the molecule.
        max_atoms: ``N``, the number of atom slots (heavy atoms; the rest is padding).
        atom_types: the element symbols, in channel order (a "no atom" channel is appended).

    Returns:
        ``(bonds, atoms)``: float tensors ``(4, N, N)`` and ``(N, len(atom_types) + 1)``.

    Raises:
        ValueError: invalid SMILES, more than ``max_atoms`` heavy atoms, an element outside
            ``atom_types``, a formal charge, a radical, or a bond that is not single, double or
            triple after kekulisation.

    Example:
        >>> bonds, atoms = smiles_to_graph("CCO", max_atoms=4)
        >>> bonds.shape, atoms.shape
        (torch.Size([4, 4, 4]), torch.Size([4, 8]))
        >>> atoms.argmax(-1).tolist()  # C, C, O, then "no atom"
        [0, 0, 2, 7]
    """
    chem = _rdkit()
    mol = canonical_mol(smiles)
    n = mol.GetNumAtoms()
    if n > max_atoms:
        raise ValueError(
            f"SMILES {smiles!r} has {n} heavy atoms, more than max_atoms={max_atoms}"
        )
    if n == 0:
        raise ValueError(f"SMILES {smiles!r} has no heavy atoms")
    index = {symbol: i for i, symbol in enumerate(atom_types)}
    atoms = torch.zeros(max_atoms, len(atom_types) + 1)
    atoms[n:, len(atom_types)] = 1.0
    for atom in mol.GetAtoms():
        symbol = atom.GetSymbol()
        if symbol not in index:
            raise ValueError(
                f"SMILES {smiles!r}: element {symbol} is not one of the atom types {atom_types}"
            )
        if atom.GetFormalCharge() != 0 or atom.GetNumRadicalElectrons() != 0:
            raise ValueError(f"SMILES {smiles!r}: charged or radical atoms are not represented")
        atoms[atom.GetIdx(), index[symbol]] = 1.0
    order = {chem.BondType.SINGLE: 1, chem.BondType.DOUBLE: 2, chem.BondType.TRIPLE: 3}
    bonds = torch.zeros(len(BOND_TYPES), max_atoms, max_atoms)
    bonds[0] = 1.0
    for bond in mol.GetBonds():
        kind = order.get(bond.GetBondType())
        if kind is None:
            raise ValueError(f"SMILES {smiles!r}: bond type {bond.GetBondType()} not represented")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        bonds[:, i, j] = bonds[:, j, i] = 0.0
        bonds[kind, i, j] = bonds[kind, j, i] = 1.0
    return bonds, atoms


def graph_to_mol(
    bonds: Tensor, atoms: Tensor, atom_types: Sequence[str] = ATOM_TYPES
) -> Chem.Mol:
    """Build the (unsanitised) RDKit molecule of one graph, without any correction.

    Atoms whose type is "no atom" are dropped with their bonds; bond types and elements are read
    by ``argmax`` over the channels (so dequantised tensors work too); only the upper triangle
    of ``bonds`` is read. Nothing is repaired: call ``Chem.SanitizeMol`` to test validity.

    Args:
        bonds: ``(4, N, N)``.
        atoms: ``(N, len(atom_types) + 1)``.
        atom_types: the element symbols of the atom channels.

    Returns:
        An unsanitised ``rdkit.Chem.Mol`` (possibly with zero atoms).

    Raises:
        ValueError: tensors of the wrong shapes.
    """
    chem = _rdkit()
    if bonds.dim() != 3 or bonds.shape[0] != len(BOND_TYPES) or bonds.shape[1] != bonds.shape[2]:
        raise ValueError(f"graph_to_mol: bonds must be (4, N, N), got {tuple(bonds.shape)}")
    n = bonds.shape[1]
    if atoms.shape != (n, len(atom_types) + 1):
        raise ValueError(
            f"graph_to_mol: atoms must be ({n}, {len(atom_types) + 1}), got {tuple(atoms.shape)}"
        )
    kinds = atoms.argmax(-1).tolist()
    bond_kinds = bonds.argmax(0).tolist()
    order = [None, chem.BondType.SINGLE, chem.BondType.DOUBLE, chem.BondType.TRIPLE]
    mol = chem.RWMol()
    slot = {}
    for i, kind in enumerate(kinds):
        if kind < len(atom_types):
            slot[i] = mol.AddAtom(chem.Atom(atom_types[kind]))
    for i in slot:
        for j in slot:
            if j > i and bond_kinds[i][j] > 0:
                mol.AddBond(slot[i], slot[j], order[bond_kinds[i][j]])
    return mol.GetMol()


def graph_to_smiles(
    bonds: Tensor, atoms: Tensor, atom_types: Sequence[str] = ATOM_TYPES
) -> str | None:
    """Canonical SMILES of a graph if RDKit sanitises it unchanged, else None.

    Args:
        bonds: ``(4, N, N)``.
        atoms: ``(N, len(atom_types) + 1)``.
        atom_types: the element symbols of the atom channels.

    Returns:
        The canonical SMILES, or None when the graph has no atoms or violates a valence.

    Example:
        >>> graph_to_smiles(*smiles_to_graph("OCC", max_atoms=5))
        'CCO'
    """
    chem = _rdkit()
    mol = graph_to_mol(bonds, atoms, atom_types)
    if mol.GetNumAtoms() == 0:
        return None
    try:
        chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 - RDKit raises several sanitisation errors
        return None
    return chem.MolToSmiles(mol, isomericSmiles=False)


def write_smiles(bonds: Tensor, atoms: Tensor, atom_types: Sequence[str] = ATOM_TYPES) -> str:
    """SMILES of a graph as built, valid or not (invalid ones fail to parse when read back).

    A valid graph gives its canonical SMILES; one that fails sanitisation is written from the
    unsanitised molecule (so ``Chem.MolFromSmiles`` of the line fails again, on the same
    valence); a graph without atoms is written as ``"[empty]"`` (which does not parse).

    Args:
        bonds: ``(4, N, N)``.
        atoms: ``(N, len(atom_types) + 1)``.
        atom_types: the element symbols of the atom channels.

    Returns:
        One SMILES string.
    """
    chem = _rdkit()
    smiles = graph_to_smiles(bonds, atoms, atom_types)
    if smiles is not None:
        return smiles
    mol = graph_to_mol(bonds, atoms, atom_types)
    if mol.GetNumAtoms() == 0:
        return "[empty]"
    mol.UpdatePropertyCache(strict=False)
    return chem.MolToSmiles(mol, canonical=False, kekuleSmiles=True)
