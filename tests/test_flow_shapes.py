"""Flow shapes and supports found by the sbi trial (issue 17), for every conditional preset.

- ``log_prob`` of a point outside a bounded support is ``−inf`` (validation on or off), while
  the transform's ``inverse`` still refuses it;
- the context is validated after the embedding, so raw contexts of any shape work, and every
  preset takes ``embedding=``;
- ``log_prob`` broadcasts ``x`` ``(*sample, batch, *event)`` against a context ``(batch, k)``
  (each entry equals the per-sample call);
- ``sample`` takes a sample shape as ``torch.distributions`` does (an int still works);
- ``ContextStandardization`` standardises a context from data.
"""

import math

import pytest
import torch
from torch import nn

import pushforward as pf

CONDITIONAL = [(name, options) for name, options in [
    ("maf", {"transforms": 2, "hidden": (8,)}),
    ("nsf", {"transforms": 2, "hidden": (8,)}),
    ("realnvp", {"transforms": 2, "hidden": (8,)}),
    ("cnf", {"hidden": (8,)}),
] if name in pf.flows.names()]


def _flow(name, options, context, **extra):
    torch.manual_seed(0)
    return pf.flows.build(name, features=2, context=context, **options, **extra).double()


# -- bounded support -----------------------------------------------------------------------------
@pytest.mark.parametrize("validating", [True, False])
def test_log_prob_is_minus_inf_outside_a_bounded_support(validating):
    flow = pf.transforms.bounded(_flow("maf", {"transforms": 1}, 0), [0.0, -1.0], [1.0, 2.0])
    x = torch.tensor([[0.5, 0.0], [1.5, 0.0], [0.5, -3.0], [-0.1, 9.0], [0.2, 1.9]],
                     dtype=torch.float64, requires_grad=True)
    with pf.validation(validating):
        log_p = flow.log_prob(x)
    assert torch.isfinite(log_p[[0, 4]]).all()
    assert log_p[1:4].tolist() == [-math.inf] * 3
    log_p[[0, 4]].sum().backward()  # the finite rows still have gradients, no NaN leaks
    assert torch.isfinite(x.grad).all() and x.grad[1:4].abs().sum() == 0
    # a sample batch with points inside and outside through the distribution view, too
    assert flow.distribution().log_prob(x.detach()[1:2]).item() == -math.inf
    with pytest.raises(ValueError, match="outside"):
        flow.transform.inverse(x.detach())


def test_log_prob_is_minus_inf_outside_the_unit_box_of_logit_preprocessing():
    flow = _flow("maf", {"transforms": 1}, 0).prepend([pf.transforms.LogitPreprocessing(2)])
    log_p = flow.log_prob(torch.tensor([[0.5, 0.5], [1.2, 0.5]], dtype=torch.float64))
    assert math.isfinite(log_p[0].item()) and log_p[1].item() == -math.inf


def test_unbounded_flows_keep_finite_log_prob_everywhere():
    flow = _flow("maf", {"transforms": 1}, 0)
    assert torch.isfinite(flow.log_prob(100 * torch.randn(10, 2, dtype=torch.float64))).all()


# -- embeddings ----------------------------------------------------------------------------------
class _SeriesNet(nn.Module):
    """(batch, 2, 5) time series -> (batch, 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.out = nn.Linear(12, 3)

    def forward(self, c):
        return self.out(self.conv(c).flatten(1))


@pytest.mark.parametrize(("name", "options"), CONDITIONAL)
def test_every_preset_takes_an_embedding_for_any_context_shape(name, options):
    flow = _flow(name, options, 3, embedding=_SeriesNet().double())
    c = torch.randn(4, 2, 5, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    log_p = flow.log_prob(x, c)
    assert log_p.shape == (4,) and torch.isfinite(log_p).all()
    assert flow.sample(6, c).shape == (6, 4, 2)
    log_p.sum().backward()
    assert flow.embedding.conv.weight.grad.abs().sum() > 0  # trained with the flow
    with pytest.raises(ValueError, match="embedding's output"):
        _flow(name, options, 5, embedding=_SeriesNet().double()).log_prob(x, c)
    with pytest.raises(ValueError, match="batch size"):
        flow.log_prob(x, c[:3])


def test_flow_checks_a_given_raw_context_shape_before_the_embedding():
    inner = _flow("maf", {"transforms": 1}, 3)
    flow = pf.Flow(inner.transform, inner.base, embedding=_SeriesNet().double(),
                   context_features=(2, 5))
    assert flow.log_prob(torch.randn(4, 2, dtype=torch.float64),
                         torch.randn(4, 2, 5, dtype=torch.float64)).shape == (4,)
    with pytest.raises(ValueError, match=r"expected \(batch, 2, 5\)"):
        flow.log_prob(torch.randn(4, 2, dtype=torch.float64),
                      torch.randn(4, 2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs a context"):
        flow.log_prob(torch.randn(4, 2, dtype=torch.float64))


def test_embedding_needs_a_conditional_preset():
    with pytest.raises(ValueError, match="conditional"):
        pf.flows.build("maf", features=2, embedding=nn.Identity())


# -- broadcasting and sample shapes --------------------------------------------------------------
@pytest.mark.parametrize(("name", "options"), CONDITIONAL)
def test_log_prob_broadcasts_sample_dimensions_against_the_context(name, options):
    flow = _flow(name, options, 3).eval()
    c = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    log_p = flow.log_prob(x, c)
    expected = torch.stack([flow.log_prob(x[i], c) for i in range(5)])
    assert log_p.shape == (5, 4)
    atol = 1e-3 if name == "cnf" else 1e-6  # an adaptive ODE solve depends on the batch
    assert torch.allclose(log_p, expected, atol=atol)
    # a single point per sample broadcast over the context batch: (S, 1, d) -> (S, B)
    one = flow.log_prob(x[:, :1], c)
    assert torch.allclose(one, torch.stack([flow.log_prob(x[i, :1].expand(4, 2), c)
                                            for i in range(5)]), atol=atol)
    with pytest.raises(ValueError, match="batch size"):
        flow.log_prob(torch.randn(5, 3, 2, dtype=torch.float64), c)


def test_unconditional_log_prob_takes_any_leading_shape():
    flow = _flow("maf", {"transforms": 1}, 0)
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64)
    assert torch.equal(flow.log_prob(x), flow.log_prob(x.reshape(-1, 2)).reshape(2, 3, 4))
    with pytest.raises(ValueError):
        flow.log_prob(torch.randn(3, 2, 5, dtype=torch.float64))  # wrong event: refused


@pytest.mark.parametrize(("name", "options"), CONDITIONAL[:2])
def test_sample_takes_a_shape(name, options):
    flow = _flow(name, options, 3)
    c = torch.randn(4, 3, dtype=torch.float64)
    assert flow.sample(7, c).shape == (7, 4, 2)
    assert flow.sample((2, 3), c).shape == (2, 3, 4, 2)
    assert flow.sample(torch.Size([5]), c).shape == (5, 4, 2)
    assert flow.sample((), c).shape == (4, 2)
    x, log_p = flow.sample_and_log_prob((2, 3), c)
    assert x.shape == (2, 3, 4, 2) and log_p.shape == (2, 3, 4)
    assert torch.allclose(log_p, flow.log_prob(x, c), atol=1e-5)
    u = _flow(name, options, 0)
    assert u.sample((2, 3)).shape == (2, 3, 2) and u.sample(()).shape == (2,)
    with pytest.raises(ValueError, match=">= 0"):
        u.sample((2, -1))
    with pytest.raises(TypeError, match="integer"):
        u.sample((2, 1.5))


# -- context standardiser ------------------------------------------------------------------------
def test_context_standardization_from_data():
    torch.manual_seed(0)
    c = torch.randn(500, 2, 5) * torch.arange(1.0, 11.0).reshape(2, 5) + 7.0
    c[:, 0, 0] = 3.0  # a constant entry: scale 1, no division by zero
    standardize = pf.ContextStandardization.from_data(c)
    y = standardize(c)
    assert y.shape == c.shape and torch.isfinite(y).all()
    assert torch.allclose(y.mean(0), torch.zeros(2, 5), atol=1e-5)
    std = y.std(0)
    std[0, 0] = 1.0
    assert torch.allclose(std, torch.ones(2, 5), atol=1e-5)
    one = pf.ContextStandardization.from_data(c, structured=True)
    assert one.loc.shape == () and one.scale.shape == ()
    restored = pf.ContextStandardization(torch.zeros(2, 5), torch.ones(2, 5))
    restored.load_state_dict(standardize.state_dict())
    assert torch.equal(restored(c), y)
    with pytest.raises(ValueError, match="positive"):
        pf.ContextStandardization(0.0, 0.0)
    with pytest.raises(ValueError, match="floating"):
        pf.ContextStandardization.from_data(torch.ones(3, 2, dtype=torch.long))
