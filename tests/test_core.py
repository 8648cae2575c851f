"""The change-of-variables core: Flow against analytic Gaussians, shapes, distribution view."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.transforms import ActNorm, Affine, Chain, LULinear, Reverse, Sigmoid


def _linear_chain(d, seed):
    torch.manual_seed(seed)
    chain = Chain([Affine(d, scale=torch.rand(d) + 0.5, shift=torch.randn(d)), LULinear(d),
                   Reverse(d), LULinear(d), Affine(d, shift=torch.randn(d))]).double()
    with torch.no_grad():
        for p in chain.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return chain


def _affine_map(t, d):
    """Read ``x = A z + b`` off a linear transform by probing."""
    b = t(torch.zeros(1, d, dtype=torch.float64))[0][0]
    eye = torch.eye(d, dtype=torch.float64)
    a = torch.stack([t(eye[i : i + 1])[0][0] - b for i in range(d)], 1)
    return a, b


@pytest.mark.parametrize("seed", range(3))
def test_log_prob_matches_analytic_gaussian(seed):
    d = 4
    chain = _linear_chain(d, seed)
    flow = pf.Flow(chain, pf.StandardNormal(d)).double()
    a, b = _affine_map(chain, d)
    truth = torch.distributions.MultivariateNormal(b, a @ a.T)
    x = truth.sample((64,))
    torch.testing.assert_close(flow.log_prob(x), truth.log_prob(x), atol=1e-9, rtol=0)
    torch.testing.assert_close(flow.transform.inv.inverse(flow.transform.inv(x)[0])[0], x)


def test_sample_shapes_and_sample_and_log_prob_agree():
    flow = pf.Flow(_linear_chain(3, 0), pf.StandardNormal(3)).double()
    assert flow.sample(7).shape == (7, 3)
    x, log_p = flow.sample_and_log_prob(11)
    assert x.shape == (11, 3) and log_p.shape == (11,)
    torch.testing.assert_close(log_p, flow.log_prob(x), atol=1e-10, rtol=0)


def test_sample_draws_as_sample_and_log_prob_without_the_base_density(monkeypatch):
    flow = pf.Flow(_linear_chain(3, 0), pf.StandardNormal(3)).double()
    torch.manual_seed(4)
    x_joint, _ = flow.sample_and_log_prob(6)
    monkeypatch.setattr(flow.base, "log_prob", lambda *a, **k: pytest.fail("log p_0 evaluated"))
    torch.manual_seed(4)
    assert torch.equal(flow.sample(6), x_joint)
    torch.manual_seed(4)
    assert torch.equal(flow.rsample((2, 3)).reshape(6, 3), x_joint)


def test_distribution_view():
    flow = pf.Flow(_linear_chain(2, 1), pf.StandardNormal(2)).double()
    dist = flow.distribution()
    assert isinstance(dist, torch.distributions.Distribution)
    assert dist.event_shape == (2,) and dist.batch_shape == ()
    x = dist.sample((5, 3))
    assert x.shape == (5, 3, 2)
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x.reshape(-1, 2)).reshape(5, 3))
    y = dist.rsample((4,))
    assert y.requires_grad


class _Shift(pf.Transform):
    """x = z + W c: a minimal conditional transform for context plumbing."""

    def __init__(self, d, c):
        super().__init__(d, context_features=c)
        self.weight = torch.nn.Parameter(torch.randn(d, c))

    def _forward(self, z, context):
        return z + context @ self.weight.T, z.new_zeros(z.shape[0])

    def _inverse(self, x, context):
        return x - context @ self.weight.T, x.new_zeros(x.shape[0])


def test_conditional_sampling_shapes_and_density():
    flow = pf.Flow(Chain([_Shift(2, 3), Affine(2)]), pf.StandardNormal(2))
    context = torch.randn(4, 3)
    x = flow.sample(5, context)
    assert x.shape == (5, 4, 2)
    x, log_p = flow.sample_and_log_prob(6, context)
    assert x.shape == (6, 4, 2) and log_p.shape == (6, 4)
    torch.testing.assert_close(
        log_p.reshape(-1), flow.log_prob(x.reshape(-1, 2), context.repeat(6, 1)), atol=1e-5,
        rtol=0,
    )
    dist = flow.distribution(context)
    assert dist.batch_shape == (4,) and dist.sample((2,)).shape == (2, 4, 2)
    assert dist.log_prob(dist.sample((3,))).shape == (3, 4)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch size"):
        flow.log_prob(torch.randn(4, 2), torch.randn(3, 3))


def test_embedding_runs_once_per_call():
    embedding = torch.nn.Linear(5, 3)
    flow = pf.Flow(_Shift(2, 3), pf.StandardNormal(2), embedding=embedding, context_features=5)
    context = torch.randn(4, 5)
    assert flow.log_prob(torch.randn(4, 2), context).shape == (4,)
    assert flow.sample(3, context).shape == (3, 4, 2)


def test_unconditional_flow_refuses_a_context():
    flow = pf.Flow(Affine(2), pf.StandardNormal(2))
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(torch.randn(3, 2), torch.randn(3, 1))


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(3, 5), r"shape \(3, 5\), expected \(batch, 4\)"),
        (torch.randn(4), "rank 1"),
        (torch.tensor([[0.0, float("nan"), 0.0, 0.0]]), "NaN"),
        (torch.tensor([[0.0, float("inf"), 0.0, 0.0]]), "NaN or infinite"),
    ],
)
def test_bad_input_gets_a_clear_error(x, message):
    flow = pf.Flow(_linear_chain(4, 0).float(), pf.StandardNormal(4))
    with pytest.raises(ValueError, match=message):
        flow.log_prob(x)
    with pytest.raises(ValueError, match=message):
        flow.transform.inverse(x)


def test_validation_switch():
    t = Affine(2)
    with pf.validation(False):
        x, _ = t(torch.tensor([[float("nan"), 0.0]]))
    assert torch.isnan(x).any()
    assert pf.is_validating()
    with pytest.raises(TypeError):
        t(torch.zeros(2, 2, dtype=torch.long))


def test_float32_and_float64_and_temperature():
    for dtype in (torch.float32, torch.float64):
        flow = pf.Flow(Chain([Affine(3), LULinear(3)]), pf.StandardNormal(3)).to(dtype)
        x = flow.sample(4)
        assert x.dtype == dtype and flow.log_prob(x).dtype == dtype
    cold = flow.sample(2000, temperature=0.5)
    assert cold.std() < flow.sample(2000).std()


def test_actnorm_initialises_once_and_persists():
    t = ActNorm(3)
    data = torch.randn(256, 3) * torch.tensor([2.0, 0.5, 3.0]) + 4
    z, _ = t.inverse(data)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    state = t.state_dict()
    assert bool(state["initialized"])
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    z2, _ = fresh.inverse(data * 10)  # a different batch must not re-initialise it
    torch.testing.assert_close(z2, (data * 10 - state["loc"]) / state["log_scale"].exp())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_actnorm_ignores_a_first_batch_whose_moments_overflow(dtype):
    t = ActNorm(2).to(dtype)
    huge = torch.tensor([[1.0, 2.0], [torch.finfo(dtype).max / 4, 3.0]], dtype=dtype)
    t.inverse(huge)  # finite values whose squares overflow the dtype
    assert not bool(t.initialized)
    assert torch.isfinite(t.loc).all() and torch.isfinite(t.log_scale).all()
    data = torch.randn(64, 2, dtype=dtype) * 3 + 1
    z, _ = t.inverse(data)  # the first batch with finite moments initialises it
    assert bool(t.initialized)
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=dtype), atol=1e-5, rtol=0)


def test_check_transform_rejects_a_wrong_ladj():
    class Wrong(Affine):
        def _forward(self, z, context):
            x, ladj = super()._forward(z, context)
            return x, ladj + 0.1

        def _inverse(self, x, context):
            z, ladj = super()._inverse(x, context)
            return z, ladj - 0.1

    with pytest.raises(pf.diagnostics.TransformCheckError, match="autograd"):
        pf.diagnostics.check_transform(Wrong(3, scale=2.0), torch.randn(4, 3))


def test_check_transform_rejects_a_context_ignoring_layer():
    class Deaf(_Shift):
        def _forward(self, z, context):
            return z, z.new_zeros(z.shape[0])

        def _inverse(self, x, context):
            return x, x.new_zeros(x.shape[0])

    with pytest.raises(pf.diagnostics.TransformCheckError, match="context"):
        pf.diagnostics.check_transform(Deaf(2, 2), torch.randn(3, 2), torch.randn(3, 2))


def test_sigmoid_refuses_points_outside_its_box():
    with pytest.raises(pf.InputOutsideDomain, match="outside"):
        Sigmoid().inverse(torch.tensor([[0.5, 1.5]]))
    assert math.isfinite(float(Sigmoid().inverse(torch.tensor([[0.0, 1.0]]))[1][0]))


def test_a_transform_overriding_the_public_methods_inverts_through_inv():
    class Scale(pf.Transform):
        def __init__(self):
            super().__init__(2)
            self.s = torch.nn.Parameter(torch.tensor([2.0, 3.0]))

        def forward(self, z, context=None):
            return z * self.s, self.s.log().sum().expand(z.shape[0])

        def inverse(self, x, context=None):
            return x / self.s, -self.s.log().sum().expand(x.shape[0])

    t = Scale()
    x = torch.randn(4, 2)
    pf.diagnostics.check_transform(t.inv, x)
    z, ladj = t.inv(x)
    torch.testing.assert_close(z, x / t.s.detach())
    torch.testing.assert_close(ladj, torch.full((4,), -math.log(6.0)))
