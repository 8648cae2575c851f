"""Contract cases of the breadth families: Sylvester, residual, NAF, BatchNorm."""

import torch
from contract import Case

from pushforward.transforms.naf import NeuralAutoregressive
from pushforward.transforms.normalization import BatchNorm
from pushforward.transforms.residual import ResidualBlock
from pushforward.transforms.sylvester import Sylvester


def _batchnorm(shape, mean, var):
    def make(c):
        layer = BatchNorm(shape)
        layer.running_mean.copy_(torch.tensor(mean))
        layer.running_var.copy_(torch.tensor(var))
        return layer

    return make


CASES = [
    Case("Sylvester-orthogonal", lambda c: Sylvester(4, context_features=c), (4,), (0, 3)),
    Case("Sylvester-orthogonal-M2",
         lambda c: Sylvester(5, columns=2, context_features=c), (5,), (0, 2)),
    Case("Sylvester-householder",
         lambda c: Sylvester(4, columns=3, variant="householder", reflections=2,
                             context_features=c), (4,), (0, 3), perturb=0.5),
    Case("Sylvester-triangular",
         lambda c: Sylvester(3, variant="triangular", flip=True, context_features=c),
         (3,), (0, 2), perturb=0.5),
    Case("ResidualBlock-exact",
         lambda c: ResidualBlock(3, hidden=(16, 16), context_features=c, logdet="exact"),
         (3,), (0, 2), perturb=0.3),
    Case("ResidualBlock-roulette",
         lambda c: ResidualBlock(3, hidden=(16,), context_features=c, logdet="roulette"),
         (3,), (0, 2), perturb=0.3),
    Case("ResidualBlock-series-hook",
         lambda c: ResidualBlock(6, hidden=(16,), context_features=c, logdet="series",
                                 exact_below=2), (6,), (0, 2), perturb=0.3),
    Case("NeuralAutoregressive",
         lambda c: NeuralAutoregressive(3, c, components=4, hidden=(16, 16)), (3,), (0, 2),
         perturb=0.3),
    Case("BatchNorm", _batchnorm(4, [1.0, -2.0, 0.5, 0.0], [4.0, 0.3, 2.0, 1.0]), (4,)),
    Case("BatchNorm-image", _batchnorm((3, 2, 2), [0.5, -1.0, 2.0], [0.5, 2.0, 3.0]),
         (3, 2, 2)),
]
