"""Contract cases of the basic transforms (elementwise, normalization, linear)."""

import torch
from contract import Case

from pushforward.transforms import (
    ActNorm,
    Affine,
    Chain,
    InvertibleConv1x1,
    Logit,
    LULinear,
    Permutation,
    RandomPermutation,
    Reverse,
    Sigmoid,
)


def _unit_box(batch, generator):
    return 0.02 + 0.96 * torch.rand(batch, 4, generator=generator, dtype=torch.float64)


def _box(batch, generator):
    low = torch.tensor([-2.0, 0.0, 1.0], dtype=torch.float64)
    return low + (3 - low) * torch.rand(batch, 3, generator=generator, dtype=torch.float64)


CASES = [
    Case("Affine", lambda c: Affine(4, scale=torch.tensor([1.0, -2.0, 0.5, 3.0])), (4,)),
    Case("Affine-image", lambda c: Affine((2, 3, 3)), (2, 3, 3)),
    Case("Sigmoid", lambda c: Sigmoid(), (4,), draw=_unit_box),
    Case("Sigmoid-box", lambda c: Sigmoid(torch.tensor([-2.0, 0, 1]), 3.0, shape=3), (3,),
         draw=_box),
    Case("Logit", lambda c: Logit(), (4,)),
    Case("ActNorm", lambda c: ActNorm(4), (4,)),
    Case("ActNorm-image", lambda c: ActNorm((3, 2, 2)), (3, 2, 2)),
    Case("Permutation", lambda c: Permutation([2, 0, 3, 1]), (4,)),
    Case("Permutation-image", lambda c: Permutation([1, 2, 0], shape=(3, 2, 2)), (3, 2, 2)),
    Case("Reverse", lambda c: Reverse(5), (5,)),
    Case("RandomPermutation", lambda c: RandomPermutation(6, seed=3), (6,)),
    Case("LULinear", lambda c: LULinear(5), (5,)),
    Case("InvertibleConv1x1", lambda c: InvertibleConv1x1((3, 2, 2)), (3, 2, 2)),
    Case("Chain", lambda c: Chain([Affine(3), LULinear(3), Reverse(3), ActNorm(3)]), (3,)),
]
