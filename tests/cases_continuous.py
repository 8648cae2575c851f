"""Contract cases of the continuous flows (CNF with the default time-conditioned field).

Tight solver tolerances in float64, so the ODE map's round trips and its integrated trace match
the autograd Jacobian of the solver's own steps to ~1e-8.
"""

from contract import Case

from pushforward.continuous import CNF, TimeMLP

TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _cnf(features, context, **options):
    field = TimeMLP(features, hidden=(16, 16), context_features=context)
    return CNF(field, features, **{**TIGHT, **options})


CASES = [
    Case("CNF-exact", lambda c: _cnf(3, c), (3,), contexts=(0, 2)),
    Case("CNF-concat-t1", lambda c: CNF(TimeMLP(2, (8,), c, "softplus", "concat"), 2, t1=0.5,
                                        **TIGHT), (2,), contexts=(0, 3)),
    # Hutchinson: ladj is an estimate (exact_ladj False), round trips and gradients still hold.
    Case("CNF-hutchinson", lambda c: _cnf(3, c, trace="hutchinson", noise="rademacher"), (3,),
         contexts=(0, 2)),
    # RNODE states ride along without changing the map (adjoint: see test_continuous.py).
    Case("CNF-rnode", lambda c: _cnf(2, c, kinetic=0.1, jacobian=0.1), (2,), contexts=(1,)),
    # Augmented: a square transform on features + augment dimensions.
    Case("CNF-augment", lambda c: CNF(TimeMLP(3, (8,), c), 2, augment=1, **TIGHT), (3,),
         contexts=(2,)),
]
