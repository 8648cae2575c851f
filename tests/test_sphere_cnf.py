"""SphereCNF and GeodesicPath: on-sphere solutions, ladj = autograd volume ratio, the path's
velocity, context, flow-matching training through ``pf.fit`` and normalisation on S²."""

import math

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward.manifolds import GeodesicPath, Sphere, SphereCNF, log_volume_ratio

TIGHT = {"rtol": 1e-9, "atol": 1e-9}


def _points(n, batch, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return Sphere(n).project(torch.randn(batch, n, generator=g, dtype=dtype))


def _busy(cnf, scale=2.0):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in cnf.parameters():
            p.add_(scale * torch.randn_like(p) / max(1, p.shape[-1]) ** 0.5)
    return cnf


@pytest.mark.parametrize("options", [
    {}, pytest.param({"frequencies": 2, "time_frequencies": 2, "activation": "tanh"},
                     marks=pytest.mark.slow)])
def test_ladj_is_the_autograd_volume_ratio(options):
    cnf = _busy(SphereCNF(3, hidden=(8, 8), **options, **TIGHT).double(), scale=1.0)
    z = _points(3, 4, 1)
    x, ladj = cnf(z)
    reference = log_volume_ratio(lambda u: cnf(u)[0], Sphere(3).project, z, 2)
    assert float(ladj.abs().max()) > 0.1  # a map that really changes volumes
    assert torch.allclose(ladj, reference, atol=1e-6, rtol=0)
    assert float((x.norm(dim=-1) - 1).abs().max()) < 1e-6


def test_solutions_stay_on_the_sphere_and_invert():
    cnf = _busy(SphereCNF(4, hidden=(16,), context_features=2, **TIGHT).double(), scale=1.0)
    z = _points(4, 8, 2)
    context = torch.randn(8, 2, dtype=torch.float64)
    x, ladj = cnf(z, context)
    assert float((x.norm(dim=-1) - 1).abs().max()) < 1e-6
    back, ladj_inv = cnf.inverse(x, context)
    assert torch.allclose(back, z, atol=1e-6)
    assert torch.allclose(ladj, -ladj_inv, atol=1e-6)
    flow = pf.Flow(cnf, pf.manifolds.UniformSphere(4).double())
    samples = flow.sample(16, context[:2])
    assert samples.shape == (16, 2, 4)
    assert float((samples.norm(dim=-1) - 1).abs().max()) < 1e-6


def test_push_follows_the_tangent_field_alone(monkeypatch):
    cnf = _busy(SphereCNF(3, hidden=(16,), context_features=1).double(), scale=1.0)
    flow = pf.Flow(cnf, pf.manifolds.UniformSphere(3).double())
    z = _points(3, 12, 5)
    context = torch.randn(12, 1, dtype=torch.float64)
    x, _ = cnf(z, context)
    torch.manual_seed(0)
    drawn, _ = flow.sample_and_log_prob(6, context[:2])

    def refuse(*args, **kwargs):
        raise RuntimeError("autograd was used")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    pushed = cnf.push(z, context).detach()
    # the same steps (the solver controls the point only): the same x, on the sphere
    assert torch.allclose(pushed, x, atol=1e-12, rtol=0)
    assert float((pushed.norm(dim=-1) - 1).abs().max()) < 1e-12
    torch.manual_seed(0)
    assert torch.allclose(flow.sample(6, context[:2]), drawn, atol=1e-12, rtol=0)


def test_context_changes_the_map():
    cnf = _busy(SphereCNF(3, hidden=(16,), context_features=1).double())
    z = _points(3, 4, 3)
    a, _ = cnf(z, torch.zeros(4, 1, dtype=torch.float64))
    b, _ = cnf(z, torch.ones(4, 1, dtype=torch.float64))
    assert float((a - b).abs().max()) > 1e-3
    with pytest.raises(ValueError):
        cnf.velocity(torch.rand(4), z)


def test_velocity_is_tangent_and_fixed_grid_solver():
    cnf = _busy(SphereCNF(3, hidden=(16,)).double())
    x = _points(3, 10, 4)
    v = cnf.velocity(torch.rand(10, dtype=torch.float64), x)
    assert float((v * x).sum(-1).abs().max()) < 1e-12
    exact, _ = cnf(x)
    with cnf.solver(method="rk4", steps=40):
        rough, _ = cnf(x)
        assert cnf.nfe == 160
    assert float((exact - rough).abs().max()) < 1e-4
    assert cnf.method == "dopri5" and cnf.steps is None
    with pytest.raises(ValueError):
        SphereCNF(3, method="rk4")


def test_geodesic_path_velocity_and_sphere():
    path = GeodesicPath(3)
    z, x = _points(3, 7, 5), _points(3, 7, 6)
    x[0] = z[0]  # identical
    x[1] = -z[1]  # antipodal
    t = torch.rand(7, dtype=torch.float64)
    t[2], t[3] = 0.0, 1.0
    x_t, u_t = path.sample(z, x, t)
    assert torch.isfinite(u_t).all()
    assert float((x_t.norm(dim=-1) - 1).abs().max()) < 1e-12
    assert float((u_t * x_t).sum(-1).abs().max()) < 1e-12
    assert torch.allclose(x_t[2], z[2]) and torch.allclose(x_t[3], x[3])
    h = 1e-6
    forward, _ = path.sample(z, x, t + h)
    backward, _ = path.sample(z, x, t - h)
    assert torch.allclose((forward - backward) / (2 * h), u_t, atol=1e-7)
    # u_t = log_{x_t}(x) / (1 − t) away from t = 1, and |u_t| = d(z, x)
    inner = slice(4, 7)
    log = path.log(x_t[inner], x[inner]) / (1 - t[inner, None])
    assert torch.allclose(log, u_t[inner], atol=1e-9)
    cost = path.cost(z, x)
    assert torch.allclose(cost.diagonal(), u_t.norm(dim=-1).square(), atol=1e-9)
    assert math.isclose(float(cost[1, 1]), math.pi ** 2, rel_tol=1e-9)
    times = path.sample_time(1000)
    assert 0 <= float(times.min()) and float(times.max()) <= 1 and float(times.mean()) > 0.6


def test_smoothing_moves_each_point_by_its_second_neighbour_distance():
    path = GeodesicPath(3)
    x = _points(3, 400, 7)
    x[1] = x[0]  # a repeated point is not moved
    torch.manual_seed(0)
    moved = path.smooth(x, 0.5, repeats=50)
    assert moved.shape == (20000, 3)
    assert float((moved.norm(dim=-1) - 1).abs().max()) < 1e-12
    angles = torch.acos((moved * x.repeat(50, 1)).sum(-1).clamp(-1, 1)).reshape(50, 400)
    assert float(angles[:, :2].max()) < 1e-6
    gap = torch.cdist(x, x) + 9 * torch.eye(400, dtype=x.dtype)
    second = 2 * torch.asin(gap.topk(2, dim=1, largest=False).values[:, 1] / 2)
    # ‖ξ‖ of a 2-D standard Gaussian has mean √(π/2); a copy moves with probability N₁/N =
    # 398/400; copies are drawn independently
    ratio = angles[:, 2:].mean(0) / (0.5 * second[2:])
    assert abs(float(ratio.mean()) - 398 / 400 * math.sqrt(math.pi / 2)) < 0.05
    assert not torch.equal(moved[2], moved[402])
    assert torch.allclose(path.smooth(x, 0.0, repeats=2), x.repeat(2, 1), rtol=0, atol=1e-15)


def test_smoothing_keeps_a_good_turing_share_of_the_points_exact():
    # 100 sites seen 3 times each and 100 seen once: N₁/N = 100/400 of the copies are moved
    path = GeodesicPath(3)
    sites = _points(3, 200, 3)
    x = torch.cat([sites[:100].repeat(3, 1), sites[100:]])
    torch.manual_seed(1)
    moved = path.smooth(x, 0.5, repeats=40)
    angles = torch.acos((moved * x.repeat(40, 1)).sum(-1).clamp(-1, 1)).reshape(40, 400)
    assert float(angles[:, :300].max()) < 1e-6  # repeated sites never move
    share = float((angles[:, 300:] > 1e-6).to(x.dtype).mean())
    assert abs(share - 0.25) < 0.03  # 4,000 Bernoulli(1/4) draws: sd 0.007


def test_neighbour_table_gives_whole_set_distances_to_a_subsample():
    from pushforward.manifolds.neighbours import NeighbourDistances

    path = GeodesicPath(3)
    x = _points(3, 2000, 11)
    x[1] = x[0]
    table = path.neighbours(x)
    gap = (x[:, None] - x[None]).norm(dim=-1) + 9 * torch.eye(2000, dtype=x.dtype)
    chord = gap.topk(2, dim=1, largest=False).values
    nearest, second = (2 * torch.asin(chord / 2)).unbind(-1)
    batch = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:500]
    d1, d2, unseen = table.lookup(x[batch])
    assert torch.allclose(d1, nearest[batch], atol=1e-12)
    assert torch.allclose(d2[d1 > 0], second[batch][d1 > 0], atol=1e-12)
    assert math.isclose(float(unseen), 1998 / 2000)
    # a quarter of the points have a quarter of the density: in-batch d₂ ≈ 2× the whole set's
    inside = GeodesicPath(3).smooth
    assert table.lookup(x[batch] + 1e-9) is None and table.lookup(x[:5].float()) is None
    torch.manual_seed(0)
    wide = inside(x[batch], 1.0, repeats=20)
    torch.manual_seed(0)
    tabled = inside(x[batch], 1.0, repeats=20, neighbours=table)
    step = [torch.acos((m * x[batch].repeat(20, 1)).sum(-1).clamp(-1, 1)).mean() for m in
            (wide, tabled)]
    assert 1.7 < float(step[0] / step[1]) < 2.3
    assert path.neighbours(_points(3, NeighbourDistances.limit + 1, 0).float()) is None


def test_fit_tabulates_the_smoothing_distances_once():
    from pushforward.training.objectives import FlowMatching

    flow = pf.flows.build("sphere-cnf", features=3, hidden=(8,))
    x = _points(3, 300, 5).float()
    objective = FlowMatching()
    objective.prepare(flow, x)
    assert objective.neighbours.lookup(x[:10]) is not None
    for smoothing, data in ((0.0, x), (None, None)):
        bare = FlowMatching(smoothing=smoothing)
        bare.prepare(flow, data)
        assert bare.neighbours is None
    objective.neighbours = None
    pf.fit(flow, x, steps=2, batch_size=64, objective=objective, progress=False)
    assert torch.equal(objective.neighbours.points.sort(0).values, x.sort(0).values)


def test_flow_matching_smoothing_option():
    from pushforward.training.objectives import FlowMatching

    with pytest.raises(ValueError, match="smoothing"):
        FlowMatching(smoothing=-1)
    with pytest.raises(ValueError, match="smooth"):
        FlowMatching(smoothing=0.5).check(pf.flows.build("cnf", features=2))
    FlowMatching().check(pf.flows.build("cnf", features=2))  # no smoothing by default in ℝᵈ
    flow = pf.flows.build("sphere-cnf", features=3, hidden=(8,))
    x = _points(3, 16, 3).float()
    losses = {}
    for smoothing in (None, "auto", flow.transform.path.smoothing_scale(x), 0, 0.5):
        torch.manual_seed(0)
        losses[smoothing] = FlowMatching(smoothing=smoothing).loss(flow, flow, x, None)[0]
    # the default is the sphere path's own smoothing, a scale chosen from the data (here the
    # batch); 0 regresses on the bare points
    assert flow.transform.path.smoothing == "auto"
    assert torch.equal(losses[None], losses["auto"])
    assert torch.equal(losses[None], losses[flow.transform.path.smoothing_scale(x)])
    assert not torch.equal(losses[None], losses[0])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_preset_trains_by_flow_matching_and_learns():
    torch.manual_seed(0)
    mean = torch.tensor([0.0, 0.0, 1.0])
    data = pf.manifolds.VonMisesFisher(3, mean=mean, concentration=torch.tensor(8.0)).sample(600)
    data = data.float()
    flow = pf.flows.build("sphere-cnf", features=3, hidden=(64, 64), frequencies=0)
    before = float(-flow.log_prob(data[:200]).mean())
    pf.fit(flow, data[200:], val=data[:200], steps=150, objective="flow-matching",
           progress=False, handle_signals=False)
    with torch.no_grad():
        after = float(-flow.log_prob(data[:200]).mean())
    # vMF(κ = 8) entropy ≈ 0.98 nats, uniform 2.53
    assert before > 2.4 and after < 1.6


@pytest.mark.slow
def test_trained_density_integrates_to_one_on_s2():
    torch.manual_seed(0)
    data = pf.manifolds.VonMisesFisher(3, concentration=torch.tensor(20.0)).sample(2000).float()
    flow = pf.flows.build("sphere-cnf", features=3, hidden=(128, 128), frequencies=2)
    pf.fit(flow, data, steps=600, objective="flow-matching", progress=False,
           handle_signals=False)
    flow = flow.double()
    # Gauss–Legendre in cos θ times a uniform rule in φ: exact for smooth integrands
    c, w = np.polynomial.legendre.leggauss(80)
    nodes, weights = torch.as_tensor(c), torch.as_tensor(w)
    phi = torch.arange(160, dtype=torch.float64) * (2 * math.pi / 160)
    cz, ph = torch.meshgrid(nodes, phi, indexing="ij")
    s = torch.sqrt(1 - cz ** 2)
    grid = torch.stack([s * torch.cos(ph), s * torch.sin(ph), cz], -1).reshape(-1, 3)
    with torch.no_grad(), flow.transform.solver(rtol=1e-6, atol=1e-6):
        density = torch.cat([flow.log_prob(chunk).exp() for chunk in grid.split(8192)])
    total = float((density.reshape(80, 160) * weights[:, None]).sum() * (2 * math.pi / 160))
    assert abs(total - 1) < 0.01
