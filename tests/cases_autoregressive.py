"""Contract cases of the autoregressive transforms (MAF, IAF) and the spline map."""

import torch
from contract import Case

from pushforward.transforms import InverseAutoregressive, MaskedAutoregressive
from pushforward.transforms.coupling import Coupling, coupling_mask


def _wide(batch, generator):
    """Gaussian inputs with scale 3, so some fall in the spline's linear tails (bound 4)."""
    return 3.0 * torch.randn(batch, 4, generator=generator, dtype=torch.float64)


def _wide_image(batch, generator):
    return 3.0 * torch.randn(batch, 2, 2, 2, generator=generator, dtype=torch.float64)


CASES = [
    Case("MaskedAutoregressive-affine",
         lambda c: MaskedAutoregressive(4, c, hidden=(16, 16)), (4,), contexts=(0, 3),
         perturb=0.3),
    Case("MaskedAutoregressive-spline",
         lambda c: MaskedAutoregressive(4, c, transformer="spline", hidden=(16, 16), bins=5,
                                        bound=4.0),
         (4,), contexts=(0, 3), draw=_wide, perturb=0.5),
    Case("MaskedAutoregressive-residual-random",
         lambda c: MaskedAutoregressive(5, c, hidden=(12, 12, 12), residual=True,
                                        ordering="random", seed=4, activation="tanh"),
         (5,), contexts=(0, 2), perturb=0.3),
    Case("MaskedAutoregressive-1d",
         lambda c: MaskedAutoregressive(1, c, transformer="spline", hidden=(8,), bins=3),
         (1,), contexts=(0, 2), perturb=0.5),
    Case("InverseAutoregressive-affine",
         lambda c: InverseAutoregressive(4, c, hidden=(16, 16), ordering="reversed"), (4,),
         contexts=(0, 3), perturb=0.3),
    Case("InverseAutoregressive-spline",
         lambda c: InverseAutoregressive(4, c, transformer="spline", hidden=(16,), bins=4,
                                         bound=4.0),
         (4,), contexts=(0, 3), draw=_wide, perturb=0.5),
    Case("Coupling-spline",
         lambda c: Coupling(coupling_mask(4, "alternating"), "spline", c, hidden=(16,), bins=4,
                            bound=4.0),
         (4,), contexts=(0, 3), draw=_wide, perturb=0.5),
    Case("Coupling-spline-checkerboard",
         lambda c: Coupling(coupling_mask((2, 2, 2), "checkerboard"), "spline", c, hidden=8,
                            bins=3, bound=4.0),
         (2, 2, 2), contexts=(0, 2), draw=_wide_image, perturb=0.5),
]
