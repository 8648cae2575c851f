"""Contract cases of the video family: the coupling that reads spatial context maps."""

from contract import Case

from pushforward.transforms import coupling_mask
from pushforward.video import SpatialCoupling


def _pooled(c: int) -> SpatialCoupling:
    """A ``(2, 4, 4)`` checkerboard coupling; ``c`` context features read as ``(c/64, 8, 8)``
    maps, pooled 2×2 down to the layer's 4×4."""
    maps = None if c == 0 else (c // 64, 8, 8)
    return SpatialCoupling(coupling_mask((2, 4, 4), "checkerboard"), maps, hidden=8,
                           identity_init=False)


CASES = [
    Case("SpatialCoupling-pooled", _pooled, (2, 4, 4), contexts=(0, 128)),
    # Same-size maps (no pooling), a map with more than two parameters per element.
    Case("SpatialCoupling-spline",
         lambda c: SpatialCoupling(coupling_mask((2, 4, 4), "channel", flip=True),
                                   None if c == 0 else (2, 4, 4), transformer="spline", hidden=8,
                                   identity_init=False, bins=4),
         (2, 4, 4), contexts=(0, 32)),
    # A context vector alone (broadcast as constant planes) and maps followed by a vector.
    Case("SpatialCoupling-vector",
         lambda c: SpatialCoupling(coupling_mask((2, 4, 4), "channel"), None, c, hidden=8,
                                   identity_init=False),
         (2, 4, 4), contexts=(0, 3)),
    Case("SpatialCoupling-maps-and-vector",
         lambda c: SpatialCoupling(coupling_mask((2, 4, 4), "checkerboard", flip=True),
                                   None if c == 0 else (1, 8, 8), 0 if c == 0 else c - 64,
                                   hidden=8, identity_init=False),
         (2, 4, 4), contexts=(0, 66)),
]
