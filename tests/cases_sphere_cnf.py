"""Contract cases of the continuous flow on the sphere (SphereCNF): inputs on the sphere, ladj
checked against ``log_volume_ratio`` of the solver's own time-1 map (tight tolerances, float64).
The Fourier-feature and time-embedding options are checked in ``test_sphere_cnf.py``."""

from cases_manifolds import SPHERE, on_sphere
from contract import Case

from pushforward.manifolds import SphereCNF

TIGHT = {"rtol": 1e-9, "atol": 1e-9}

CASES = [
    Case("SphereCNF-3", lambda c: SphereCNF(3, hidden=(8, 8), context_features=c, **TIGHT),
         (3,), contexts=(0, 2), draw=on_sphere(3), ladj_reference=SPHERE[3], batch=4),
]
