"""Manifold flows and bases: closed forms against the autograd volume ratio, exact inverses,
normalised densities, parameter domains, off-manifold input, training on S²."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.diagnostics import check_transform
from pushforward.manifolds import (
    Calibration,
    Dirichlet,
    GeneralizedCalibration,
    NormalizedAffine,
    NormalizedLinear,
    NormalizedTranslation,
    Simplex,
    Sphere,
    UniformSimplex,
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherMixture,
    compose_calibrations,
    log_volume_ratio,
    sample_vmf,
    tangent_from_projection,
    volume_ratio_reference,
)
from pushforward.manifolds._bessel import log_bessel_iv, vmf_log_normalizer

D = torch.float64
NS = [2, 3, 4, 5, 6]


def sphere_points(n, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Sphere(n).project(torch.randn(batch, n, generator=g, dtype=D))


def simplex_points(n, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = -torch.log(torch.rand(batch, n, generator=g, dtype=D))
    return e / e.sum(-1, keepdim=True)


def random_matrix(n, seed, spread=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=D) + spread * torch.randn(n, n, generator=g, dtype=D)


def random_ball(n, seed, radius):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=D)
    return radius * v / v.norm()


def equal_rows(n, seed, lam):
    a = random_matrix(n, seed, 0.4)
    return a - (a.sum(1, keepdim=True) - lam) / n


def sphere_flows(n, seed):
    m = random_matrix(n, seed)
    b = random_ball(n, seed + 1, 0.85)
    return [
        NormalizedTranslation(n, shift=random_ball(n, seed + 2, 0.9)),
        NormalizedLinear(n, matrix=m),
        NormalizedAffine(n, matrix=m, shift=m @ b),
    ]


def simplex_flows(n, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, generator=g, dtype=D)
    return [
        Calibration(n, scale=torch.tensor(0.6 + float(torch.rand(1, generator=g, dtype=D)),
                                          dtype=D), shift=c),
        GeneralizedCalibration(n, matrix=equal_rows(n, seed, -0.8 if n % 2 else 1.4), shift=c),
    ]


# -- closed forms against the autograd reference ----------------------------------------------


def _assert_log_r_matches_autograd(t, project, z, n, rtol):
    """Both ladjs against the generic volume ratio, the round trip; returns ``x = t(z)``."""
    x, ladj = t(z)
    ref = log_volume_ratio(lambda u: t(u)[0], project, z, n - 1)
    assert torch.allclose(ladj, ref, atol=1e-8, rtol=0), type(t).__name__
    # the inverse's ladj is the log volume ratio of the inverse map at x
    z2, ladj_inv = t.inverse(x)
    ref_inv = log_volume_ratio(lambda u: t.inverse(u)[0], project, x, n - 1)
    assert torch.allclose(ladj_inv, ref_inv, atol=1e-8, rtol=0), type(t).__name__
    assert torch.allclose(z2, z, atol=1e-12, rtol=rtol), type(t).__name__
    return x


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("seed", [0, 1])
def test_sphere_log_r_matches_autograd(n, seed):
    z = sphere_points(n, 16, seed)
    for t in sphere_flows(n, seed):
        x = _assert_log_r_matches_autograd(t, Sphere(n).project, z, n, rtol=0)
        assert torch.allclose(x.norm(dim=-1), torch.ones(16, dtype=D), atol=1e-14)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("seed", [0, 1])
def test_simplex_log_r_matches_autograd(n, seed):
    p = simplex_points(n, 16, seed)
    for t in simplex_flows(n, seed):
        q = _assert_log_r_matches_autograd(t, Simplex(n).project, p, n, rtol=1e-10)
        assert torch.allclose(q.sum(-1), torch.ones(16, dtype=D), atol=1e-14)


def test_simplex_chart_formula_equals_generic():
    """SPEC §4.1: |det(R F_p E)| with E = [I; −1ᵀ], R = [I 0] equals the generic ratio."""
    n = 4
    p = simplex_points(n, 6, 3)
    t = simplex_flows(n, 3)[1]
    e = torch.cat([torch.eye(n - 1, dtype=D), -torch.ones(1, n - 1, dtype=D)])
    chart = []
    for i in range(6):
        f = torch.autograd.functional.jacobian(lambda u: t(u[None])[0][0], p[i])
        chart.append(torch.linalg.slogdet((f @ e)[: n - 1])[1])
    assert torch.allclose(torch.stack(chart), t(p)[1], atol=1e-10)


def test_log_volume_ratio_basics():
    s = Sphere(3)
    x = sphere_points(3, 8)
    assert torch.allclose(log_volume_ratio(lambda u: u, s.project, x, 2), torch.zeros(8, dtype=D),
                          atol=1e-14)
    # a rotation preserves volume
    q, _ = torch.linalg.qr(random_matrix(3, 4))
    assert log_volume_ratio(lambda u: u @ q.T, s.project, x, 2).abs().max() < 1e-12
    # tangent bases: orthonormal and orthogonal to x, from the projection and in closed form
    for t in (tangent_from_projection(s.project, x, 2), s.tangent_basis(x)):
        assert torch.allclose(t.transpose(1, 2) @ t, torch.eye(2, dtype=D).expand(8, 2, 2),
                              atol=1e-12)
        assert (x.unsqueeze(1) @ t).abs().max() < 1e-12
    # degenerate columns for the textbook QR recipe (x_n = 0) are handled
    x0 = torch.tensor([[0.6, 0.8, 0.0]], dtype=D)
    assert torch.isfinite(log_volume_ratio(lambda u: s.project(u + 0.3), s.project, x0, 2)).all()
    simplex = Simplex(4)
    tb = simplex.tangent_basis(simplex_points(4, 2))
    assert tb.sum(1).abs().max() < 1e-14
    with pytest.raises(ValueError, match="dim"):
        log_volume_ratio(lambda u: u, s.project, x, 5)


@pytest.mark.parametrize("n", [2, 3, 5])
def test_sphere_tangent_projection_and_exponential_map(n):
    s = Sphere(n)
    x = sphere_points(n, 16)
    v = s.to_tangent(x, sphere_points(n, 16, seed=1))
    assert (v * x).sum(-1).abs().max() < 1e-14
    assert torch.allclose(s.to_tangent(x, v), v, atol=1e-15)  # a projection
    y = s.exp(x, v)
    assert ((y.norm(dim=-1) - 1).abs() < 1e-14).all()
    # the geodesic distance travelled is ‖v‖ (for ‖v‖ < π)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(16, 1, dtype=D) * 3
    angle = torch.acos((s.exp(x, v) * x).sum(-1).clamp(-1, 1))
    assert torch.allclose(angle, v.norm(dim=-1), atol=1e-7)
    # exp_x(0) = x, and the derivative at 0 is v: (exp_x(εv) − x)/ε → v
    assert torch.equal(s.exp(x, torch.zeros_like(x)), x)
    assert torch.allclose((s.exp(x, 1e-7 * v) - x) / 1e-7, v, atol=1e-6)


def test_log_volume_ratio_is_differentiable_in_parameters():
    t = NormalizedAffine(3, matrix=random_matrix(3, 0), shift=torch.tensor([0.1, 0.2, -0.3]))
    t = t.double()
    x = sphere_points(3, 5)
    closed = torch.autograd.grad(t(x)[1].sum(), list(t.parameters()))
    generic = torch.autograd.grad(
        log_volume_ratio(lambda u: t(u)[0], Sphere(3).project, x, 2).sum(), list(t.parameters()))
    for a, b in zip(closed, generic):
        assert torch.allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("n", [3, 5])
def test_check_transform_with_reference_on_inverse_views(n):
    ref = volume_ratio_reference(Sphere(n))
    for t in sphere_flows(n, 7):
        x = sphere_points(n, 6, 8)
        check_transform(t, x, ladj_reference=ref, atol=1e-9)
        check_transform(t.inv, x, ladj_reference=ref, atol=1e-9)
    ref = volume_ratio_reference(Simplex(n))
    for t in simplex_flows(n, 7):
        p = simplex_points(n, 6, 9)
        check_transform(t, p, ladj_reference=ref, atol=1e-9)
        check_transform(t.inv, p, ladj_reference=ref, atol=1e-9)


# -- the angular central Gaussian, the group law ----------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_uniform_through_normalized_linear_is_angular_central_gaussian(n):
    m = random_matrix(n, 11, 0.8)
    flow = pf.Flow(NormalizedLinear(n, matrix=m), UniformSphere(n)).double()
    y = sphere_points(n, 32, 12)
    sigma_inv = torch.linalg.inv(m @ m.T)
    quad = ((y @ sigma_inv) * y).sum(-1)
    acg = (math.lgamma(n / 2) - math.log(2) - n / 2 * math.log(math.pi)
           - 0.5 * torch.logdet(m @ m.T) - n / 2 * torch.log(quad))
    assert torch.allclose(flow.log_prob(y), acg, atol=1e-10)


def test_group_law():
    n = 4
    g1, g2 = simplex_flows(n, 21)[1], simplex_flows(n, 22)[1]
    cal = simplex_flows(n, 23)[0]
    p = simplex_points(n, 10, 24)
    for outer, inner in ((g1, g2), (cal, g1), (g2, cal)):
        composed = compose_calibrations(outer, inner)
        chain = pf.Chain([inner, outer])
        q_chain, l_chain = chain(p)
        q, ladj = composed(p)
        assert torch.allclose(q, q_chain, atol=1e-12)
        assert torch.allclose(ladj, l_chain, atol=1e-9)
        a = composed.matrix
        assert torch.allclose(a.sum(1), a.sum(1).mean().expand(n), atol=1e-12)
    # the identity and inverses: g ∘ g⁻¹ = id
    a, c = g1.matrix.detach(), g1.shift.detach()
    a_inv = torch.linalg.inv(a)
    g_inv = GeneralizedCalibration(n, matrix=a_inv, shift=-a_inv @ c)
    ident = compose_calibrations(g1, g_inv)
    assert torch.allclose(ident(p)[0], p, atol=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        compose_calibrations(g1, GeneralizedCalibration(3))


def test_calibration_is_generalized_calibration_with_scaled_identity():
    n = 5
    cal = simplex_flows(n, 31)[0]
    gen = GeneralizedCalibration(n, matrix=cal.matrix.detach(), shift=cal.shift.detach())
    p = simplex_points(n, 7, 32)
    assert torch.allclose(cal(p)[0], gen(p)[0], atol=1e-13)
    assert torch.allclose(cal(p)[1], gen(p)[1], atol=1e-10)
    # c = 0 is temperature scaling: softmax(log p / a)
    t = Calibration(n, scale=torch.tensor(2.5, dtype=D))
    assert torch.allclose(t(p)[0], torch.softmax(torch.log(p) / 2.5, -1), atol=1e-14)


# -- parameter domains, off-manifold input ----------------------------------------------------


def test_constraint_a1_survives_optimiser_steps():
    n = 5
    t = GeneralizedCalibration(n, matrix=equal_rows(n, 41, 1.7))
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    opt = torch.optim.Adam(t.parameters(), lr=0.1)
    p = simplex_points(n, 64, 42)
    target = torch.softmax(torch.randn(64, n, dtype=D) * 3, -1)
    for _ in range(50):
        opt.zero_grad()
        q, ladj = t(p)
        loss = ((q - target) ** 2).sum() - ladj.mean() * 1e-3
        loss.backward()
        opt.step()
    a = t.matrix.detach()
    rows = a.sum(1)
    assert torch.allclose(rows, rows.mean().expand(n), atol=1e-12 * a.abs().max())
    assert torch.allclose(rows.mean(), t.eigenvalue.detach())
    assert torch.linalg.matrix_rank(a) == n
    assert abs(float(torch.linalg.det(a))) > 0


def test_bad_parameters_are_refused():
    n = 4
    with pytest.raises(ValueError, match="A 1 = λ 1"):
        GeneralizedCalibration(n, matrix=random_matrix(n, 51))
    singular = torch.ones(n, n, dtype=D)  # rows sum to n, but rank 1
    with pytest.raises(ValueError, match="singular"):
        GeneralizedCalibration(n, matrix=singular)
    zero_rows = equal_rows(n, 52, 0.0)
    with pytest.raises(ValueError, match="singular"):
        GeneralizedCalibration(n, matrix=zero_rows)
    with pytest.raises(ValueError, match="scale"):
        Calibration(n, scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        Calibration(n, scale=-1.0)
    with pytest.raises(ValueError, match="open unit ball"):
        NormalizedTranslation(3, shift=torch.tensor([0.6, 0.8, 0.0]))
    with pytest.raises(ValueError, match="singular"):
        NormalizedLinear(3, matrix=torch.tensor([[1.0, 2, 3], [2, 4, 6], [0, 0, 1]]))
    m = torch.diag(torch.tensor([2.0, 1.0, 1.0]))
    NormalizedAffine(3, matrix=m, shift=torch.tensor([1.9, 0.0, 0.0]))  # ‖M⁻¹c‖ = 0.95: fine
    with pytest.raises(ValueError, match="M⁻¹c"):
        NormalizedAffine(3, matrix=m, shift=torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        NormalizedAffine(3, matrix=torch.eye(2))
    with pytest.raises(ValueError, match="concentration"):
        VonMisesFisher(3, concentration=0.0)
    with pytest.raises(ValueError, match="unit"):
        VonMisesFisher(3, mean=torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="concentration"):
        Dirichlet(3, concentration=torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="n must be"):
        Sphere(1)


def test_parameter_domains_hold_for_any_raw_value():
    t = NormalizedAffine(3)
    with torch.no_grad():
        t.raw_shift.fill_(1e6)
        t.linear.log_diag.fill_(3.0)
    m, c = t.matrix.detach(), t.shift.detach()
    assert float(torch.linalg.solve(m, c).norm()) < 1
    x = sphere_points(3, 10).float()
    y, ladj = t(x)
    assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
    tr = NormalizedTranslation(3)
    with torch.no_grad():
        tr.raw_shift.fill_(-50.0)
    assert float(tr.shift.detach().norm()) < 1


def test_off_manifold_input_raises():
    bad_sphere = torch.tensor([[1.3, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for t in sphere_flows(3, 61):
        t = t.float()
        with pytest.raises(ValueError, match="off the sphere: ‖x‖ = 1.3"):
            t(bad_sphere)
        with pytest.raises(ValueError, match="off the sphere"):
            t.inverse(bad_sphere)
        with pytest.raises(ValueError, match="off the sphere"):
            pf.Flow(t, UniformSphere(3)).log_prob(bad_sphere)
        with pf.validation(False):
            t(bad_sphere)  # the global switch turns the check off
    off_sum = torch.tensor([[0.5, 0.3, 0.4]])
    negative = torch.tensor([[1.2, -0.1, -0.1]])
    for t in simplex_flows(3, 62):
        t = t.float()
        with pytest.raises(ValueError, match="Σ p = 1.2"):
            t(off_sum)
        with pytest.raises(ValueError, match="positive"):
            t.inverse(negative)
    with pytest.raises(ValueError, match="off the sphere"):
        VonMisesFisher(3).log_prob(bad_sphere)
    with pytest.raises(ValueError, match="simplex"):
        Dirichlet(3).log_prob(off_sum)


# -- bases: normalisers, sampling, integration ------------------------------------------------


def _log_normalizer_by_quadrature(n, kappa):
    """log ∫_{S^{n−1}} exp(κ μᵀx) dx = log |S^{n−2}| + log ∫_0^π e^{κ cos θ} sin^{n−2}θ dθ."""
    theta = torch.linspace(0, math.pi, 400001, dtype=D)
    f = torch.exp(kappa * (torch.cos(theta) - 1)) * torch.sin(theta) ** (n - 2)
    integral = torch.trapezoid(f, theta)
    log_area = math.log(2) + (n - 1) / 2 * math.log(math.pi) - math.lgamma((n - 1) / 2)
    return log_area + math.log(float(integral)) + kappa


@pytest.mark.parametrize("n", NS)
def test_vmf_normalizer_against_numerical_integration(n):
    for kappa in (1e-3, 0.5, 3.0, 30.0, 49.9, 50.1, 300.0, 3000.0):
        log_c = float(vmf_log_normalizer(n, torch.tensor(kappa, dtype=D)))
        assert abs(-log_c - _log_normalizer_by_quadrature(n, kappa)) < 1e-7, (n, kappa)


def test_vmf_normalizer_is_stable():
    kappa = torch.tensor([1e-12, 1e-3, 1.0, 1e2, 1e4, 1e6, 1e8], dtype=D, requires_grad=True)
    for n in (2, 3, 4, 7, 10):
        log_c = vmf_log_normalizer(n, kappa)
        assert torch.isfinite(log_c).all()
        assert torch.isfinite(torch.autograd.grad(log_c.sum(), kappa)[0]).all()
        assert abs(float(log_c[0].detach()) + Sphere(n).log_volume) < 1e-9  # κ → 0: uniform
    # the general expression at n = 3 agrees with the closed form
    kk = torch.tensor([1e-3, 0.7, 20.0, 49.0, 51.0, 400.0], dtype=D)
    general = 0.5 * torch.log(kk) - 1.5 * math.log(2 * math.pi) - log_bessel_iv(0.5, kk)
    assert torch.allclose(general, vmf_log_normalizer(3, kk), atol=1e-11)
    # float32 large κ stays finite
    assert torch.isfinite(vmf_log_normalizer(3, torch.tensor([1e5], dtype=torch.float32))).all()


@pytest.mark.parametrize("n", [3, 5])
def test_wood_sampler_matches_mean_resultant(n):
    torch.manual_seed(5)
    for kappa in (2.0, 40.0):
        mu = sphere_points(n, 1, 71)[0]
        x = sample_vmf(mu.expand(20000, n), torch.full((20000,), kappa, dtype=D))
        assert (x.norm(dim=-1) - 1).abs().max() < 1e-13
        w = x @ mu
        k = torch.tensor(kappa, dtype=D)
        expected = float(torch.exp(log_bessel_iv(n / 2, k) - log_bessel_iv(n / 2 - 1, k)))
        se = float(w.std()) / math.sqrt(len(w))
        assert abs(float(w.mean()) - expected) < 5 * se
        # the component orthogonal to μ has no preferred direction
        perp = x - w[:, None] * mu
        assert float(perp.mean(0).norm()) < 5 * float(perp.norm(dim=-1).mean()) / math.sqrt(
            len(w))


def _grid_s2(steps=400):
    """Midpoint grid on S² in (θ, φ) with the surface weights sin θ dθ dφ."""
    theta = (torch.arange(steps, dtype=D) + 0.5) * math.pi / steps
    phi = (torch.arange(2 * steps, dtype=D) + 0.5) * math.pi / steps
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    x = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1).reshape(-1, 3)
    w = (t.sin() * (math.pi / steps) ** 2).reshape(-1)
    return x, w


def _sphere_flow(seed, spread=0.6, radius=0.5, kappa=3.0):
    torch.manual_seed(seed)
    layers = []
    for k in range(3):
        m = random_matrix(3, seed + k, spread)
        layers.append(NormalizedAffine(3, matrix=m,
                                       shift=m @ random_ball(3, seed + 10 + k, radius)))
    base = VonMisesFisher(3, mean=sphere_points(3, 1, seed)[0], concentration=kappa)
    return pf.Flow(layers, base).double()


def test_sphere_densities_integrate_to_one_by_quadrature():
    x, w = _grid_s2()
    dists = [UniformSphere(3), VonMisesFisher(3, concentration=torch.tensor(25.0, dtype=D)),
             VonMisesFisherMixture(3, components=4, concentration=8.0).double(),
             _sphere_flow(0), pf.Flow(NormalizedLinear(3, matrix=random_matrix(3, 3, 1.0)),
                                      UniformSphere(3)).double()]
    for d in dists:
        with torch.no_grad():
            total = float((d.log_prob(x).exp() * w).sum())
        assert abs(total - 1) < 1e-4, (type(d).__name__, total)


def test_sphere_flow_density_integrates_to_one_by_monte_carlo():
    """E_uniform[4π p(x)] = 1; with 200,000 draws the standard error is stated and bounded."""
    torch.manual_seed(3)
    flow = _sphere_flow(1, spread=0.3, radius=0.3, kappa=1.0)
    x = UniformSphere(3).double().sample(200_000)
    with torch.no_grad():
        values = 4 * math.pi * flow.log_prob(x).exp()
    mean, se = float(values.mean()), float(values.std()) / math.sqrt(len(values))
    assert se < 0.01  # the stated bound on the Monte Carlo standard error
    assert abs(mean - 1) < 4 * se


def test_simplex_densities_integrate_to_one_on_the_2_simplex():
    steps = 1500
    h = 1.0 / steps
    u = (torch.arange(steps, dtype=D) + 0.5) * h
    p1, p2 = torch.meshgrid(u, u, indexing="ij")
    inside = (p1 + p2) < 1 - 1e-12
    pts = torch.stack([p1[inside], p2[inside], 1 - p1[inside] - p2[inside]], -1)
    flows = [
        Dirichlet(3, concentration=torch.tensor([2.0, 3.0, 4.0], dtype=D)),
        UniformSimplex(3).double(),
        pf.Flow(Calibration(3, scale=torch.tensor(0.8, dtype=D),
                            shift=torch.tensor([0.2, -0.1, 0.0], dtype=D)),
                Dirichlet(3, concentration=torch.tensor([2.0, 2.5, 3.0], dtype=D))),
        pf.Flow(GeneralizedCalibration(3, matrix=torch.tensor(
            [[1.2, -0.1, 0.1], [0.3, 0.9, 0.0], [0.0, 0.2, 1.0]], dtype=D)),
            Dirichlet(3, concentration=torch.tensor([3.0, 2.0, 2.5], dtype=D))),
    ]
    for d in flows:
        with torch.no_grad():
            total = float(d.log_prob(pts).exp().sum() * h * h)
        assert abs(total - 1) < 3e-3, (type(d).__name__, total)


def test_simplex_bases_sample_and_match_torch():
    d = Dirichlet(4, concentration=torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=D))
    p = d.sample(1000)
    assert Simplex(4).contains(p).all()
    ref = torch.distributions.Dirichlet(d.concentration.detach()).log_prob(p)
    assert torch.allclose(d.log_prob(p), ref, atol=1e-10)
    u = UniformSimplex(4).double()
    assert torch.allclose(u.log_prob(p), torch.full((1000,), math.log(6), dtype=D))
    assert Simplex(4).contains(u.sample(100)).all()


# -- training, sampling and context on the manifold ------------------------------------------


def _adam(flow, data, steps, lr):
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    with pf.validation(False):
        for _ in range(steps):
            opt.zero_grad()
            loss = -flow.log_prob(data).mean()
            loss.backward()
            opt.step()
    return flow


def test_chain_of_spherical_flows_beats_a_single_vmf_on_a_vmf_mixture():
    torch.manual_seed(0)
    means = Sphere(3).project(torch.tensor([[1.0, 0, 0.3], [-0.5, 0.8, 0], [0, -0.6, -0.8]]))
    kappa = torch.tensor([15.0, 25.0, 10.0])

    def draw(n):
        idx = torch.randint(0, 3, (n,))
        return sample_vmf(means[idx], kappa[idx])

    train, test = draw(500), draw(1000)
    single = _adam(VonMisesFisher(3), train, 100, 0.05)
    gen = torch.Generator().manual_seed(1)
    layers = [NormalizedAffine(3, matrix=torch.eye(3) + 0.3 * torch.randn(3, 3, generator=gen))
              for _ in range(4)]
    chain = _adam(pf.Flow(layers, UniformSphere(3)), train, 100, 0.05)
    with torch.no_grad():
        nll_single = float(-single.log_prob(test).mean())
        nll_chain = float(-chain.log_prob(test).mean())
    # a single vMF scores about 2.4 nats here, the chain about 1.3 (the truth: 1.2)
    assert nll_chain < nll_single - 0.5, (nll_chain, nll_single)
    samples = chain.sample(500)
    assert (samples.norm(dim=-1) - 1).abs().max() < 1e-5


def test_conditional_spherical_flow_trains_and_samples():
    torch.manual_seed(0)
    flow = pf.Flow([NormalizedAffine(3, context_features=1, hidden=(16,)),
                    NormalizedTranslation(3, context_features=1, hidden=(16,))],
                   VonMisesFisher(3, concentration=2.0))
    # two context values, two different directions
    ctx = torch.cat([torch.zeros(300, 1), torch.ones(300, 1)])
    mu = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    data = sample_vmf(mu[ctx[:, 0].long()], torch.full((600,), 20.0))
    with torch.no_grad():
        before = float(-flow.log_prob(data, ctx).mean())
    opt = torch.optim.Adam(flow.parameters(), lr=0.02)
    with pf.validation(False):
        for _ in range(60):
            opt.zero_grad()
            loss = -flow.log_prob(data, ctx).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        after = float(-flow.log_prob(data, ctx).mean())
    assert after < before - 1.0
    x = flow.sample(50, context=torch.tensor([[0.0], [1.0]]))
    assert x.shape == (50, 2, 3)
    assert (x.norm(dim=-1) - 1).abs().max() < 1e-5
    # the samples follow their context
    assert float(x[:, 0, 0].mean()) > float(x[:, 1, 0].mean())


def test_sphere_preset_builds_trains_and_round_trips():
    for base in ("uniform", "vmf", "mixture"):
        flow = pf.flows.build("sphere", features=3, transforms=2, base=base, components=3)
        x = flow.sample(20)
        assert x.shape == (20, 3) and (x.norm(dim=-1) - 1).abs().max() < 1e-5
        lp = flow.log_prob(x)
        assert lp.shape == (20,) and torch.isfinite(lp).all()
        assert flow.config == {"flow": "sphere", "options": flow.config["options"]}
    rebuilt = pf.flows.build("sphere", **flow.config["options"])
    rebuilt.load_state_dict(flow.state_dict())
    assert torch.allclose(rebuilt.log_prob(x), flow.log_prob(x))
    with pytest.raises(ValueError, match="base"):
        pf.flows.build("sphere", base="gaussian")


def test_dirichlet_pushed_through_calibration_samples_match_log_prob():
    """Generative calibration: samples of Flow(Calibration, Dirichlet) stay on the simplex and
    their log-density equals log_prob."""
    flow = pf.Flow(Calibration(4, scale=torch.tensor(1.5, dtype=D),
                               shift=torch.tensor([0.1, 0.0, -0.2, 0.3], dtype=D)),
                   Dirichlet(4, concentration=torch.tensor([2.0, 3.0, 1.5, 2.5], dtype=D)))
    x, lp = flow.sample_and_log_prob(200)
    assert Simplex(4).contains(x).all()
    assert torch.allclose(lp, flow.log_prob(x), atol=1e-9)


def test_empty_and_single_batches():
    for d in (UniformSphere(3), VonMisesFisher(3), VonMisesFisherMixture(3, components=2),
              Dirichlet(3), UniformSimplex(3)):
        assert d.sample(0).shape == (0, 3)
        assert d.log_prob(d.sample(1)).shape == (1,)
    for t in (NormalizedAffine(3, context_features=2), GeneralizedCalibration(3)):
        ctx = torch.zeros(0, 2) if t.context_features else None
        x, ladj = t(torch.zeros(0, 3), ctx)
        assert x.shape == (0, 3) and ladj.shape == (0,)
