"""Rational-quadratic splines: monotone, exactly invertible, C¹ linear tails, NaN-free."""

import pytest
import torch

from pushforward.transforms import RationalQuadraticMap, rational_quadratic_spline
from pushforward.transforms.maps import elementwise_map
from pushforward.transforms.splines import _bins

BOUND = 3.0


def _params(n, bins, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(n, bins, generator=g, dtype=torch.float64)
    h = scale * torch.randn(n, bins, generator=g, dtype=torch.float64)
    d = scale * torch.randn(n, bins - 1, generator=g, dtype=torch.float64)
    return w, h, d


def _spline(x, w, h, d, inverse=False, **kw):
    return rational_quadratic_spline(x, w, h, d, inverse=inverse, bound=BOUND, **kw)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_monotone_and_onto_the_interval(scale):
    n, bins = 2000, 7
    w, h, d = _params(1, bins, scale)
    x = torch.linspace(-BOUND - 1, BOUND + 1, n, dtype=torch.float64)
    y, ladj = _spline(x, w.expand(n, -1), h.expand(n, -1), d.expand(n, -1))
    assert bool((y[1:] > y[:-1]).all())
    assert torch.isfinite(ladj).all()
    ends, _ = _spline(torch.tensor([-BOUND, BOUND], dtype=torch.float64), w.expand(2, -1),
                      h.expand(2, -1), d.expand(2, -1))
    torch.testing.assert_close(ends, torch.tensor([-BOUND, BOUND], dtype=torch.float64),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_inverse_is_exact_in_float64(scale):
    n, bins = 500, 8
    w, h, d = _params(n, bins, scale, seed=1)
    x = (BOUND + 1.0) * (2 * torch.rand(n, dtype=torch.float64) - 1)
    y, ladj = _spline(x, w, h, d)
    x2, ladj_inv = _spline(y, w, h, d, inverse=True)
    assert (x2 - x).abs().max() < 1e-10
    assert (ladj + ladj_inv).abs().max() < 1e-10
    # and the other way round, starting from outputs
    y2, _ = _spline(x2, w, h, d)
    assert (y2 - y).abs().max() < 1e-10


def test_inverse_is_backward_stable_for_extreme_slopes():
    # Slopes down to ~1e-6: |x2 − x| is limited by round-off in y divided by the slope, so the
    # check is on the backward error |x2 − x|·slope, which must stay at round-off level.
    n, bins = 500, 8
    w, h, d = _params(n, bins, 3.0, seed=1)
    x = (BOUND + 1.0) * (2 * torch.rand(n, dtype=torch.float64) - 1)
    y, ladj = _spline(x, w, h, d)
    x2, ladj_inv = _spline(y, w, h, d, inverse=True)
    assert ((x2 - x).abs() * ladj.exp()).max() < 1e-13
    assert torch.isfinite(ladj_inv).all()


@pytest.mark.parametrize("inverse", [False, True])
def test_log_derivative_matches_autograd(inverse):
    n, bins = 300, 6
    w, h, d = _params(n, bins, 1.5, seed=2)
    x = ((BOUND + 1.0) * (2 * torch.rand(n, dtype=torch.float64) - 1)).requires_grad_()
    y, ladj = _spline(x, w, h, d, inverse=inverse)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ladj, grad.log(), atol=1e-10, rtol=1e-10)


def test_linear_tails_are_identity_and_c1():
    n, bins = 6, 5
    w, h, d = _params(n, bins, 2.0, seed=3)
    x = torch.tensor([-1e6, -50.0, -BOUND - 1e-9, BOUND + 1e-9, 7.0, 1e6], dtype=torch.float64)
    for inverse in (False, True):
        y, ladj = _spline(x, w, h, d, inverse=inverse)
        assert torch.equal(y, x)
        assert torch.equal(ladj, torch.zeros_like(ladj))
    # the derivative tends to 1 at both ends from inside: C¹ junction with the tails
    edge = torch.tensor([-BOUND + 1e-9, BOUND - 1e-9] * 3, dtype=torch.float64)
    _, ladj = _spline(edge, w, h, d)
    assert ladj.abs().max() < 1e-6


def test_no_nan_far_out_or_with_extreme_parameters():
    n, bins = 8, 8
    w, h, d = _params(n, bins, 40.0, seed=4)
    w, h, d = (t.requires_grad_() for t in (w, h, d))
    x = torch.tensor([-1e6, -1e3, -BOUND, -1.0, 0.0, 2.9999, BOUND, 1e6], dtype=torch.float64)
    x.requires_grad_()
    for inverse in (False, True):
        y, ladj = _spline(x, w, h, d, inverse=inverse)
        grads = torch.autograd.grad((y + ladj).sum(), (x, w, h, d))
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        assert all(torch.isfinite(g).all() for g in grads)
    # float32 as well
    y32, ladj32 = _spline(x.detach().float(), w.detach().float(), h.detach().float(),
                          d.detach().float())
    assert torch.isfinite(y32).all() and torch.isfinite(ladj32).all()


def test_zero_parameters_give_the_identity():
    x = torch.linspace(-5, 5, 11, dtype=torch.float64)
    zeros = torch.zeros(11, 4, dtype=torch.float64)
    y, ladj = _spline(x, zeros, zeros, zeros[:, :3])
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    assert ladj.abs().max() < 1e-12


def test_value_and_derivative_continuous_at_the_knots():
    bins = 6
    w, h, d = _params(1, bins, 2.0, seed=5)
    _, edges = _bins(w, 1e-3)
    inner = 2 * BOUND * edges[0, :-1] - BOUND
    eps = 1e-12
    probe = torch.cat([inner - eps, inner + eps])
    m = probe.numel()
    y, ladj = _spline(probe, w.expand(m, -1), h.expand(m, -1), d.expand(m, -1))
    left, right = y[: bins - 1], y[bins - 1 :]
    slope = ladj.exp()
    assert ((right - left).abs() <= 2 * eps * slope.max() + 1e-12).all()
    torch.testing.assert_close(ladj[: bins - 1], ladj[bins - 1 :], atol=1e-6, rtol=0)


def test_bad_shapes_and_options_raise():
    w, h, d = _params(3, 4)
    x = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="derivatives"):
        _spline(x, w, h, d[:, :2])
    with pytest.raises(ValueError, match="min_bin_width"):
        _spline(x, w, h, d, min_bin_width=0.3)
    with pytest.raises(ValueError, match="bound"):
        rational_quadratic_spline(x, w, h, d, bound=0.0)
    with pytest.raises(ValueError, match="min_derivative"):
        RationalQuadraticMap(min_derivative=1.5)
    with pytest.raises(TypeError, match="bins"):
        RationalQuadraticMap(bins=2.5)


def test_map_protocol_and_registry():
    m = elementwise_map("spline", bins=4, bound=2.0)
    assert isinstance(m, RationalQuadraticMap)
    assert m.params == 11 and m.bins == 4 and m.bound == 2.0
    assert RationalQuadraticMap().params == 23
    z = torch.randn(5, 3, dtype=torch.float64)
    params = torch.randn(5, 3, m.params, dtype=torch.float64)
    x, ladj = m.forward(z, params)
    z2, ladj_inv = m.inverse(x, params)
    assert x.shape == ladj.shape == z.shape
    torch.testing.assert_close(z2, z, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="11 parameters"):
        m.forward(z, params[..., :10])


def test_one_bin_is_the_identity_and_two_bins_invert():
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    w, h, d = _params(9, 1, 3.0)
    y, ladj = _spline(x, w, h, d)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    assert ladj.abs().max() < 1e-12
    w, h, d = _params(9, 2, 2.0, seed=9)
    y, ladj = _spline(x, w, h, d)
    x2, ladj_inv = _spline(y, w, h, d, inverse=True)
    torch.testing.assert_close(x2, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ladj_inv, -ladj, atol=1e-10, rtol=0)
