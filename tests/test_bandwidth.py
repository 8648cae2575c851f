"""The cross-validated smoothing scale of flow matching on the sphere (``bandwidth``) and its use
as the sphere's default (``FlowMatching(smoothing="auto")``)."""

import math

import pytest
import torch

import pushforward as pf
from pushforward.manifolds import GeodesicPath, Sphere
from pushforward.manifolds.bandwidth import (
    SCALES,
    cross_validated_scale,
    kernel_log_density,
    scale_log_likelihoods,
    seeded_permutation,
)
from pushforward.manifolds.neighbours import neighbour_distances
from pushforward.training.objectives import FlowMatching


def _points(batch, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return Sphere(3).project(torch.randn(batch, 3, generator=g, dtype=dtype))


def test_kernel_density_is_the_vmf_mixture_on_s2():
    centres, x = _points(5, 0), _points(7, 1)
    kappa = torch.tensor([0.5, 3.0, 10.0, 40.0, 200.0], dtype=torch.float64)
    # vMF on S²: C(κ) = κ / (4π sinh κ)
    direct = (kappa / (4 * math.pi * torch.sinh(kappa)) * torch.exp(kappa * (x @ centres.T)))
    expected = direct.mean(1).log()
    assert torch.allclose(kernel_log_density(centres, kappa, x), expected, rtol=1e-12, atol=0)
    # a flat kernel (κ → 0) is the uniform density 1/4π
    flat = kernel_log_density(centres, 1e-9, x)
    assert torch.allclose(flat, torch.full_like(flat, -math.log(4 * math.pi)), atol=1e-8)


def test_uniform_data_want_the_widest_and_repeated_sites_the_narrowest_kernels():
    uniform = _points(400, 2)
    scores = scale_log_likelihoods(uniform)
    assert cross_validated_scale(uniform) == max(SCALES)
    assert bool((scores.diff() > 0).all())  # wider is better all the way for a flat density
    sites = _points(20, 3)
    g = torch.Generator().manual_seed(4)
    jittered = Sphere(3).project(sites.repeat(10, 1)
                                 + 1e-5 * torch.randn(200, 3, generator=g, dtype=torch.float64))
    assert cross_validated_scale(jittered) == min(SCALES)


def test_scale_choice_is_rotation_invariant_and_leaves_the_global_generator_alone():
    x = torch.cat([_points(150, 5), Sphere(3).project(_points(150, 6) * 0.1
                                                      + torch.tensor([0.0, 0.0, 1.0]))])
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(7),
                                       dtype=torch.float64))
    state = torch.get_rng_state()
    scores = scale_log_likelihoods(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(scale_log_likelihoods(x @ q.T), scores, rtol=0, atol=1e-8)
    assert scores.shape == (len(SCALES),) and bool(torch.isfinite(scores).all())
    assert GeodesicPath(3).smoothing_scale(x) == SCALES[int(scores.argmax())]


def test_held_out_scores_equal_the_kernel_density_of_the_other_folds():
    x = _points(2200, 9)  # each fold holds out 1,100 points: chunks of 1,024 and 76
    order, scales = seeded_permutation(2200), (0.3, 1.0)
    assert torch.equal(order.sort().values, torch.arange(2200))
    state = torch.get_rng_state()
    assert torch.equal(seeded_permutation(2200), order)
    assert torch.equal(torch.get_rng_state(), state)
    expected = torch.zeros(2, dtype=torch.float64)
    for held in order.chunk(2):
        kept = torch.ones(2200, dtype=torch.bool)
        kept[held] = False
        width = neighbour_distances(x[kept], 2)[1].clamp(min=1e-3)
        for i, scale in enumerate(scales):
            expected[i] += kernel_log_density(x[kept], 1 / (scale * width) ** 2, x[held]).sum()
    assert torch.allclose(scale_log_likelihoods(x, scales, folds=2), expected / 2200,
                          rtol=0, atol=1e-12)


def test_small_and_bad_inputs():
    assert cross_validated_scale(_points(1, 8)) in SCALES  # one point: nothing to smooth
    assert cross_validated_scale(_points(3, 8)) in SCALES  # leave-one-out folds
    with pytest.raises(ValueError, match="N >= 2"):
        scale_log_likelihoods(_points(1, 8))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        GeodesicPath(3).smoothing_scale(torch.ones(5, 4))


def test_flow_matching_chooses_the_scale_once_from_the_training_set():
    flow = pf.flows.build("sphere-cnf", features=3, hidden=(8,))
    path = flow.transform.path
    assert path.smoothing == "auto"
    x = _points(300, 9).float()
    objective = FlowMatching()
    objective.prepare(flow, x)
    assert objective.scale == path.smoothing_scale(x) and objective.scale in SCALES
    torch.manual_seed(0)
    auto = objective.loss(flow, flow, x[:64], None)[0]
    fixed = FlowMatching(smoothing=objective.scale)
    fixed.prepare(flow, x)
    torch.manual_seed(0)
    assert torch.equal(auto, fixed.loss(flow, flow, x[:64], None)[0])
    assert fixed.scale is None
    # without the training tensor (a Dataset) the first batch decides
    lazy = FlowMatching(smoothing="auto")
    lazy.prepare(flow, None)
    lazy.loss(flow, flow, x[:64], None)
    assert lazy.scale == path.smoothing_scale(x[:64])
    with pytest.raises(ValueError, match="smoothing"):
        FlowMatching(smoothing="wide")
