"""``flow.distribution()`` behaves like any ``torch.distributions.Distribution``.

``MultivariateNormal`` with the same batch and event shape is the reference for every shape;
an affine flow is a Gaussian, so its log-density is also compared with the analytic one.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

import pushforward as pf
from pushforward.transforms import Affine, Chain, LULinear, Permutation

D = 3
BATCH = 4


@pytest.fixture
def float64_default():
    """Default dtype float64 for one test (restored afterwards)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _gaussian_flow() -> tuple[pf.Flow, MultivariateNormal]:
    """``x = W z + b`` through a chain of affine layers, and the Gaussian ``N(b', W Wᵀ)``."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.eye(D) + 0.5 * torch.randn(D, D, generator=generator)
    scale = torch.tensor([0.5, -2.0, 1.5])
    shift = torch.tensor([1.0, -1.0, 0.25])
    transform = Chain([Affine(D, scale=scale, shift=shift), LULinear(D, matrix=matrix),
                       Permutation([2, 0, 1])])
    flow = pf.Flow(transform, pf.StandardNormal(D))
    with torch.no_grad():
        w = transform(torch.eye(D))[0] - transform(torch.zeros(1, D))[0]  # rows: W e_i
        mean = transform(torch.zeros(1, D))[0][0]
    w = w.T
    return flow, MultivariateNormal(mean, covariance_matrix=w @ w.T)


def _conditional_flow() -> pf.Flow:
    torch.manual_seed(0)
    return pf.flows.MAF(D, 2, transforms=2, hidden=(8, 8))


def test_affine_chain_log_prob_is_the_analytic_gaussian(float64_default):
    flow, reference = _gaussian_flow()
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    x = reference.sample((50,))
    expected = reference.log_prob(x)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-10, rtol=1e-10)
    assert torch.allclose(flow.distribution().log_prob(x), expected, atol=1e-10, rtol=1e-10)
    samples = flow.sample(20_000)
    assert torch.allclose(samples.mean(0), reference.mean, atol=0.1)


def _pair(context: bool) -> tuple[torch.distributions.Distribution, MultivariateNormal]:
    """The flow's distribution and a Gaussian reference with the same batch and event shape."""
    if not context:
        flow, reference = _gaussian_flow()
        return flow.distribution(), reference
    ctx = torch.randn(BATCH, 2)
    reference = MultivariateNormal(torch.zeros(BATCH, D), torch.eye(D).expand(BATCH, D, D))
    return _conditional_flow().distribution(ctx), reference


@pytest.mark.parametrize("context", [False, True], ids=["unconditional", "context"])
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)], ids=str)
def test_sample_and_log_prob_shapes_match_multivariate_normal(context, sample_shape):
    d, reference = _pair(context)
    assert d.batch_shape == reference.batch_shape
    assert d.event_shape == reference.event_shape
    for method in ("sample", "rsample"):
        x = getattr(d, method)(sample_shape)
        ref = getattr(reference, method)(sample_shape)
        assert x.shape == ref.shape, method
        assert d.log_prob(x).shape == reference.log_prob(ref).shape, method
        assert bool(torch.isfinite(d.log_prob(x)).all())
    # log_prob(sample()) with the empty sample shape: the idiom of the issue.
    assert d.log_prob(d.sample()).shape == reference.log_prob(reference.sample()).shape


@pytest.mark.parametrize("context", [False, True], ids=["unconditional", "context"])
def test_expand_matches_multivariate_normal(context):
    d, reference = _pair(context)
    shape = (2, *reference.batch_shape)
    e, ref = d.expand(shape), reference.expand(shape)
    assert e.batch_shape == ref.batch_shape and e.event_shape == ref.event_shape
    for sample_shape in ((), (3,)):
        x = e.sample(sample_shape)
        assert x.shape == ref.sample(sample_shape).shape
        assert e.log_prob(x).shape == ref.log_prob(x).shape
    # A value without batch dimensions broadcasts against the batch shape.
    value = torch.zeros(D)
    assert e.log_prob(value).shape == ref.log_prob(value).shape
    if not context:
        # Expanded copies are the same distribution.
        assert torch.allclose(e.log_prob(value), d.log_prob(value).expand(shape))


@pytest.mark.parametrize("context", [False, True], ids=["unconditional", "context"])
def test_rsample_is_reparametrised(context):
    d, _ = _pair(context)
    assert d.has_rsample
    x = d.rsample((4,))
    x.sum().backward()
    grads = [p.grad for p in d.flow.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert d.sample((4,)).grad_fn is None


def test_context_log_prob_matches_the_flow():
    flow = _conditional_flow()
    ctx = torch.randn(BATCH, 2)
    d = flow.distribution(ctx)
    x = d.sample((3,))
    expected = torch.stack([flow.log_prob(x[i], ctx) for i in range(3)])
    assert torch.allclose(d.log_prob(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["mean", "mode", "variance", "stddev"])
def test_moments_raise_not_implemented_with_a_reason(name):
    d, _ = _pair(False)
    with pytest.raises(NotImplementedError, match="no closed-form") as info:
        getattr(d, name)
    assert "sample" in str(info.value) or "log_prob" in str(info.value)


@pytest.mark.parametrize("name", ["entropy", "cdf", "icdf", "enumerate_support", "perplexity"])
def test_methods_without_closed_form_raise_not_implemented(name):
    d, _ = _pair(False)
    args = (torch.zeros(D),) if name in {"cdf", "icdf"} else ()
    with pytest.raises(NotImplementedError, match="sample") as info:
        getattr(d, name)(*args)
    assert "FlowDistribution" in str(info.value)
