"""Uniform and variational dequantisation bounds, checked against exact discrete probabilities."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.training.dequantization import VariationalDequantization, dequantized_log_prob

LEVELS = 4


def _model():
    """A continuous density on [0, 1] (a perturbed MAF squashed by a sigmoid), float64."""
    torch.manual_seed(0)
    maf = pf.flows.MAF(1, transforms=2, hidden=[8], identity_init=True)
    flow = pf.transforms.bounded(maf, 0.0, 1.0).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.25 * torch.randn_like(p))
    return flow


def _exact_log_prob(flow, k):
    """``log ∫_{k/K}^{(k+1)/K} p(y) dy`` by the midpoint rule (5 000 nodes)."""
    n = 5000
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    out = []
    for level in k.flatten().tolist():
        y = ((level + t) / LEVELS).unsqueeze(-1)
        with torch.no_grad():
            out.append(torch.logsumexp(flow.log_prob(y), 0) - math.log(n) - math.log(LEVELS))
    return torch.stack(out)


def _dequantizer():
    torch.manual_seed(1)
    maf = pf.flows.MAF(1, context=1, transforms=2, hidden=[8], identity_init=True)
    q = VariationalDequantization(1, LEVELS, flow=maf).double()
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return q


@pytest.mark.parametrize("variational", [False, True])
def test_bounds_are_below_the_exact_probability(variational):
    flow = _model()
    q = _dequantizer() if variational else None
    k = torch.arange(LEVELS).reshape(-1, 1)
    exact = _exact_log_prob(flow, k)
    torch.manual_seed(2)
    with torch.no_grad():
        draws = torch.stack([dequantized_log_prob(flow, k, LEVELS, q) for _ in range(200)])
    mean, error = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert bool((mean <= exact + 4 * error + 1e-9).all())  # ELBO ≤ log P(k) (Jensen)
    assert bool((mean >= exact - 3).all())  # and not vacuous


def test_importance_weighting_closes_the_gap_under_uniform_noise():
    flow = _model()
    k = torch.arange(LEVELS).reshape(-1, 1)
    torch.manual_seed(3)
    with torch.no_grad():
        tight = dequantized_log_prob(flow, k, LEVELS, samples=20000)
    assert torch.allclose(tight, _exact_log_prob(flow, k), atol=2e-2)


def test_variational_noise_density_is_normalised_on_the_unit_interval():
    q = _dequantizer()
    k = torch.arange(LEVELS).reshape(-1, 1)
    context = 2 * k.double() / (LEVELS - 1) - 1
    u, log_q = q.sample(k)
    with torch.no_grad():
        assert torch.allclose(log_q, q.flow.log_prob(u, context), atol=1e-10)
        n = 5000
        t = ((torch.arange(n, dtype=torch.float64) + 0.5) / n).unsqueeze(-1)
        for level in range(LEVELS):
            mass = q.flow.log_prob(t, context[level : level + 1].expand(n, 1)).exp().mean()
            assert abs(float(mass) - 1) < 1e-3


def test_variational_noise_lies_in_the_unit_cube_and_learns():
    torch.manual_seed(0)
    flow = pf.transforms.bounded(pf.flows.MAF(4, transforms=1, hidden=[16]), 0.0, 1.0)
    q = VariationalDequantization((1, 2, 2), LEVELS, transforms=2, hidden=[16])
    k = torch.randint(0, LEVELS, (64, 1, 2, 2))
    u, log_q = q.sample(k)
    assert u.shape == k.shape and log_q.shape == (64,)
    assert bool(((u > 0) & (u < 1)).all()) and torch.isfinite(log_q).all()
    reshape = pf.transforms.Reshape((1, 2, 2), (4,))
    model = pf.data.preprocess.wrap(flow, [reshape])
    opt = torch.optim.Adam([*model.parameters(), *q.parameters()], lr=1e-2)
    start = None
    for _ in range(30):
        loss = -dequantized_log_prob(model, k, LEVELS, q).mean()
        start = float(loss.detach()) if start is None else start
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in q.parameters())
        opt.step()
    assert float(loss) < start


def test_bad_discrete_input_is_refused():
    flow = _model()
    with pytest.raises(ValueError, match="integer"):
        dequantized_log_prob(flow, torch.tensor([[0.5]]), LEVELS)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        dequantized_log_prob(flow, torch.tensor([[4]]), LEVELS)
    with pytest.raises(ValueError, match="levels"):
        VariationalDequantization(3, levels=1)
    with pytest.raises(ValueError, match="samples"):
        dequantized_log_prob(flow, torch.tensor([[1]]), LEVELS, samples=0)
