"""Contract cases of the discrete families: planar, radial, couplings, squeeze, multi-scale."""

from contract import Case

from pushforward.transforms import (
    AdditiveCoupling,
    AffineCoupling,
    Chain,
    Coupling,
    Flatten,
    MultiScale,
    Planar,
    Radial,
    Squeeze,
    coupling_mask,
)


def _multiscale(shape, c):
    """Two levels: squeeze + a channel coupling, factor out, squeeze + a coupling."""
    first = Squeeze(shape)
    squeezed = first.latent_shape
    level0 = Chain([AffineCoupling(coupling_mask(squeezed, "channel"), c, hidden=8), first])
    kept = (squeezed[0] - squeezed[0] // 2, *squeezed[1:])
    second = Squeeze(kept)
    level1 = Chain([
        AffineCoupling(coupling_mask(second.latent_shape, "channel", flip=True), c, hidden=8),
        second,
    ])
    return MultiScale([level0, level1])


VECTOR = (0, 3)

CASES = [
    Case("Planar", lambda c: Planar(4, c, hidden=(8,)), (4,), contexts=VECTOR),
    Case("Planar-1d", lambda c: Planar(1, c, hidden=(8,)), (1,), contexts=VECTOR),
    # Strongly perturbed parameters: the numerical inverse must still be exact to round-off.
    Case("Planar-perturbed", lambda c: Planar(3, c, hidden=(8,)), (3,), contexts=VECTOR,
         perturb=3.0, atol=1e-8, batch=8),
    Case("Radial", lambda c: Radial(4, c, hidden=(8,)), (4,), contexts=VECTOR),
    Case("Radial-perturbed", lambda c: Radial(3, c, hidden=(8,)), (3,), contexts=VECTOR,
         perturb=2.0, atol=1e-8),
    Case("AffineCoupling", lambda c: AffineCoupling(coupling_mask(5, "half"), c, hidden=(8, 8)),
         (5,), contexts=VECTOR),
    Case("AffineCoupling-alternating-flip",
         lambda c: AffineCoupling(coupling_mask(4, "alternating", flip=True), c, hidden=(8,)),
         (4,), contexts=VECTOR),
    Case("AdditiveCoupling",
         lambda c: AdditiveCoupling(coupling_mask(4, "alternating"), c, hidden=(8,)),
         (4,), contexts=VECTOR),
    Case("Coupling-affine-bound",
         lambda c: Coupling(coupling_mask(3, "half", flip=True), "affine", c, hidden=(8,),
                            bound=1.5),
         (3,), contexts=VECTOR, perturb=1.0),
    Case("AffineCoupling-checkerboard",
         lambda c: AffineCoupling(coupling_mask((2, 4, 4), "checkerboard"), c, hidden=8),
         (2, 4, 4), contexts=VECTOR, batch=3),
    Case("AffineCoupling-channel",
         lambda c: AffineCoupling(coupling_mask((4, 2, 2), "channel", flip=True), c, hidden=8,
                                  blocks=0),
         (4, 2, 2), contexts=VECTOR),
    Case("AdditiveCoupling-checkerboard",
         lambda c: AdditiveCoupling(coupling_mask((1, 4, 4), "checkerboard", flip=True), c,
                                    hidden=8),
         (1, 4, 4), contexts=VECTOR, batch=3),
    Case("Squeeze", lambda c: Squeeze((2, 4, 4)), (2, 4, 4)),
    Case("Squeeze-1x4x4", lambda c: Squeeze((1, 4, 4)), (1, 4, 4)),
    Case("Flatten", lambda c: Flatten((2, 2, 3)), (2, 2, 3)),
    Case("MultiScale-1x4x4", lambda c: _multiscale((1, 4, 4), c), (1, 4, 4),
         contexts=VECTOR, batch=3),
    Case("MultiScale-2x4x4", lambda c: _multiscale((2, 4, 4), c), (2, 4, 4),
         contexts=VECTOR, batch=3),
]
