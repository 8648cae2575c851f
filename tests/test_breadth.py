"""Breadth families: Sylvester, residual flows, NAF, BatchNorm — beyond the contract kit."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.transforms import BatchNorm, NeuralAutoregressive, ResidualBlock, Sylvester

PRESETS = [
    ("sylvester", {"transforms": 3}),
    ("sylvester", {"transforms": 2, "variant": "householder", "columns": 2}),
    ("sylvester", {"transforms": 2, "variant": "triangular"}),
    ("residualflow", {"transforms": 2, "hidden": [16, 16], "logdet": "exact"}),
    ("naf", {"transforms": 2, "components": 4, "hidden": [16, 16]}),
]


# Brute-force change of variables, shapes, gradients and save/load of these presets: the preset
# kit, tests/test_preset_kit.py.


@pytest.mark.parametrize(("name", "options"), PRESETS[::2], ids=lambda v: str(v))
def test_preset_learns_a_toy(name, options):
    torch.manual_seed(0)
    data = torch.randn(512, 2) * torch.tensor([2.0, 0.5]) + torch.tensor([1.0, -1.0])
    flow = pf.flows.build(name, features=2, **options)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    with torch.no_grad():
        start = float(-flow.log_prob(data).mean())
    for _ in range(60):
        opt.zero_grad()
        loss = -flow.log_prob(data).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = float(-flow.log_prob(data).mean())
    assert math.isfinite(end) and end < start - 0.3


def test_sylvester_refuses_bad_configuration():
    with pytest.raises(ValueError, match="variant"):
        Sylvester(3, variant="diagonal")
    with pytest.raises(ValueError, match="columns"):
        Sylvester(3, columns=4)
    with pytest.raises(ValueError, match="triangular"):
        Sylvester(3, columns=2, variant="triangular")


def test_sylvester_diagonal_constraint_holds_for_extreme_parameters():
    t = Sylvester(3).double()
    with torch.no_grad():
        t.diag_raw.fill_(-50.0)  # r_ii r̃_ii → −1⁺: nearly singular but still invertible
        t.diag_tilde.fill_(10.0)
    r, r_tilde, _ = t._triangles(None)
    product = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
    assert bool((product >= -1 + 1e-3 - 1e-12).all())
    z = torch.zeros(2, 3, dtype=torch.float64)
    assert torch.isfinite(t(z)[1]).all()
    q = t.basis()
    assert torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_residual_lipschitz_bound_and_modes():
    t = ResidualBlock(4, hidden=(32, 32), coeff=0.9)
    with torch.no_grad():
        for layer in t.g.layers:
            layer.weight.mul_(10.0)
    for layer in t.g.layers:
        sigma = torch.linalg.matrix_norm(layer.normalized_weight().detach(), ord=2)
        assert float(sigma) <= 0.9 + 1e-5
    assert t.exact_ladj and ResidualBlock(40, hidden=(8,)).logdet == "roulette"
    assert not ResidualBlock(40, hidden=(8,)).exact_ladj
    with pytest.raises(ValueError, match="logdet"):
        ResidualBlock(3, logdet="magic")
    with pytest.raises(ValueError, match="coeff"):
        ResidualBlock(3, coeff=1.0)


def test_residual_power_iteration_is_deterministic_in_eval():
    t = ResidualBlock(3, hidden=(16,), spectral="power").double()
    t.train()
    x = torch.randn(6, 3, dtype=torch.float64)
    for _ in range(3):
        t.inverse(x)  # updates the power-iteration vectors
    t.eval()
    u = t.g.layers[0].u.clone()
    a, b = t.inverse(x)[0], t.inverse(x)[0]
    assert torch.equal(a, b) and torch.equal(u, t.g.layers[0].u)


@pytest.mark.parametrize("mode", ["roulette", "series"])
def test_residual_log_det_estimators_are_statistically_right(mode):
    torch.manual_seed(3)
    exact = ResidualBlock(3, hidden=(16,), logdet="exact").double()
    with torch.no_grad():
        for p in exact.parameters():
            p.add_(0.3 * torch.randn_like(p))
    estimator = ResidualBlock(3, hidden=(16,), logdet=mode, terms=2 if mode == "roulette" else 30)
    estimator = estimator.double()
    estimator.load_state_dict(exact.state_dict())
    x = torch.randn(1, 3, dtype=torch.float64)
    target = float(exact.inverse(x)[1].detach())
    with torch.no_grad():
        draws = torch.cat([estimator.inverse(x.expand(64, 3))[1] for _ in range(40)])
    mean, error = float(draws.mean()), float(draws.std()) / math.sqrt(draws.numel())
    # Roulette is unbiased; the 30-term series has negligible truncation bias here.
    assert abs(mean - target) < 5 * error + 1e-3


def test_naf_inverse_is_sequential_bisection_to_round_off():
    torch.manual_seed(0)
    t = NeuralAutoregressive(4, components=6, hidden=(32,)).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = 3 * torch.randn(50, 4, dtype=torch.float64)
    x, ladj = t(z)
    z_back, ladj_inv = t.inverse(x)
    assert torch.allclose(z_back, z, atol=1e-11, rtol=0)
    assert torch.allclose(ladj, -ladj_inv, atol=1e-10, rtol=0)
    assert not t.analytic_inverse


def test_naf_sampling_beyond_float32_resolution_is_a_value_error():
    # a context of 1e30 drives the conditioner's outputs past what float32 resolves: the root
    # of the sequential inverse cannot be bracketed, which is reported as bad input
    torch.manual_seed(0)
    flow = pf.flows.build("naf", features=1, context=2)
    torch.manual_seed(1)  # a context and a draw where float32 cannot resolve the root
    context = torch.randn(1, 2)
    context[0, 1] = 1e30
    with pytest.raises(ValueError, match="too large for this dtype"):
        flow.sample(1, context)
    from pushforward.transforms._roots import solve_increasing

    def bounded(u):  # increasing but not onto: never reaches 2
        return torch.sigmoid(u), torch.sigmoid(u) * (1 - torch.sigmoid(u))

    with pytest.raises(ValueError, match="could not bracket"):
        solve_increasing(bounded, torch.tensor([2.0]))


def test_naf_map_is_identity_at_zero_parameters():
    m = pf.transforms.DeepSigmoidalMap(5)
    x = torch.linspace(-30, 30, 41, dtype=torch.float64)
    z, log_d = m.inverse(x, torch.zeros(41, 15, dtype=torch.float64))
    assert torch.allclose(z, x, atol=1e-12)
    assert torch.allclose(log_d, torch.zeros_like(x), atol=1e-12)


def test_batchnorm_training_uses_batch_statistics_and_updates_running():
    layer = BatchNorm(3, momentum=0.5)
    x = torch.randn(256, 3) * torch.tensor([3.0, 0.5, 1.0]) + torch.tensor([1.0, -2.0, 0.0])
    z, ladj = layer.inverse(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(3), atol=1e-3)
    expected = -0.5 * torch.log(x.var(0, unbiased=False) + layer.eps).sum()
    assert torch.allclose(ladj, expected.expand(256), atol=1e-5)
    assert torch.allclose(layer.running_mean, 0.5 * x.mean(0), atol=1e-5)
    layer.eval()
    z_eval, _ = layer.inverse(x)
    x_back, _ = layer(z_eval)
    assert torch.allclose(x_back, x, atol=1e-4)
    state = layer.state_dict()
    assert "running_mean" in state and "running_var" in state
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, momentum=0.0)
