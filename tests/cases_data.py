"""Contract cases of the fixed pre-processing layers in ``pushforward.data``."""

import torch
from contract import Case

from pushforward.transforms import LogitPreprocessing, Reshape, Standardization


def _unit(shape):
    def draw(batch, generator):
        return 0.01 + 0.98 * torch.rand(batch, *shape, generator=generator, dtype=torch.float64)

    return draw


CASES = [
    Case("Standardization", lambda c: Standardization([1.0, -2.0, 0.5], [0.5, 2.0, 3.0]), (3,)),
    Case("LogitPreprocessing", lambda c: LogitPreprocessing(4, alpha=0.05), (4,),
         draw=_unit((4,))),
    Case("LogitPreprocessing-image", lambda c: LogitPreprocessing((1, 2, 2), alpha=0.0),
         (1, 2, 2), draw=_unit((1, 2, 2))),
    Case("Reshape", lambda c: Reshape((1, 2, 3), (6,)), (1, 2, 3)),
]
