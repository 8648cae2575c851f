"""Flows on manifolds (SPEC §4): the sphere and the simplex, their flows and base distributions.

Transforms act on ambient coordinates ``(batch, n)`` and return, in the ``ladj`` slot, the log
differential volume ratio ``log R_f = log|det(T_yᵀ F_x T_x)|``; :func:`log_volume_ratio` computes
it for any map by autograd and is the reference every closed form is tested against.
"""

from pushforward.manifolds.calibration import (
    Calibration,
    GeneralizedCalibration,
    compose_calibrations,
)
from pushforward.manifolds.geodesic import GeodesicPath
from pushforward.manifolds.simplex_bases import Dirichlet, UniformSimplex
from pushforward.manifolds.spaces import Simplex, Sphere
from pushforward.manifolds.sphere_bases import (
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherMixture,
    sample_vmf,
)
from pushforward.manifolds.sphere_cnf import SphereCNF, SphereField
from pushforward.manifolds.spherical import (
    NormalizedAffine,
    NormalizedLinear,
    NormalizedTranslation,
)
from pushforward.manifolds.volume import (
    log_volume_ratio,
    tangent_from_projection,
    volume_ratio_reference,
)
from pushforward.specs import serializable

# Registered here rather than in sphere_cnf.py, so checkpoints can rebuild hand-built flows.
serializable("sphere-cnf")(SphereCNF)
serializable("sphere-field")(SphereField)

__all__ = [
    "log_volume_ratio",
    "tangent_from_projection",
    "volume_ratio_reference",
    "Sphere",
    "Simplex",
    "NormalizedTranslation",
    "NormalizedLinear",
    "NormalizedAffine",
    "Calibration",
    "GeneralizedCalibration",
    "compose_calibrations",
    "UniformSphere",
    "VonMisesFisher",
    "VonMisesFisherMixture",
    "Dirichlet",
    "UniformSimplex",
    "sample_vmf",
    "SphereCNF",
    "SphereField",
    "GeodesicPath",
]
