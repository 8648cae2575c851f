"""Invertibility report, typicality test, anomaly scores and AUROC, on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons

import pushforward as pf
from pushforward.core import Transform
from pushforward.diagnostics import (
    anomaly_scores,
    auroc,
    invertibility_report,
    singular_value_extremes,
    typicality_test,
    typicality_test_from_nll,
)
from pushforward.training import fit
from pushforward.transforms import Affine, LULinear, Sigmoid


# -- invertibility ----------------------------------------------------------------------------
def _cancelling_chain(d: int, big: float = 1e5) -> pf.Flow:
    """``x = big·(z/big + 1) − big``: the identity on paper, cancellation in float32."""
    return pf.Flow(
        [Affine(d, scale=1 / big, shift=1.0), Affine(d, scale=big, shift=-big)],
        pf.StandardNormal(d),
    )


def test_well_conditioned_float32_flow_passes():
    d = 5
    flow = pf.Flow([Affine(d, scale=2.0, shift=0.5), LULinear(d), Affine(d, scale=0.7)],
                   pf.StandardNormal(d))
    report = invertibility_report(flow, torch.randn(300, d))
    assert report.ok, report.reason
    assert report.reason == ""
    assert report.reconstruction_error.shape == (300,)
    assert report.reconstruction_error.dtype == torch.float32
    assert float(report.relative_error.max()) < 1e-5
    assert float(report.condition.max()) < 10
    assert "OK" in str(report) and "NOT OK" not in str(report)


def test_ill_conditioned_float32_flow_is_flagged_and_float64_copy_explains_it():
    d = 5
    x = torch.randn(300, d)
    report = invertibility_report(_cancelling_chain(d), x)
    assert not report.ok
    assert "round-trip" in report.reason and "rounding in float32" in report.reason
    # Most of float32's 7 digits are gone, the float64 copy keeps them.
    assert float(report.relative_error.max()) > 1e-3
    assert float(report.relative_error_64.max()) < 1e-9
    assert "NOT OK" in str(report)
    # The same flow in float64 is fine: the failure is a float32 one.
    report64 = invertibility_report(_cancelling_chain(d).double(), x.double())
    assert report64.ok, report64.reason


def test_ill_conditioned_coupling_like_chain_is_flagged():
    # Huge and tiny scales on different directions: a Jacobian with condition number 1e10.
    d = 4
    scale = torch.tensor([1e5, 1e-5, 1.0, 1.0])
    flow = pf.Flow([Affine(d, scale=scale), LULinear(d), Affine(d, scale=1 / scale)],
                   pf.StandardNormal(d))
    report = invertibility_report(flow, torch.randn(200, d))
    assert not report.ok
    assert float(report.condition.max()) > 1e8


def test_inexact_inverse_is_blamed_on_the_inverse_not_on_rounding():
    class Sloppy(Transform):
        """``x = 2z`` whose inverse is slightly wrong (``z = x/2.001``)."""

        def __init__(self) -> None:
            super().__init__(3)

        def _forward(self, z, context):
            return 2 * z, z.new_full((z.shape[0],), math.log(2) * 3)

        def _inverse(self, x, context):
            return x / 2.001, x.new_full((x.shape[0],), -math.log(2.001) * 3)

    report = invertibility_report(pf.Flow(Sloppy(), pf.StandardNormal(3)), torch.randn(50, 3))
    assert not report.ok
    assert "float64 copy fails too" in report.reason
    assert report.worst and len(report.worst) == 5


def test_power_iteration_matches_svdvals_of_the_full_jacobian():
    torch.manual_seed(1)
    d = 6
    t = pf.Chain([
        Affine(d, scale=torch.tensor([3.0, 0.2, 1.0, 1.5, 0.7, 1.0])),
        LULinear(d),
        Sigmoid(-2.0, 3.0, shape=d),
        Affine(d, scale=torch.linspace(0.5, 4.0, d)),
    ]).double()
    x = t(torch.randn(8, d, dtype=torch.float64))[0]
    hi, lo = singular_value_extremes(t, x, n_iter=500, tol=1e-13)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: t.inverse(v[None])[0][0], x[i])
        s = torch.linalg.svdvals(jac)
        assert hi[i].item() == pytest.approx(s[0].item(), rel=1e-6)
        assert lo[i].item() == pytest.approx(s[-1].item(), rel=1e-6)


def test_report_on_images_shapes_and_subset():
    shape = (2, 4, 4)
    flow = pf.Flow(Affine(shape, scale=2.0), pf.StandardNormal(shape))
    report = invertibility_report(flow, torch.randn(20, *shape), n_conditioning=7)
    assert report.ok, report.reason
    assert report.condition.shape == (7,) and report.conditioning_index.shape == (7,)
    assert report.sigma_max[0].item() == pytest.approx(0.5, rel=1e-6)


def test_invertibility_report_rejects_bad_input():
    flow = pf.Flow(Affine(2), pf.StandardNormal(2))
    with pytest.raises(TypeError, match="Flow or Transform"):
        invertibility_report(torch.nn.Linear(2, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="at least one sample"):
        invertibility_report(flow, torch.randn(0, 2))
    with pytest.raises(ValueError, match="shape"):
        invertibility_report(flow, torch.randn(3, 5))
    with pytest.raises(TypeError):
        invertibility_report(flow, torch.ones(3, 2, dtype=torch.long))


# -- typicality on an analytic Gaussian ---------------------------------------------------------
def _gaussian_flow(d: int) -> pf.Flow:
    return pf.Flow(Affine(d, scale=torch.linspace(0.5, 2.0, d), shift=1.0), pf.StandardNormal(d))


def test_typicality_gaussian_typical_mode_and_far_batches():
    d = 10
    flow = _gaussian_flow(d)
    with torch.no_grad():
        train = flow.sample(4000)
        batch = flow.sample(40)
    typical = typicality_test(flow, train, batch, alpha=0.01)
    assert not typical.is_ood and typical.p_value > 0.01
    mode = flow.transform(torch.zeros(40, d))[0].detach()  # every point at the mode
    at_mode = typicality_test(flow, train, mode)
    assert at_mode.is_ood and at_mode.direction == "too likely"
    assert at_mode.statistic < at_mode.interval[0]
    far = typicality_test(flow, train, batch + 10.0)
    assert far.is_ood and far.direction == "too unlikely"
    assert "OUT OF DISTRIBUTION" in str(far) and "typical" in str(typical)


def test_typicality_false_alarm_rate_is_about_alpha():
    g = torch.Generator().manual_seed(3)
    reference = torch.randn(20000, generator=g, dtype=torch.float64) * 3 + 5
    alarms = 0
    trials = 300
    for k in range(trials):
        batch = torch.randn(25, generator=g, dtype=torch.float64) * 3 + 5
        alarms += typicality_test_from_nll(reference, batch, alpha=0.1, n_bootstrap=400,
                                           seed=k).is_ood
    rate = alarms / trials
    # Binomial(300, 0.1): sd 0.017; allow 4 sd.
    assert abs(rate - 0.1) < 0.07


def test_typicality_clipping_keeps_a_rare_outlier_from_deciding_the_batch():
    g = torch.Generator().manual_seed(4)
    reference = torch.randn(5000, generator=g, dtype=torch.float64).abs() + 1.0
    batch = torch.randn(100, generator=g, dtype=torch.float64).abs() + 1.0
    batch[0] = 500.0  # one in-distribution point in a gap the model never saw
    plain = typicality_test_from_nll(reference, batch, clip=None)
    robust = typicality_test_from_nll(reference, batch)
    assert plain.is_ood and not robust.is_ood
    assert robust.mean_nll == pytest.approx(float(batch.mean()))
    assert robust.clip_range is not None and robust.clip_range[1] < 5
    # A whole batch far away still fails, even a single point.
    assert typicality_test_from_nll(reference, torch.full((1,), 50.0)).is_ood


def test_typicality_rejects_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        typicality_test_from_nll(torch.randn(10), torch.randn(3), alpha=1.5)
    with pytest.raises(ValueError, match="NaN"):
        typicality_test_from_nll(torch.randn(10), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        typicality_test_from_nll(torch.randn(10), torch.zeros(0))
    with pytest.raises(ValueError, match="clip"):
        typicality_test_from_nll(torch.randn(10), torch.randn(3), clip=0.3)
    with pytest.raises(TypeError, match="Flow"):
        typicality_test(torch.nn.Linear(2, 2), torch.randn(3, 2), torch.randn(3, 2))


# -- a short MAF fit on moons -------------------------------------------------------------------
@pytest.fixture(scope="module")
def moons_maf():
    torch.manual_seed(0)
    data = torch.as_tensor(make_moons(3000, noise=0.1, random_state=0)[0], dtype=torch.float32)
    flow = pf.flows.build("maf", features=2, hidden=(64, 64))
    fit(flow, data[:2000], epochs=40, batch_size=128, lr=5e-3, progress=False)
    flow.eval()
    return flow, data[:2000], data[2000:]


def test_maf_on_moons_typicality(moons_maf):
    flow, train, held_out = moons_maf
    typical = typicality_test(flow, train, held_out[:100])
    assert not typical.is_ood, str(typical)
    assert not typicality_test(flow, train, train[:300]).is_ood
    grid = torch.stack(torch.meshgrid(torch.linspace(-1.5, 2.5, 200),
                                      torch.linspace(-1.0, 1.5, 120), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    with torch.no_grad():
        mode = grid[flow.log_prob(grid).argmax()]
    at_mode = typicality_test(flow, train, mode + 1e-3 * torch.randn(100, 2))
    assert at_mode.is_ood and at_mode.direction == "too likely", str(at_mode)
    far = typicality_test(flow, train, held_out[:100] + torch.tensor([6.0, 6.0]))
    assert far.is_ood and far.direction == "too unlikely", str(far)


def test_maf_on_moons_anomaly_scores_separate_far_points(moons_maf):
    flow, train, held_out = moons_maf
    far = torch.randn(500, 2) * 0.5 + torch.tensor([4.0, -3.0])
    s_in = anomaly_scores(flow, held_out, reference_x=train)
    s_out = anomaly_scores(flow, far, reference_x=train)
    assert auroc(s_in.nll, s_out.nll) > 0.9
    assert auroc(s_in.typicality, s_out.typicality) > 0.9
    assert auroc(s_in, s_out) == auroc(s_in.nll, s_out.nll)
    nll, typicality = s_in
    assert nll.shape == typicality.shape == (held_out.shape[0],)
    report = invertibility_report(flow, held_out)
    assert report.ok, report.reason


def test_anomaly_scores_model_entropy_matches_the_gaussian_entropy():
    d = 4
    flow = _gaussian_flow(d).double()
    scores = anomaly_scores(flow, torch.randn(10, d, dtype=torch.float64), n_samples=20000)
    scale = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e) + float(scale.log().sum())
    # The NLL of a d-dim Gaussian has standard deviation sqrt(d/2); 20000 samples.
    assert scores.reference == "model samples"
    assert abs(scores.reference_entropy - entropy) < 5 * math.sqrt(d / 2) / math.sqrt(20000)
    assert torch.allclose(scores.typicality, (scores.nll - scores.reference_entropy).abs())
    assert torch.equal(scores["nll"], scores.nll)


# -- AUROC --------------------------------------------------------------------------------------
def _brute_force_auroc(a: np.ndarray, b: np.ndarray) -> float:
    greater = (b[None, :] > a[:, None]).sum()
    ties = (b[None, :] == a[:, None]).sum()
    return (greater + 0.5 * ties) / (a.size * b.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_brute_force_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 8, size=57).astype(float)
    b = rng.integers(2, 10, size=31).astype(float)
    assert auroc(a, b) == pytest.approx(_brute_force_auroc(a, b), abs=1e-12)
    assert auroc(torch.as_tensor(a), list(b)) == pytest.approx(_brute_force_auroc(a, b))
    assert auroc(a, b) + auroc(b, a) == pytest.approx(1.0)


def test_auroc_agrees_with_sklearn_and_handles_extremes():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=200), rng.normal(0.7, 1.0, size=150)
    labels = np.r_[np.zeros(a.size), np.ones(b.size)]
    assert auroc(a, b) == pytest.approx(roc_auc_score(labels, np.r_[a, b]), abs=1e-12)
    assert auroc([0.0, 1.0], [2.0, float("inf")]) == 1.0
    assert auroc([5.0, 6.0], [1.0, 2.0]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        auroc([1.0, float("nan")], [2.0])
    with pytest.raises(ValueError, match="empty"):
        auroc([], [1.0])


# -- the command line ---------------------------------------------------------------------------
def test_cli_check_prints_the_report(tmp_path, capsys):
    from pushforward.cli import main

    out = tmp_path / "run"
    assert main(["train", "--steps", "20", "--out", str(out), "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["check", "--checkpoint", str(out), "-n", "200"]) == 0
    text = capsys.readouterr().out
    assert "Invertibility report (200 samples" in text and "OK" in text
    assert main(["check", "--checkpoint", str(tmp_path / "missing")]) != 0
