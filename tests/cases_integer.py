"""Contract cases of the integer discrete coupling (IDF): integer-valued inputs.

The rounded shift has a straight-through gradient, so the autograd Jacobian is unit triangular
and ``ladj = 0`` is checked like any other volume-preserving layer.
"""

import torch
from contract import Case

from pushforward.transforms import IntegerCoupling, coupling_mask


def _pixels(shape):
    def draw(batch, generator):
        return torch.randint(0, 256, (batch, *shape), generator=generator).to(torch.float64)

    return draw


CASES = [
    Case("IntegerCoupling", lambda c: IntegerCoupling(coupling_mask(4, "half"), c, hidden=(8,)),
         (4,), contexts=(0, 2), draw=_pixels((4,)), perturb=0.5),
    Case("IntegerCoupling-image",
         lambda c: IntegerCoupling(coupling_mask((2, 4, 4), "channel"), c, hidden=8),
         (2, 4, 4), contexts=(0, 2), draw=_pixels((2, 4, 4)), perturb=0.5, batch=3),
]
