"""Flow matching in R^d: paths, OT pairing, the loss's minimiser, fit(objective=...), solvers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import pushforward as pf
from pushforward.continuous import CNF, CondOTPath, TimeMLP, VPPath
from pushforward.continuous.paths import stratified_uniform
from pushforward.diagnostics import check_transform
from pushforward.training.objectives import FlowMatching, MaximumLikelihood, ot_pairing

PATHS = [CondOTPath(0.0), CondOTPath(0.05), VPPath(), VPPath("cosine")]


def _small_flow(features: int = 2, context: int = 0, **options: object) -> pf.Flow:
    return pf.flows.build("cnf", features=features, context=context, hidden=(16, 16), **options)


# -- paths ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_path_velocity_is_time_derivative(path):
    torch.manual_seed(0)
    z, x = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 0.98 + 0.01
    x_t, u_t = path.sample(z, x, t)
    _, dx_dt = torch.func.jvp(lambda s: path.sample(z, x, s)[0], (t,), (torch.ones_like(t),))
    assert x_t.shape == u_t.shape == x.shape
    torch.testing.assert_close(u_t, dx_dt, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", [CondOTPath(0.0), VPPath("cosine")], ids=repr)
def test_path_endpoints(path):
    z, x = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(path.sample(z, x, torch.zeros(5))[0], z)
    torch.testing.assert_close(path.sample(z, x, torch.ones(5))[0], x)


def test_path_cost_and_bad_arguments():
    z, x = torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(CondOTPath().cost(z, x), ((z[:, None] - x[None]) ** 2).sum(-1))
    with pytest.raises(ValueError, match="sigma_min"):
        CondOTPath(1.0)
    with pytest.raises(ValueError, match="schedule"):
        VPPath("linear")
    with pytest.raises(ValueError, match="t must be"):
        CondOTPath().sample(z, x, torch.rand(3))
    with pytest.raises(ValueError, match="share a shape"):
        CondOTPath().sample(z, x[:3], torch.rand(4))
    with pytest.raises(ValueError, match="unknown path"):
        _small_flow(path="straight")


# -- OT pairing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_ot_pairing_is_a_minimal_permutation(seed):
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(6, 6, generator=generator, dtype=torch.float64)
    sigma = ot_pairing(cost)
    assert sorted(sigma.tolist()) == list(range(6))
    best = min(sum(float(cost[p[i], i]) for i in range(6))
               for p in itertools.permutations(range(6)))
    assert sum(float(cost[sigma[i], i]) for i in range(6)) == pytest.approx(best, abs=1e-12)


def test_ot_coupling_shortens_pairs():
    torch.manual_seed(0)
    z, x = torch.randn(128, 2), torch.randn(128, 2) + 3
    paired = z[ot_pairing(CondOTPath().cost(z, x))]
    assert sorted(ot_pairing(CondOTPath().cost(z, x)).tolist()) == list(range(128))
    assert (paired - x).pow(2).sum() < (z - x).pow(2).sum()


# -- the loss's minimiser: Gaussian -> Gaussian --------------------------------------------------
class _GaussianMarginalField(nn.Module):
    """The marginal field of the CondOT path from N(0, I) to N(mu, s^2 I), plus ``a + B y``.

    With ``a_t = 1 − (1 − σ) t``, ``y = x_t ~ N(t mu, (a_t² + t² s²) I)`` and
    ``E[u | y] = mu + (t s² − (1 − σ) a_t) / (a_t² + t² s²) (y − t mu)``.
    """

    def __init__(self, mu: torch.Tensor, s: float, sigma: float, offset: float = 0.0) -> None:
        super().__init__()
        self.mu, self.s, self.sigma = mu, s, sigma
        self.a = nn.Parameter(torch.full_like(mu, offset))
        self.b = nn.Parameter(torch.zeros(mu.shape[0], mu.shape[0], dtype=mu.dtype))

    def forward(self, t, y, context=None):
        t = torch.as_tensor(t, dtype=y.dtype).reshape(-1, 1)
        a_t = 1 - (1 - self.sigma) * t
        gain = (t * self.s**2 - (1 - self.sigma) * a_t) / (a_t**2 + t**2 * self.s**2)
        return self.mu + gain * (y - t * self.mu) + self.a + y @ self.b.T * t * (1 - t)


def _gradient_statistics(offset: float, batches: int = 200, batch: int = 256,
                         pairs: int | None = None):
    torch.manual_seed(1)
    mu, s, sigma = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.5, 0.01
    field = _GaussianMarginalField(mu, s, sigma, offset)
    flow = pf.Flow(CNF(field, 2, path=CondOTPath(sigma)), pf.StandardNormal(2)).double()
    objective = FlowMatching(coupling="independent", pairs=pairs)
    grads = []
    for _ in range(batches):
        x = mu + s * torch.randn(batch, 2, dtype=torch.float64)
        loss, _ = objective.loss(flow, flow, x, None)
        g = torch.autograd.grad(loss, [field.a, field.b])
        grads.append(torch.cat([g[0].reshape(-1), g[1].reshape(-1)]))
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(batches)


def test_marginal_field_has_zero_expected_gradient():
    mean, stderr = _gradient_statistics(0.0)
    assert (mean.abs() < 4 * stderr).all(), (mean, stderr)


def test_repeated_pairs_keep_the_marginal_field_a_stationary_point():
    mean, stderr = _gradient_statistics(0.0, batches=100, batch=32, pairs=256)
    assert (mean.abs() < 4 * stderr).all(), (mean, stderr)
    mean, stderr = _gradient_statistics(0.1, batches=100, batch=32, pairs=256)
    assert (mean[:2].abs() > 6 * stderr[:2]).all(), (mean, stderr)  # the control


def test_pairs_draw_several_times_and_noises_per_data_point():
    seen = []

    class Recorder(nn.Module):
        def forward(self, t, x, context=None):
            seen.append((t.detach().clone(), x.shape))
            return torch.zeros_like(x)

    flow = pf.Flow(CNF(Recorder(), 2), pf.StandardNormal(2))
    FlowMatching(coupling="independent", pairs=40).loss(flow, flow, torch.randn(16, 2), None)
    t, shape = seen[-1]
    assert shape == (48, 2) and t.unique().numel() == 48  # 3 repeats, fresh t for each
    with pytest.raises(ValueError, match="pairs"):
        FlowMatching(pairs=0)


def test_stratified_times_are_uniform_and_cover_every_stratum():
    torch.manual_seed(0)
    u = torch.stack([stratified_uniform(7, dtype=torch.float64) for _ in range(4000)])
    assert (u.mul(7).floor().sort(dim=1).values == torch.arange(7.0)).all()
    counts = torch.histc(u[:, 0], bins=10, min=0, max=1)  # one coordinate: uniform on [0, 1)
    assert ((counts - 400).abs() < 4 * math.sqrt(400)).all(), counts


def test_shifted_field_has_nonzero_expected_gradient():
    mean, stderr = _gradient_statistics(0.1)  # the control: the test above can fail
    assert (mean[:2].abs() > 10 * stderr[:2]).all(), (mean, stderr)


# -- CNF options ---------------------------------------------------------------------------------
def test_velocity_is_the_integrated_field_in_path_time():
    field = TimeMLP(2, (8,))
    cnf = CNF(field, 2, t1=0.5)
    t, x = torch.rand(6), torch.randn(6, 2)
    torch.testing.assert_close(cnf.velocity(t, x), 0.5 * field(0.5 * t, x))
    with pytest.raises(ValueError, match="t must be"):
        cnf.velocity(torch.rand(5), x)
    with pytest.raises(ValueError, match="context"):
        cnf.velocity(t, x, torch.randn(6, 1))


def test_fixed_step_solvers_and_solver_override():
    flow = _small_flow(method="rk4", steps=5)
    flow.sample(4)
    assert flow.transform.nfe == 20
    with flow.transform.solver(method="euler", steps=7):
        flow.log_prob(torch.randn(3, 2))
        assert flow.transform.nfe == 7
    with flow.transform.solver(method="dopri5"):
        assert flow.transform.steps is None
    assert (flow.transform.method, flow.transform.steps) == ("rk4", 5)
    with pytest.raises(ValueError, match="steps"):
        _small_flow(method="rk4")
    with pytest.raises(ValueError, match="steps"):
        _small_flow(method="rk4", steps=0)
    adaptive = _small_flow()
    z = torch.randn(8, 2)
    with adaptive.transform.solver(method="rk4", steps=64):
        x_fixed = adaptive.transform(z)[0]
    # both within the adaptive solver's tolerance (1e-5 per step) of the exact map
    torch.testing.assert_close(x_fixed, adaptive.transform(z)[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("context", [0, 2])
def test_cnf_with_new_options_passes_the_kit(context):
    torch.manual_seed(0)
    # the path only matters to training; a fixed-grid solver changes the map itself
    cnf = CNF(TimeMLP(2, (8,), context), 2, method="rk4", steps=12, path="vp")
    assert isinstance(cnf.path, VPPath)
    x = torch.randn(5, 2, dtype=torch.float64)
    ctx = torch.randn(5, context, dtype=torch.float64) if context else None
    check_transform(cnf, x, ctx, atol=1e-5, rtol=1e-5)


# -- fit(objective=...) --------------------------------------------------------------------------
def _data(n: int = 512) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 2) * 0.5 + torch.tensor([1.0, -1.0])


def test_fit_flow_matching_validates_with_the_exact_nll():
    flow = _small_flow()
    x = _data()
    history = pf.fit(flow, x, val=x[:128], steps=40, objective="flow-matching", progress=False)
    assert len(history.step_nll) == 40 and all(math.isfinite(v) for v in history.step_nll)
    assert history.val_step[-1] == 40 and len(history.val_nll) >= 2
    with torch.no_grad():
        exact = float(-flow.log_prob(x[:128]).double().mean())
    assert history.best_val_nll == pytest.approx(exact, rel=1e-4)
    assert history.val_nll[-1] < history.val_nll[0]


def test_fit_objective_instance_and_ema():
    flow = _small_flow()
    x = _data()
    history = pf.fit(flow, x, steps=10, objective=FlowMatching(coupling="independent", ema=0.9),
                     progress=False)
    assert history.steps == 10
    pf.fit(_small_flow(), x, steps=5, objective=MaximumLikelihood(), progress=False)


class _Crash(Exception):
    pass


def test_killed_flow_matching_run_resumes_bit_identically(tmp_path):
    x = _data()
    kwargs = dict(steps=24, batch_size=64, objective="flow-matching", ema=0.9, val_every=8,
                  progress=False)
    torch.manual_seed(0)
    reference = _small_flow()
    ref_history = pf.fit(reference, x, x[:64], **kwargs)

    def crash(step, value):
        if step == 13:
            raise _Crash

    torch.manual_seed(0)
    with pytest.raises(_Crash):
        pf.fit(_small_flow(), x, x[:64], checkpoint_dir=tmp_path, checkpoint_every=5,
               callback=crash, **kwargs)
    torch.manual_seed(7)
    resumed = _small_flow()  # other weights and RNG: all restored from the checkpoint
    history = pf.fit(resumed, x, x[:64], checkpoint_dir=tmp_path, resume=True, **kwargs)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert history.step_nll == ref_history.step_nll
    assert history.val_nll == ref_history.val_nll


def test_fit_flow_matching_refusals():
    x = _data(64)
    with pytest.raises(ValueError, match="objective"):
        pf.fit(_small_flow(), x, steps=1, objective="score-matching", progress=False)
    with pytest.raises(ValueError, match="coupling"):
        pf.fit(_small_flow(), x, steps=1, objective="flow-matching", coupling="sinkhorn",
               progress=False)
    with pytest.raises(ValueError, match="coupling"):
        pf.fit(_small_flow(), x, steps=1, coupling="ot", progress=False)
    with pytest.raises(ValueError, match="transforms=1"):
        pf.fit(_small_flow(transforms=2), x, steps=1, objective="flow-matching", progress=False)
    with pytest.raises(ValueError, match="augment"):
        pf.fit(_small_flow(augment=1), x, steps=1, objective="flow-matching", progress=False)
    with pytest.raises(ValueError, match="velocity"):
        pf.fit(pf.flows.build("realnvp", features=2), x, steps=1, objective="flow-matching",
               progress=False)
    with pytest.raises(ValueError, match="conditional"):
        pf.fit(_small_flow(context=1), (x, torch.randn(64, 1)), steps=1,
               objective="flow-matching", coupling="ot", progress=False)
    with pytest.raises(ValueError, match="ema"):
        pf.fit(_small_flow(), x, steps=1, objective="flow-matching", ema=1.5, progress=False)


# -- slow: what a trained flow-matching CNF is -------------------------------------------------
@pytest.mark.slow
def test_trained_density_integrates_to_one():
    torch.manual_seed(0)
    x = torch.as_tensor(pf.data.toy("8gaussians", 8000, seed=0), dtype=torch.float32)
    flow = pf.flows.build("cnf", features=2, hidden=(64, 64))
    pf.fit(flow, x, steps=1500, objective="flow-matching", progress=False)
    flow = flow.double()
    edge, n = 6.0, 241
    axis = torch.linspace(-edge, edge, n, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = torch.cat([flow.log_prob(part).exp() for part in grid.split(8192)])
    cell = (2 * edge / (n - 1)) ** 2
    mass = float(density.sum() * cell)
    assert mass == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow
def test_conditional_flow_matching_recovers_the_conditional_mean():
    torch.manual_seed(0)
    c = torch.rand(6000, 1) * 2 - 1
    x = torch.cat([2 * c, -c], dim=1) + 0.3 * torch.randn(6000, 2)
    flow = pf.flows.build("cnf", features=2, context=1, hidden=(64, 64))
    pf.fit(flow, (x, c), steps=1500, objective="flow-matching", progress=False)
    for value in (-0.6, 0.5):
        samples = flow.sample(4000, torch.tensor([[value]]))[:, 0]
        mean = samples.mean(0)
        assert torch.allclose(mean, torch.tensor([2 * value, -value]), atol=0.06), mean
        assert samples.std(0).sub(0.3).abs().max() < 0.06


def test_the_path_sets_the_default_batch_lr_and_pairs():
    sphere = pf.flows.build("sphere-cnf", features=3, hidden=(8,))
    plane = pf.flows.build("cnf", features=2, hidden=(8,))
    path = sphere.transform.path
    objective = FlowMatching()
    assert objective.batch_size(sphere) == path.batch_size == 4096
    assert objective.learning_rate(sphere) == path.lr == 6e-3
    assert (objective.batch_size(plane), objective.learning_rate(plane)) == (256, 3e-3)
    assert FlowMatching(lr=1e-3).learning_rate(sphere) == 1e-3  # an explicit lr wins
    with pytest.raises(ValueError, match="lr"):
        FlowMatching(lr=0.0)
