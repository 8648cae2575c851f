"""``CNF.solver`` and ``SphereCNF.solver`` share one helper, ``solvers.solver_settings``."""

import pytest

from pushforward.continuous import CNF, TimeMLP
from pushforward.manifolds import SphereCNF


def _settings(flow):
    return flow.method, flow.steps, flow.rtol, flow.atol, dict(flow.options)


@pytest.mark.parametrize("make", [
    lambda: CNF(TimeMLP(2, (4,)), 2, options={"step_size": 0.5}),
    lambda: SphereCNF(3, hidden=(4,), options={"step_size": 0.5}),
], ids=["CNF", "SphereCNF"])
def test_the_override_is_checked_first_applied_and_restored(make):
    flow = make()
    before = _settings(flow)
    with flow.solver(method="rk4", steps=8, rtol=1e-3) as inside:
        assert inside is flow
        assert (flow.method, flow.steps, flow.rtol) == ("rk4", 8, 1e-3)
        assert "step_size" not in flow.options  # steps replace a step size
        with flow.solver(method="dopri5"):
            assert flow.steps is None  # an adaptive method drops the step count
    assert _settings(flow) == before
    for bad, match in [({"method": "magic"}, "unknown ODE solver"),
                       ({"method": "euler", "steps": 0}, "steps"),
                       ({"rtol": -1.0}, "rtol"), ({"method": "rk4", "atol": 0.0}, "atol")]:
        with pytest.raises(ValueError, match=match), flow.solver(**bad):
            pass
        assert _settings(flow) == before  # nothing changed by a refused override
    with pytest.raises(RuntimeError), flow.solver(method="rk4", steps=2):
        raise RuntimeError("inside the block")
    assert _settings(flow) == before


@pytest.mark.parametrize("make", [
    lambda: CNF(TimeMLP(2, (4,)), 2),
    lambda: SphereCNF(3, hidden=(4,)),
], ids=["CNF", "SphereCNF"])
def test_fixed_steps_are_exactly_that_many_steps(make):
    """One grid for both: ``steps=N`` of rk4 is 4·N evaluations, for any N (in float64,
    ``step_size = 1/49`` made torchdiffeq take 50 steps)."""
    import torch

    flow = make().double()
    z = torch.nn.functional.normalize(torch.randn(3, flow.event_shape[0]).double(), dim=-1)
    for steps in (7, 49):
        with torch.no_grad(), flow.solver(method="rk4", steps=steps):
            flow(z)
        assert flow.nfe == 4 * steps
