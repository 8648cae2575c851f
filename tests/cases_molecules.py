"""Contract cases of the molecular graph flow: MoFlow's graph coupling over atom types.

The context is the bond tensor ``(R, N, N)`` flattened (here 4 bond channels × 3 × 3 atoms), so
the only context width is 36; the kit's random contexts act as weighted adjacency matrices.
"""

import torch
from contract import Case

from pushforward.molecules import GraphAffineCoupling, node_mask


def _coupling(context: int, mask: str = "nodes") -> GraphAffineCoupling:
    masks = {"nodes": node_mask(3, 0), "channels": (torch.arange(4) < 2).expand(3, 4)}
    t = GraphAffineCoupling(3, 4, 4, masks[mask], hidden=6)
    assert context == t.context_features, "the context is the flattened bond tensor"
    return t


CASES = [
    Case("GraphAffineCoupling-nodes", _coupling, (3, 4), contexts=(36,), perturb=0.3, batch=3),
    Case("GraphAffineCoupling-channels", lambda c: _coupling(c, "channels"), (3, 4),
         contexts=(36,), perturb=0.3, batch=3),
]
