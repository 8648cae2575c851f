"""Continuous normalizing flows: closed forms for a linear field, trace estimators, NFE, RNODE,
adjoint gradients, augmentation and the CNF preset."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import pushforward as pf
from pushforward.continuous import CNF, AugmentedFlow, TimeMLP, exact_trace, hutchinson_trace

D64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-10}
SE = 4.0  # statistical tests: |mean - exact| < 4 standard errors (two-sided p ≈ 6e-5)


class LinearField(nn.Module):
    """``f(t, z) = A z`` (optionally ``+ B c`` with a context)."""

    def __init__(self, A, B=None):
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.B = None if B is None else nn.Parameter(B.clone())
        self.context_features = 0 if B is None else B.shape[1]

    def forward(self, t, z, context=None):
        out = z @ self.A.T
        return out if context is None else out + context @ self.B.T


class ZeroField(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=D64))

    def forward(self, t, z):
        return self.w * z


def _matrix(d, seed=0, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(d, d, generator=g, dtype=D64)


def _gaussian_log_prob(x, cov):
    return torch.distributions.MultivariateNormal(torch.zeros(cov.shape[0], dtype=D64),
                                                  cov).log_prob(x)


# -- linear field: closed forms -----------------------------------------------------------------
@pytest.mark.parametrize("t1", [1.0, 0.7])
def test_linear_field_log_prob_matches_closed_form(t1):
    A = _matrix(3)
    flow = pf.Flow(CNF(LinearField(A), 3, t1=t1), pf.StandardNormal(3))
    x = torch.randn(6, 3, dtype=D64)
    E = torch.linalg.matrix_exp(t1 * A)  # x = e^{At} z, so x ~ N(0, E Eᵀ)
    expected = _gaussian_log_prob(x, E @ E.T)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-6, rtol=0)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-7, rtol=0)  # default float64 tols


def test_linear_field_forward_inverse_and_ladj():
    A = _matrix(4, seed=1)
    cnf = CNF(LinearField(A), 4, t1=1.3, **TIGHT)
    z = torch.randn(5, 4, dtype=D64)
    x, ladj = cnf(z)
    assert torch.allclose(x, z @ torch.linalg.matrix_exp(1.3 * A).T, atol=1e-9)
    assert torch.allclose(ladj, torch.full_like(ladj, 1.3 * float(torch.trace(A))), atol=1e-12)
    z2, ladj_inv = cnf.inverse(x)
    assert torch.allclose(z2, z, atol=1e-9)
    assert torch.allclose(ladj_inv, -ladj, atol=1e-12)


def test_linear_field_with_context_closed_form():
    A, B = _matrix(2, seed=2), _matrix(2, seed=3)[:, :1]
    cnf = CNF(LinearField(A, B), 2, **TIGHT)
    assert cnf.context_features == 1
    z, c = torch.randn(4, 2, dtype=D64), torch.randn(4, 1, dtype=D64)
    x, _ = cnf(z, c)
    # x = e^{A} z + A⁻¹ (e^{A} − I) B c
    E = torch.linalg.matrix_exp(A)
    expected = z @ E.T + (c @ B.T) @ (torch.linalg.solve(A, E - torch.eye(2, dtype=D64))).T
    assert torch.allclose(x, expected, atol=1e-9)
    with pytest.raises(ValueError, match="context"):
        cnf(z)


def test_float32_matches_float64():
    field = TimeMLP(2, (16, 16))
    cnf = CNF(field, 2)
    x = torch.randn(8, 2)
    z32, ladj32 = cnf.inverse(x)
    assert z32.dtype == torch.float32 and ladj32.dtype == torch.float32
    cnf64 = copy.deepcopy(cnf).double()
    z64, ladj64 = cnf64.inverse(x.double())
    assert torch.allclose(z32.double(), z64, atol=1e-3)
    assert torch.allclose(ladj32.double(), ladj64, atol=1e-3)


# -- traces ---------------------------------------------------------------------------------------
def test_exact_trace_matches_autograd_jacobian():
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    z = torch.randn(5, 4, dtype=D64)
    jac = torch.vmap(torch.func.jacrev(net))(z)
    assert torch.allclose(exact_trace(net, z), jac.diagonal(dim1=-2, dim2=-1).sum(-1))


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_trace_is_unbiased(noise):
    A = _matrix(5, seed=4)
    n = 20000
    z = torch.randn(n, 5, dtype=D64)
    estimates = hutchinson_trace(lambda v: v @ A.T, z, noise)
    mean, se = float(estimates.mean()), float(estimates.std() / math.sqrt(n))
    assert abs(mean - float(torch.trace(A))) < SE * se
    # the variance the docstring states: 2‖S‖_F² (Gaussian) or 2 Σ_{i≠j} S_ij² (Rademacher)
    S = (A + A.T) / 2
    off = S - torch.diag(S.diagonal())
    variance = 2 * (S.pow(2).sum() if noise == "gaussian" else off.pow(2).sum())
    assert float(estimates.var()) == pytest.approx(float(variance), rel=0.1)


def test_hutchinson_trace_with_given_noise_and_bad_noise():
    A = _matrix(3, seed=5)
    z = torch.randn(4, 3, dtype=D64)
    eps = torch.randn(4, 3, dtype=D64)
    expected = ((eps @ A) * eps).sum(-1)
    assert torch.allclose(hutchinson_trace(lambda v: v @ A.T, z, eps), expected)
    with pytest.raises(ValueError, match="noise"):
        hutchinson_trace(lambda v: v @ A.T, z, torch.randn(4, 2, dtype=D64))
    with pytest.raises(ValueError, match="unknown noise"):
        hutchinson_trace(lambda v: v @ A.T, z, "uniform")


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_cnf_hutchinson_ladj_is_unbiased(noise):
    torch.manual_seed(3)
    field = TimeMLP(3, (16,)).double()
    exact = CNF(field, 3, **TIGHT)
    stochastic = CNF(field, 3, trace="hutchinson", noise=noise, rtol=1e-6, atol=1e-6)
    assert not stochastic.exact_ladj and exact.exact_ladj
    z = torch.randn(2, 3, dtype=D64)
    with torch.no_grad():
        _, reference = exact(z)
        # 200 solves of 2 points = one solve of 400 (each row its own noise draw)
        _, draws = stochastic(z.repeat(200, 1))
    draws = draws.reshape(200, 2)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(200)
    assert torch.all((mean - reference).abs() < SE * se), (mean, reference, se)


def test_hutchinson_noise_is_fixed_within_a_solve():
    torch.manual_seed(0)
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2).double()

        def forward(self, t, z):
            return torch.tanh(self.lin(z))

    cnf = CNF(Spy(), 2, trace="hutchinson", rtol=1e-6, atol=1e-6)
    original = pf.continuous.dynamics.divergence_hutchinson

    def spy(out, z, noise, create_graph):
        seen.append(noise.clone())
        return original(out, z, noise, create_graph)

    pf.continuous.dynamics.divergence_hutchinson = spy
    try:
        cnf(torch.randn(3, 2, dtype=D64))
        first = len(seen)
        cnf(torch.randn(3, 2, dtype=D64))
    finally:
        pf.continuous.dynamics.divergence_hutchinson = original
    assert first > 2
    assert all(torch.equal(seen[0], s) for s in seen[:first])
    assert not torch.equal(seen[0], seen[first])  # a new draw for the next solve


# -- NFE ------------------------------------------------------------------------------------------
def test_nfe_grows_with_tighter_tolerance():
    torch.manual_seed(0)
    field = TimeMLP(2, (16, 16)).double()
    z = torch.randn(16, 2, dtype=D64)
    counts = []
    for tol in [1e-3, 1e-5, 1e-7, 1e-9]:
        cnf = CNF(field, 2, rtol=tol, atol=tol)
        with torch.no_grad():
            cnf(z)
        counts.append(cnf.nfe)
    assert counts == sorted(counts) and counts[-1] > counts[0], counts


def test_nfe_is_per_solve_and_counts_the_adjoint_backward():
    torch.manual_seed(0)
    field = TimeMLP(2, (8,)).double()
    assert CNF(field, 2).nfe == 0
    direct = CNF(field, 2, rtol=1e-6, atol=1e-6)
    z = torch.randn(4, 2, dtype=D64)
    x, ladj = direct(z)
    n = direct.nfe
    assert n > 0 and direct.nfe_forward == n
    (x.sum() + ladj.sum()).backward()
    assert direct.nfe_backward == 0  # backprop through the stored steps: no new evaluation
    direct(z[:2])
    assert 0 < direct.nfe  # reset, then recounted (not accumulated)
    adjoint = CNF(field, 2, rtol=1e-6, atol=1e-6, adjoint=True)
    x, ladj = adjoint(z)
    assert adjoint.nfe_backward == 0
    (x.sum() + ladj.sum()).backward()
    assert adjoint.nfe_backward > 0 and adjoint.nfe == n


# -- RNODE ----------------------------------------------------------------------------------------
def test_rnode_penalties_zero_for_the_zero_field():
    cnf = CNF(ZeroField(), 3, kinetic=1.0, jacobian=1.0)
    cnf(torch.randn(5, 3, dtype=D64))
    penalty = cnf.regularization()
    assert penalty.requires_grad
    assert float(penalty.detach()) == 0.0


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_rnode_penalties_positive_and_match_the_linear_closed_form(trace):
    A = _matrix(2, seed=6)
    T = 0.8
    z = torch.randn(3, 2, dtype=D64)
    # kinetic: ∫₀ᵀ ‖A e^{At} z‖² dt by 40-point Gauss–Legendre; Jacobian: T ‖A‖_F²
    nodes, weights = np.polynomial.legendre.leggauss(40)
    kinetic = torch.zeros(3, dtype=D64)
    for s, w in zip(nodes, weights):
        t = T * (s + 1) / 2
        v = z @ (A @ torch.linalg.matrix_exp(t * A)).T
        kinetic += (T / 2) * w * v.pow(2).sum(-1)
    frobenius = T * A.pow(2).sum()
    cnf = CNF(LinearField(A), 2, t1=T, trace=trace, kinetic=0.3, jacobian=0.2, **TIGHT)
    x, _ = cnf(z)
    assert torch.allclose(cnf.kinetic_energy(), kinetic, atol=1e-8)
    if trace == "exact":
        assert torch.allclose(cnf.jacobian_frobenius(), frobenius.expand(3), atol=1e-8)
        expected = 0.3 * kinetic.mean() + 0.2 * frobenius
        assert torch.allclose(cnf.regularization(), expected, atol=1e-8)
    assert float(cnf.regularization().detach()) > 0
    # the inverse solve (t1 -> 0) gives the same, positive, integrals
    cnf.inverse(x)
    assert torch.allclose(cnf.kinetic_energy(), kinetic, atol=1e-7)
    # and the penalty is differentiable
    cnf.regularization().backward()
    assert cnf.field.A.grad is not None and cnf.field.A.grad.abs().sum() > 0


def test_hutchinson_frobenius_is_unbiased():
    A = _matrix(3, seed=7)
    cnf = CNF(LinearField(A), 3, trace="hutchinson", jacobian=1.0, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        cnf(torch.randn(2000, 3, dtype=D64))
    draws = cnf.jacobian_frobenius()
    se = float(draws.std() / math.sqrt(draws.numel()))
    assert abs(float(draws.mean()) - float(A.pow(2).sum())) < SE * se


def test_regularization_is_a_zero_tensor_without_weights():
    cnf = CNF(TimeMLP(2, (8,)), 2)
    cnf(torch.randn(3, 2))
    penalty = cnf.regularization()
    assert isinstance(penalty, torch.Tensor) and penalty.shape == () and float(penalty) == 0


# -- adjoint ----------------------------------------------------------------------------------
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gradients_match_direct_backprop_including_context(trace):
    torch.manual_seed(1)
    field = TimeMLP(2, (12, 12), context_features=3).double()
    embedding = nn.Linear(2, 3).double()
    x = torch.randn(5, 2, dtype=D64)
    raw = torch.randn(5, 2, dtype=D64)
    grads = []
    for adjoint in (False, True):
        cnf = CNF(field, 2, trace=trace, adjoint=adjoint, kinetic=0.1, jacobian=0.1, **TIGHT)
        flow = pf.Flow(cnf, pf.StandardNormal(2), embedding=embedding, context_features=2)
        torch.manual_seed(2)  # the same Hutchinson noise for both solves
        field.zero_grad()
        embedding.zero_grad()
        loss = -flow.log_prob(x, raw).mean() + cnf.regularization()
        loss.backward()
        grads.append([p.grad.clone() for p in [*field.parameters(), *embedding.parameters()]])
    for direct, adjoint in zip(*grads):
        assert torch.allclose(direct, adjoint, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[1][-2:])  # the embedding got its gradient


# -- sampling without the trace ------------------------------------------------------------------
class DivergenceEvaluated(RuntimeError):
    pass


def _no_divergence(monkeypatch):
    def refuse(*args, **kwargs):
        raise DivergenceEvaluated
    monkeypatch.setattr("pushforward.continuous.dynamics.divergence_exact", refuse)
    monkeypatch.setattr("pushforward.continuous.dynamics.divergence_hutchinson", refuse)


def test_push_integrates_the_state_alone(monkeypatch):
    A = _matrix(3, seed=3)
    cnf = CNF(LinearField(A), 3, **TIGHT)
    flow = pf.Flow(cnf, pf.StandardNormal(3).double())
    z = torch.randn(16, 3, dtype=D64)
    x, _ = cnf(z)
    with cnf.solver(method="rk4", steps=10):
        x_grid, _ = cnf(z)
        nfe = cnf.nfe
    torch.manual_seed(0)
    drawn, _ = flow.sample_and_log_prob(5)
    _no_divergence(monkeypatch)
    with pytest.raises(DivergenceEvaluated):
        cnf(z)  # the patch bites: forward needs the divergence
    exact = z @ torch.linalg.matrix_exp(A).T
    assert torch.allclose(cnf.push(z), exact, atol=1e-8)  # to the solver's tolerance
    assert torch.allclose(cnf.push(z), x, atol=1e-8)
    with cnf.solver(method="rk4", steps=10):
        assert torch.equal(cnf.push(z), x_grid)  # a fixed grid: the same steps, the same x
        assert cnf.nfe == nfe == 40
    torch.manual_seed(0)
    assert torch.allclose(flow.sample(5), drawn, atol=1e-8)
    with torch.inference_mode():  # no autograd needed: inference mode is not left
        torch.manual_seed(0)
        assert torch.allclose(flow.sample(5), drawn, atol=1e-8)


def test_rsample_through_push_carries_the_gradient():
    cnf = CNF(LinearField(_matrix(2, seed=4)), 2, method="rk4", steps=8)
    flow = pf.Flow(cnf, pf.StandardNormal(2).double())
    grads = []
    for draw in (lambda: flow.rsample(32), lambda: flow.rsample_and_log_prob(32)[0]):
        torch.manual_seed(1)
        cnf.zero_grad()
        draw().pow(2).sum().backward()
        grads.append(cnf.field.A.grad.clone())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


def test_augmented_samples_without_the_trace(monkeypatch):
    flow = _augmented(_matrix(3, seed=5))
    torch.manual_seed(2)
    before = flow.sample(7)
    _no_divergence(monkeypatch)
    torch.manual_seed(2)
    after = flow.sample(7)
    assert after.shape == (7, 2)
    assert torch.allclose(after, before, atol=1e-8)


# -- augmentation -------------------------------------------------------------------------------
def _augmented(A, q="fixed", samples=1):
    cnf = CNF(LinearField(A), 2, augment=1, **TIGHT)
    return AugmentedFlow(cnf, pf.StandardNormal(3), q=q, samples=samples).double()


def test_augmented_bound_is_below_the_exact_log_likelihood():
    A = _matrix(3, seed=8)
    flow = _augmented(A)
    E = torch.linalg.matrix_exp(A)
    marginal = (E @ E.T)[:2, :2]  # [x, a] ~ N(0, E Eᵀ): p(x) is its x-marginal
    x = torch.randn(3, 2, dtype=D64)
    exact = _gaussian_log_prob(x, marginal)
    reps = 40
    means = {}
    with torch.no_grad():
        for k in (1, 8, 64):
            # one call: every repeated row draws its own K auxiliary samples
            draws = flow.log_prob(x.repeat(reps, 1), samples=k).reshape(reps, 3)
            mean, se = draws.mean(0), draws.std(0) / math.sqrt(reps)
            assert torch.all(mean < exact + SE * se), (k, mean, exact)
            means[k] = mean
    assert torch.all(means[1] < exact - 0.05)  # a clear gap for the ELBO here
    assert torch.all(means[1] < means[8]) and torch.all(means[8] < means[64] + 0.02)
    assert torch.all(exact - means[64] < 0.5 * (exact - means[1]))


def test_augmented_bound_is_tight_when_q_is_the_true_posterior():
    # A block-diagonal with A_aa = 0: p(x, a) = p(x) N(a; 0, 1), so q = N(0, 1) is exact.
    A = torch.zeros(3, 3, dtype=D64)
    A[:2, :2] = _matrix(2, seed=9)
    flow = _augmented(A)
    E = torch.linalg.matrix_exp(A[:2, :2])
    x = torch.randn(4, 2, dtype=D64)
    exact = _gaussian_log_prob(x, E @ E.T)
    assert torch.allclose(flow.log_prob(x), exact, atol=1e-8)


def test_augmented_flow_with_a_data_side_transform():
    # the tight case again, seen through x = 2 y + 1 (what the CLI's standardisation does)
    A = torch.zeros(3, 3, dtype=D64)
    A[:2, :2] = _matrix(2, seed=9)
    layer = pf.transforms.Affine(2, scale=torch.tensor([2.0, 2.0]), shift=torch.tensor([1.0, 1.0]))
    flow = pf.data.preprocess.wrap(_augmented(A), [layer.double()])
    assert isinstance(flow, AugmentedFlow) and flow.event_shape == (2,)
    E = torch.linalg.matrix_exp(A[:2, :2])
    x = torch.randn(4, 2, dtype=D64)
    exact = _gaussian_log_prob((x - 1) / 2, E @ E.T) - 2 * math.log(2)
    assert torch.allclose(flow.log_prob(x), exact, atol=1e-8)
    assert flow.sample(5).shape == (5, 2)


def test_augmented_flow_shapes_learned_q_and_sampling():
    torch.manual_seed(0)
    flow = pf.flows.CNF(2, augment=2, hidden=(8,), samples=3)
    assert isinstance(flow, AugmentedFlow) and flow.event_shape == (2,)
    assert flow.transform.event_shape == (4,) and flow.samples == 3
    x = torch.randn(5, 2)
    bound = flow.log_prob(x)
    assert bound.shape == (5,)
    bound.mean().backward()
    assert flow.q.loc.grad is not None  # the learned q(a) is trained through the bound
    assert flow.sample(7).shape == (7, 2)
    xs, lp = flow.sample_and_log_prob(4)
    assert xs.shape == (4, 2) and lp.shape == (4,)
    with pytest.raises(ValueError, match="samples"):
        flow.samples = 0
    conditional = pf.flows.CNF(2, context=3, augment=1, hidden=(8,))
    c = torch.randn(2, 3)
    assert conditional.sample(5, c).shape == (5, 2, 2)
    assert conditional.log_prob(torch.randn(2, 2), c).shape == (2,)


# -- preset, errors, copies -----------------------------------------------------------------------
def test_preset_shapes_context_and_rebuild():
    torch.manual_seed(0)
    flow = pf.flows.CNF(3, context=2, hidden=(8,), transforms=2)
    assert pf.flows.build("cnf", **flow.config["options"]).config == flow.config
    c = torch.randn(4, 2)
    x = torch.randn(4, 3)
    assert flow.log_prob(x, c).shape == (4,)
    assert flow.sample(5, c).shape == (5, 4, 3)
    assert not torch.allclose(flow.log_prob(x, c), flow.log_prob(x, c + 1))
    hutch = pf.flows.CNF(12, hidden=(8,))
    assert hutch.transform.trace == "hutchinson"


def test_bad_arguments_raise_clear_errors():
    field = TimeMLP(2, (8,))
    with pytest.raises(TypeError, match="nn.Module"):
        CNF(lambda t, z: z, 2)
    for kwargs, message in [
        ({"trace": "approximate"}, "trace"),
        ({"noise": "uniform"}, "noise"),
        ({"method": "rk45"}, "solver"),
        ({"t1": 0.0}, "t1"),
        ({"rtol": -1.0}, "rtol"),
        ({"kinetic": -0.1}, "kinetic"),
        ({"augment": -1}, "augment"),
    ]:
        with pytest.raises(ValueError, match=message):
            CNF(field, 2, **kwargs)
    with pytest.raises(ValueError, match="step_size"):
        CNF(field, 2, method="rk4")(torch.randn(2, 2))
    assert CNF(field, 2, method="rk4", options={"step_size": 0.25})(torch.randn(2, 2))[0].shape \
        == (2, 2)
    class Wrong(nn.Module):
        def forward(self, t, z):
            return z[:, :1]

    with pytest.raises(ValueError, match="shape of z"):
        CNF(Wrong(), 2)(torch.randn(2, 2))
    with pytest.raises(ValueError):
        CNF(field, 2)(torch.randn(2, 3))


def test_copies_and_state_dict_after_a_solve():
    cnf = CNF(TimeMLP(2, (8,)), 2, kinetic=0.1)
    cnf(torch.randn(3, 2))
    twin = copy.deepcopy(cnf)
    assert twin.nfe == 0 and float(twin.regularization()) == 0
    twin.load_state_dict(cnf.state_dict())
    z = torch.randn(3, 2)
    assert torch.allclose(twin(z)[0], cnf(z)[0])


def test_inference_mode():
    cnf = CNF(TimeMLP(2, (8,)), 2)
    x = torch.randn(3, 2)
    with torch.no_grad():
        expected = cnf.inverse(x)[1]
    with torch.inference_mode():
        assert torch.allclose(cnf.inverse(x)[1], expected)


def test_empty_batch():
    cnf = CNF(TimeMLP(2, (8,)), 2)
    x, ladj = cnf(torch.zeros(0, 2))
    assert x.shape == (0, 2) and ladj.shape == (0,)


# -- learning ---------------------------------------------------------------------------------
def _ring(n, generator):
    theta = 2 * math.pi * torch.rand(n, generator=generator)
    r = 2 + 0.1 * torch.randn(n, generator=generator)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)


@pytest.mark.slow
def test_preset_learns_a_ring_in_150_steps():
    generator = torch.Generator().manual_seed(0)
    train, test = _ring(2000, generator), _ring(1000, generator)
    torch.manual_seed(0)
    flow = pf.flows.CNF(features=2)
    with torch.no_grad():
        before = -flow.log_prob(test).mean()
    history = pf.fit(flow, train, steps=150, progress=False, handle_signals=False)  # lr 1e-3
    with torch.no_grad():
        after = -flow.log_prob(test).mean()
    assert history.extra["nfe_forward_mean"] > 0
    # N(0, I) scores the ring at ≈ 3.84 nats; the ring's own entropy is ≈ 1.65
    assert before > 3.5 and after < 2.3, (float(before), float(after))


def test_preset_nll_falls_quickly():
    generator = torch.Generator().manual_seed(1)
    train = _ring(512, generator)
    torch.manual_seed(0)
    flow = pf.flows.CNF(2, hidden=(32, 32), rtol=1e-4, atol=1e-4)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        before = float(-flow.log_prob(train).mean())
    for _ in range(25):
        loss = -flow.log_prob(train[torch.randint(0, 512, (128,), generator=generator)]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(-flow.log_prob(train).mean())
    assert after < before - 0.3, (before, after)


# -- training -------------------------------------------------------------------------------
def test_fit_adds_the_rnode_penalty_and_logs_nfe():
    from pushforward.training.fit import function_evaluations

    train = _ring(256, torch.Generator().manual_seed(2))
    energies = {}
    for weight in (0.0, 5.0):
        torch.manual_seed(0)
        flow = pf.flows.CNF(2, hidden=(16,), kinetic=weight, rtol=1e-4, atol=1e-4)
        history = pf.fit(flow, train, steps=20, batch_size=64, lr=1e-2, progress=False,
                         handle_signals=False)
        assert history.extra["nfe_forward_mean"] > 0 and history.extra["nfe_steps"] == 20
        assert history.extra["nfe_backward"] == 0  # direct backprop
        probe = CNF(flow.transform.field, 2, kinetic=1.0, rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            probe.inverse(train)
        energies[weight] = float(probe.kinetic_energy().mean())
        assert function_evaluations(flow) == (flow.transform.nfe, 0)
    # the penalised run learned a field with clearly less kinetic energy
    assert energies[5.0] < 0.5 * energies[0.0], energies


@pytest.mark.parametrize("options", [{}, {"augment": 1, "samples": 2}])
def test_preset_save_load_round_trip(tmp_path, options):
    torch.manual_seed(0)
    flow = pf.flows.CNF(2, hidden=(8,), **options)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    pf.save(flow, tmp_path)
    loaded = pf.load(tmp_path)
    assert type(loaded) is type(flow) and loaded.config == flow.config
    x = torch.randn(4, 2)
    torch.manual_seed(1)
    expected = flow.log_prob(x)
    torch.manual_seed(1)
    assert torch.allclose(loaded.log_prob(x), expected, atol=1e-6)
