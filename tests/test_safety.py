"""The numerical-safety policy (README "More families" → numerical safety), one test per rule."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.transforms.maps import AffineMap
from pushforward.transforms.splines import RationalQuadraticMap


def test_affine_log_scale_is_soft_clamped_so_nothing_overflows():
    amap = AffineMap()  # default bound 3
    assert amap.bound == 3.0
    raw = torch.tensor([[1e4, 0.0], [-1e4, 0.0], [float("1e38"), 1.0]])
    z = torch.tensor([1.0, 2.0, -3.0])
    x, ladj = amap.forward(z, raw)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert float(ladj.abs().max()) <= 3.0
    back, ladj_inv = amap.inverse(x, raw)
    assert torch.allclose(back, z, atol=1e-5) and torch.allclose(ladj_inv, -ladj)


def test_affine_clamp_can_be_disabled_for_experiments_and_is_validated():
    assert AffineMap(None).bound is None and AffineMap(float("inf")).bound is None
    x, ladj = AffineMap(None).forward(torch.ones(1), torch.tensor([[100.0, 0.0]]))
    assert float(ladj) == 100.0  # raw log-scale: exp(100) overflows float32
    assert not torch.isfinite(x).all()
    with pytest.raises(ValueError, match="bound"):
        AffineMap(0.0)
    with pytest.raises(ValueError, match="bound"):
        AffineMap(-1.0)


def test_coupling_and_maf_stay_finite_under_extreme_conditioner_weights():
    torch.manual_seed(0)
    for flow in (pf.flows.RealNVP(4, transforms=2, hidden=[16]),
                 pf.flows.MAF(4, transforms=2, hidden=[16])):
        with torch.no_grad():
            for p in flow.parameters():
                p.normal_(0.0, 50.0)  # conditioner outputs of order 1e4
        log_p = flow.log_prob(torch.randn(64, 4))
        assert torch.isfinite(log_p).all()
        assert torch.isfinite(flow.sample(16)).all()


def test_spline_tails_are_the_identity_and_accept_out_of_bound_inputs():
    spline = RationalQuadraticMap(bins=6, bound=3.0)
    torch.manual_seed(1)
    params = 2 * torch.randn(5, spline.params, dtype=torch.float64)
    outside = torch.tensor([-1e6, -3.5, 3.0000001, 50.0, 1e6], dtype=torch.float64)
    for direction in (spline.forward, spline.inverse):
        y, log_d = direction(outside, params)
        assert torch.equal(y, outside) and torch.equal(log_d, torch.zeros_like(outside))
    inside = torch.tensor([-2.9, -1.0, 0.0, 1.5, 2.99], dtype=torch.float64)
    y, _ = spline.forward(inside, params)
    assert bool(((y >= -3) & (y <= 3)).all())  # the interval maps onto itself


def test_nan_guards_reject_bad_input_and_skip_bad_steps():
    flow = pf.flows.MAF(2, transforms=1, hidden=[8])
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="NaN"):
        pf.transforms.Sylvester(2)(torch.tensor([[float("nan"), 0.0]]))


def test_numerical_inverses_keep_determinants_away_from_zero():
    # Sylvester: 1 + h' r_ii r̃_ii >= 1e-3; NAF: slopes a_k >= 1e-3; residual: Lip(g) <= coeff.
    t = pf.transforms.Sylvester(2).double()
    with torch.no_grad():
        t.diag_raw.fill_(-1e3)
    with torch.no_grad():
        _, ladj = t(torch.zeros(3, 2, dtype=torch.float64))
    assert torch.isfinite(ladj).all() and float(ladj.min()) >= 2 * math.log(1e-3) - 1e-9
    naf = pf.transforms.DeepSigmoidalMap(3)
    params = torch.full((4, 9), -1e3, dtype=torch.float64)
    z, log_d = naf.inverse(torch.linspace(-5, 5, 4, dtype=torch.float64), params)
    assert torch.isfinite(z).all() and torch.isfinite(log_d).all()
