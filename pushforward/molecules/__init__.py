"""Molecular graph generation with a MoFlow-style graph flow (optional extra ``molecules``).

Needs RDKit (``pip install 'pushforward[molecules]'``); the MOSES data come from the
``molsets`` wheel (``pip install --no-deps molsets==0.3.1``, see ``moses_dir``).
"""

from .coupling import GraphAffineCoupling, RelationalGraphConv, node_mask
from .data import graph_dataset, heavy_atom_count, moses_dir, moses_smiles
from .flow import GraphFlow
from .graphs import (
    ATOM_TYPES,
    BOND_TYPES,
    canonical_mol,
    graph_to_mol,
    graph_to_smiles,
    smiles_to_graph,
    write_smiles,
)
from .metrics import draw_grid, properties, property_distances, sample_metrics

__all__ = [
    "ATOM_TYPES", "BOND_TYPES", "GraphAffineCoupling", "GraphFlow", "RelationalGraphConv",
    "canonical_mol", "draw_grid", "graph_dataset", "graph_to_mol", "graph_to_smiles",
    "heavy_atom_count", "moses_dir", "moses_smiles", "node_mask", "properties",
    "property_distances", "sample_metrics", "smiles_to_graph", "write_smiles",
]
