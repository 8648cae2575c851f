"""Contract cases of the manifold flows: inputs drawn from the manifold, ladj checked against
``log_volume_ratio`` (the generic autograd volume ratio) instead of the Euclidean ``slogdet``."""

import torch
from contract import Case

from pushforward.core import Chain
from pushforward.manifolds import (
    Calibration,
    GeneralizedCalibration,
    NormalizedAffine,
    NormalizedLinear,
    NormalizedTranslation,
    Simplex,
    Sphere,
    volume_ratio_reference,
)


def on_sphere(n):
    def draw(batch, generator):
        g = torch.randn(batch, n, generator=generator, dtype=torch.float64)
        return g / g.norm(dim=-1, keepdim=True)

    return draw


def on_simplex(n):
    def draw(batch, generator):
        e = -torch.log(torch.rand(batch, n, generator=generator, dtype=torch.float64))
        return e / e.sum(-1, keepdim=True)

    return draw


def _matrix(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n) + 0.4 * torch.randn(n, n, generator=g)


def _equal_rows(n, seed, lam=1.3):
    g = torch.Generator().manual_seed(seed)
    a = torch.eye(n) + 0.2 * torch.randn(n, n, generator=g)
    return a - (a.sum(1, keepdim=True) - lam) / n


SPHERE = {n: volume_ratio_reference(Sphere(n)) for n in (2, 3, 5)}
SIMPLEX = {n: volume_ratio_reference(Simplex(n)) for n in (2, 3, 5)}

CASES = [
    Case("NormalizedTranslation-3",
         lambda c: NormalizedTranslation(3, shift=torch.tensor([0.3, -0.5, 0.2]),
                                         context_features=c),
         (3,), contexts=(0, 3), draw=on_sphere(3), ladj_reference=SPHERE[3]),
    Case("NormalizedTranslation-2", lambda c: NormalizedTranslation(2, context_features=c),
         (2,), contexts=(0, 2), draw=on_sphere(2), ladj_reference=SPHERE[2]),
    Case("NormalizedLinear-5",
         lambda c: NormalizedLinear(5, matrix=_matrix(5, 0), context_features=c),
         (5,), contexts=(0, 3), draw=on_sphere(5), ladj_reference=SPHERE[5]),
    Case("NormalizedAffine-3",
         lambda c: NormalizedAffine(3, matrix=_matrix(3, 1), shift=torch.tensor([0.2, 0.1, -0.3]),
                                    context_features=c),
         (3,), contexts=(0, 3), draw=on_sphere(3), ladj_reference=SPHERE[3]),
    Case("NormalizedAffine-5", lambda c: NormalizedAffine(5, context_features=c),
         (5,), contexts=(0, 2), draw=on_sphere(5), ladj_reference=SPHERE[5]),
    Case("Chain-sphere",
         lambda c: Chain([NormalizedAffine(3, context_features=c), NormalizedLinear(3),
                          NormalizedTranslation(3, context_features=c)]),
         (3,), contexts=(0, 2), draw=on_sphere(3), ladj_reference=SPHERE[3]),
    Case("Calibration-3",
         lambda c: Calibration(3, scale=1.7, shift=torch.tensor([0.1, -0.2, 0.3]),
                               context_features=c),
         (3,), contexts=(0, 3), draw=on_simplex(3), ladj_reference=SIMPLEX[3]),
    Case("Calibration-2", lambda c: Calibration(2, context_features=c),
         (2,), contexts=(0, 2), draw=on_simplex(2), ladj_reference=SIMPLEX[2]),
    Case("GeneralizedCalibration-5",
         lambda c: GeneralizedCalibration(5, matrix=_equal_rows(5, 2), context_features=c),
         (5,), contexts=(0, 3), draw=on_simplex(5), ladj_reference=SIMPLEX[5]),
    Case("GeneralizedCalibration-3", lambda c: GeneralizedCalibration(3, context_features=c),
         (3,), contexts=(0, 2), draw=on_simplex(3), ladj_reference=SIMPLEX[3]),
]
