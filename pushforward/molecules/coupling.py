"""MoFlow's graph-conditional affine coupling over atom types (Zang & Wang, 2020)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Transform


def node_mask(nodes: int, parity: int, period: int = 2) -> Tensor:
    """Boolean node mask ``True`` on the rows that pass unchanged: ``i % period != parity``.

    Args:
        nodes: ``N``.
        parity: which residue class is transformed.
        period: the number of classes (2: alternate even and odd atoms).

    Returns:
        A ``(N,)`` boolean tensor.
    """
    return torch.arange(nodes) % period != parity


class RelationalGraphConv(nn.Module):
    """One relational graph convolution ``h' = act(h W₀ + Σ_r A_r h W_r)`` (Schlichtkrull 2018).

    Args:
        in_features: width of ``h``.
        out_features: width of ``h'``.
        relations: the number of adjacency channels ``r`` (bond types, "no bond" excluded).
    """

    def __init__(self, in_features: int, out_features: int, relations: int) -> None:
        super().__init__()
        self.self_loop = nn.Linear(in_features, out_features)
        self.relation = nn.Linear(in_features, out_features * relations, bias=False)
        self.relations = relations

    def forward(self, h: Tensor, adjacency: Tensor) -> Tensor:
        """``h`` ``(B, N, in)``, ``adjacency`` ``(B, r, N, N)`` → ``(B, N, out)``."""
        b, n, _ = h.shape
        messages = self.relation(h).view(b, n, self.relations, -1).transpose(1, 2)
        return self.self_loop(h) + (adjacency @ messages).sum(1)


class GraphAffineCoupling(Transform):
    """Affine coupling over atom rows with a graph-convolution conditioner, given the bonds.

    The event is the dequantised atom tensor ``(N, T)``; the context is the one-hot bond
    tensor ``(R, N, N)`` flattened to ``R·N·N`` features (channel 0, "no bond", is ignored).
    Entries with ``mask`` True (set ``A``) pass unchanged; the others (``B``) are transformed:

    ``x_B = z_B ⊙ exp(s) + t``, ``(s, t) = GCN(z ⊙ mask, bonds)`` read at the entries of ``B``,
    ``s = bound · tanh(ŝ / bound)``; ``ladj = Σ_{i∈B, k} s_ik``; inverse
    ``z_B = (x_B − t) ⊙ exp(−s)`` with the same ``(s, t)`` (they read only ``x_A = z_A``).

    The conditioner sees, per atom: the masked row, whether it is masked, and its number of
    bonds of each type, through ``layers`` relational graph convolutions (one weight per bond
    type, normalised by the atom count) and a final linear map initialised at zero (identity).

    Args:
        nodes: ``N``.
        types: ``T``, atom types including "no atom".
        relations: ``R``, bond channels including "no bond".
        mask: ``(N,)`` boolean, True on the rows that pass (see ``node_mask``), or ``(N, T)``
            to mask single entries (e.g. half of the type channels of every atom).
        hidden: width of the graph convolutions.
        layers: number of graph convolutions.
        bound: the soft clamp of the log-scale.

    References:
        MoFlow: An Invertible Flow Model for Generating Molecular Graphs, Zang & Wang, 2020,
        arXiv:2006.10137. GraphNVP: An Invertible Flow Model for Generating Molecular Graphs,
        Madhawa et al., 2019, arXiv:1905.11600.

    Example:
        >>> import torch
        >>> t = GraphAffineCoupling(4, 3, 4, node_mask(4, 0))
        >>> x, ladj = t(torch.randn(2, 4, 3), context=torch.rand(2, 4 * 4 * 4))
        >>> x.shape, ladj.shape
        (torch.Size([2, 4, 3]), torch.Size([2]))
    """

    def __init__(
        self,
        nodes: int,
        types: int,
        relations: int,
        mask: Tensor,
        hidden: int = 64,
        layers: int = 2,
        bound: float = 3.0,
    ) -> None:
        super().__init__((nodes, types), context_features=relations * nodes * nodes)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape == (nodes,):
            mask = mask[:, None].expand(nodes, types).clone()
        if mask.shape != (nodes, types):
            raise ValueError(
                f"GraphAffineCoupling: mask must be ({nodes},) or ({nodes}, {types}), "
                f"got {tuple(mask.shape)}"
            )
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError(
                "GraphAffineCoupling: the mask must pass some entries and transform some"
            )
        if layers < 1 or hidden < 1:
            raise ValueError(
                f"GraphAffineCoupling: need layers ≥ 1 and hidden ≥ 1, got {layers}, {hidden}"
            )
        self.register_buffer("mask", mask.contiguous().clone())
        self.nodes, self.types, self.relations, self.bound = nodes, types, relations, float(bound)
        widths = [2 * types + (relations - 1), *([hidden] * layers)]
        self.convs = nn.ModuleList(
            RelationalGraphConv(a, b, relations - 1) for a, b in zip(widths[:-1], widths[1:])
        )
        self.out = nn.Linear(hidden, 2 * types)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _params(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ValueError("GraphAffineCoupling needs the bond tensor as context")
        b = x_a.shape[0]
        adjacency = context.reshape(b, self.relations, self.nodes, self.nodes)[:, 1:]
        degrees = adjacency.sum(-1).transpose(1, 2)  # (B, N, R-1) bonds of each type per atom
        keep = self.mask.to(x_a.dtype)
        h = torch.cat([x_a * keep, keep.expand(b, -1, -1), degrees], -1)
        adjacency = adjacency / self.nodes
        for conv in self.convs:
            h = torch.tanh(conv(h, adjacency))
        s, t = self.out(h).chunk(2, -1)
        s = self.bound * torch.tanh(s / self.bound)
        change = (~self.mask).to(x_a.dtype)
        return s * change, t * change

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        s, t = self._params(z, context)
        return z * s.exp() + t, s.flatten(1).sum(-1)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        s, t = self._params(x, context)
        return (x - t) * (-s).exp(), -s.flatten(1).sum(-1)
