"""pushforward flows inside sbi (``pf.integrations.sbi``, issue 17).

Fast: the import error without sbi, sbi's shape conventions for the estimator, z-scoring,
embedding nets, NPE end to end on a tiny budget (``posterior.sample`` / ``log_prob``), and
save/load through pushforward checkpoints. Slow: NPE on sbi's linear-Gaussian test set-up
reaches C2ST ≤ 0.60 against the analytic posterior with 2,000 simulations.
"""

import importlib
import math
import sys

import pytest
import torch
from torch import nn

import pushforward as pf


def test_import_without_sbi_says_how_to_install_it(monkeypatch):
    for name in list(sys.modules):
        if name == "sbi" or name.startswith("sbi."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "sbi", None)
    monkeypatch.delitem(sys.modules, "pushforward.integrations.sbi", raising=False)
    with pytest.raises(ImportError, match=r"pip install pushforward\[sbi\]"):
        importlib.import_module("pushforward.integrations.sbi")
    monkeypatch.delitem(sys.modules, "pushforward.integrations.sbi", raising=False)


sbi = pytest.importorskip("sbi")
from sbi.inference import NPE  # noqa: E402
from sbi.neural_nets.estimators.base import ConditionalDensityEstimator  # noqa: E402

from pushforward.integrations import sbi as pf_sbi  # noqa: E402

SMALL = {"transforms": 2, "hidden": (16,)}


def _data(n=300, d=3, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(n, d, generator=g) * torch.tensor([1.0, 5.0, 0.1])[:d] + 2.0
    x = torch.cat([theta, theta[:, :1] ** 2], 1)[:, :k] + 0.1 * torch.randn(n, k, generator=g)
    return theta, x


@pytest.mark.parametrize("preset", ["maf", "nsf", "realnvp", "naf", "cnf"])
def test_estimator_follows_sbi_shape_conventions(preset):
    theta, x = _data()
    torch.manual_seed(0)
    options = {"hidden": (16,)} if preset == "cnf" else SMALL
    est = pf_sbi.build(preset, **options)(theta, x)
    assert isinstance(est, ConditionalDensityEstimator)
    assert est.input_shape == (3,) and est.condition_shape == (4,)
    s, b = 5, 4
    cond = x[:b]
    lp = est.log_prob(theta[: s * b].reshape(s, b, 3), cond)
    assert lp.shape == (s, b) and torch.isfinite(lp).all()
    tol = 1e-3 if preset == "cnf" else 1e-5  # an adaptive ODE solve depends on the batch
    for i in range(s):  # each entry is the plain (batch,) density
        assert torch.allclose(lp[i], est.flow.log_prob(theta[i * b:(i + 1) * b], cond),
                              atol=tol)
    assert est.log_prob(theta[:b], cond).shape == (1, b)                       # (B, d)
    assert est.log_prob(theta[:s].reshape(s, 1, 3), cond).shape == (s, b)     # input batch 1
    assert est.log_prob(theta[: s * b].reshape(s, b, 3), x[:1]).shape == (s, b)  # cond batch 1
    paired = est.log_prob(theta[: s * b].reshape(s, b, 3), x[: s * b].reshape(s, b, 4))
    assert paired.shape == (s, b)
    assert torch.allclose(paired.reshape(-1), est.flow.log_prob(theta[: s * b], x[: s * b]),
                          atol=tol)
    assert est.loss(theta[:b], cond).shape == (b,)
    assert est.sample((7,), cond).shape == (7, b, 3)
    assert est.sample(torch.Size((2, 3)), cond).shape == (2, 3, b, 3)
    draws, log_q = est.sample_and_log_prob((6,), cond)
    assert draws.shape == (6, b, 3) and log_q.shape == (6, b)
    assert torch.allclose(log_q, est.log_prob(draws, cond), atol=10 * tol)
    with pytest.raises(ValueError):
        est.log_prob(theta[:b], x[:b, :3])        # wrong condition shape
    with pytest.raises((ValueError, RuntimeError)):
        est.log_prob(theta[:6].reshape(2, 3, 3), cond)  # batches 3 and 4 do not broadcast


def test_z_scoring_makes_the_estimator_equivariant_to_affine_units():
    """θ and x are z-scored from the training batch: rescaling both only shifts log q by the
    Jacobian of the rescaling of θ (the inner flow sees identical numbers)."""
    theta, x = _data()
    torch.manual_seed(0)
    est = pf_sbi.build("maf", **SMALL)(theta.double(), x.double())
    torch.manual_seed(0)
    scaled = pf_sbi.build("maf", **SMALL)(10 * theta.double() - 3, 100 * x.double() + 7)
    lp = est.log_prob(theta[:8].double(), x[:8].double())
    lp_scaled = scaled.log_prob(10 * theta[:8].double() - 3, 100 * x[:8].double() + 7)
    assert torch.allclose(lp_scaled, lp - 3 * math.log(10), atol=1e-8)
    standardize = est.embedding_net.standardize
    assert torch.allclose(standardize.loc, x.double().mean(0), atol=1e-10)
    assert torch.allclose(standardize.scale, x.double().std(0), atol=1e-10)
    raw = pf_sbi.build("maf", z_score_theta="none", z_score_x="none", **SMALL)(theta, x)
    assert raw.embedding_net.standardize is None


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3)
        self.out = nn.Linear(9, 6)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)).flatten(1))


def test_embedding_net_and_multidimensional_x(tmp_path):
    theta, _ = _data(n=200, d=2, k=3)
    x = theta[:, None, :1] * torch.linspace(0, 1, 5) + torch.stack([theta[:, 1:]] * 5, 2)
    x = torch.cat([x, 0.1 * torch.randn(200, 1, 5)], 1)  # (200, 2, 5)
    torch.manual_seed(0)
    est = pf_sbi.build("nsf", embedding_net=_Conv(), **SMALL)(theta, x)
    assert est.condition_shape == (2, 5)
    assert est.log_prob(theta[:6].reshape(2, 3, 2), x[:3]).shape == (2, 3)
    est.loss(theta[:8], x[:8]).mean().backward()
    assert est.embedding_net.net.conv.weight.grad.abs().sum() > 0
    flat = pf_sbi.build("nsf", **SMALL)(theta, x)  # no embedding: x is flattened
    assert flat.sample((4,), x[:3]).shape == (4, 3, 2)
    folder = pf_sbi.save(est, tmp_path / "conv")
    with pytest.raises(ValueError, match="embedding_net"):
        pf_sbi.load(folder)
    back = pf_sbi.load(folder, embedding_net=_Conv())
    assert torch.equal(back.log_prob(theta[:5], x[:5]), est.eval().log_prob(theta[:5], x[:5]))


def test_build_refuses_bad_options_before_any_simulation():
    with pytest.raises(ValueError, match="unknown flow"):
        pf_sbi.build("nope")
    with pytest.raises(ValueError, match="no context"):
        pf_sbi.build("idf")
    with pytest.raises(ValueError, match="z_score_x"):
        pf_sbi.build("maf", z_score_x="sometimes")
    theta, x = _data()
    with pytest.raises(ValueError, match="set from the data"):
        pf_sbi.build("maf", features=3)(theta, x)
    with pytest.raises(ValueError, match=r"\(batch, features\)"):
        pf_sbi.build("maf", embedding_net=nn.Identity())(theta, x[:, :, None])


def _gaussian_linear(d=3):
    prior = torch.distributions.MultivariateNormal(torch.zeros(d), torch.eye(d))
    shift, cov = -torch.ones(d), 0.3 * torch.eye(d)

    def simulate(theta):
        return theta + shift + torch.randn_like(theta) @ torch.linalg.cholesky(cov).T

    from sbi.simulators.linear_gaussian import true_posterior_linear_gaussian_mvn_prior

    x_o = torch.zeros(1, d)
    true = true_posterior_linear_gaussian_mvn_prior(x_o, shift, cov, torch.zeros(d),
                                                    torch.eye(d))
    return prior, simulate, x_o, true


def test_npe_end_to_end_and_checkpoint_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sbi writes its TensorBoard logs to ./sbi-logs
    torch.manual_seed(0)
    prior, simulate, x_o, _ = _gaussian_linear()
    theta = prior.sample((300,))
    npe = NPE(prior, density_estimator=pf.integrations.sbi.build("maf", **SMALL),
              show_progress_bars=False)
    with pytest.warns(UserWarning, match="max_num_epochs"):  # a tiny budget, on purpose
        est = npe.append_simulations(theta, simulate(theta)).train(max_num_epochs=3)
    assert isinstance(est, pf_sbi.FlowEstimator)
    posterior = npe.build_posterior()
    draws = posterior.sample((50,), x=x_o, show_progress_bars=False)
    assert draws.shape == (50, 3) and torch.isfinite(draws).all()
    log_p = posterior.log_prob(draws, x=x_o)
    assert log_p.shape == (50,) and torch.isfinite(log_p).all()
    # pushforward checkpoints: the estimator round-trips, and pf.load reads the θ flow alone
    folder = pf_sbi.save(posterior.posterior_estimator, tmp_path / "npe")
    back = pf_sbi.load(folder)
    est.eval()
    assert torch.equal(back.log_prob(draws, x_o), est.log_prob(draws, x_o))
    torch.manual_seed(1)
    a = back.sample((5,), x_o)
    torch.manual_seed(1)
    assert torch.equal(a, est.sample((5,), x_o))
    flow = pf.load(folder)
    context = est.embedding_net(x_o)
    assert torch.allclose(flow.log_prob(draws, context.expand(50, -1)),
                          back.log_prob(draws, x_o)[0])
    with pytest.raises(ValueError, match="sbi"):
        pf_sbi.load(pf.save(pf.flows.build("maf", features=2, context=1), tmp_path / "plain"))


@pytest.mark.slow
def test_npe_gaussian_linear_c2st_with_2000_simulations(tmp_path, monkeypatch):
    """sbi's own accuracy test set-up for NPE (linear Gaussian, 2,000 simulations, C2ST ≤ 0.6)
    with the default pushforward NSF, against the analytic posterior."""
    from sbi.utils.metrics import c2st

    monkeypatch.chdir(tmp_path)  # sbi writes its TensorBoard logs to ./sbi-logs
    torch.manual_seed(0)
    prior, simulate, x_o, true = _gaussian_linear()
    theta = prior.sample((2000,))
    npe = NPE(prior, density_estimator=pf.integrations.sbi.build("nsf"), show_progress_bars=False)
    npe.append_simulations(theta, simulate(theta)).train()
    posterior = npe.build_posterior()
    draws = posterior.sample((2000,), x=x_o, show_progress_bars=False)
    score = float(c2st(draws, true.sample((2000,))))
    assert score <= 0.60, score
    # the density too: log q(θ | x_o) tracks the analytic log-posterior on its own samples
    reference = true.sample((500,))
    error = posterior.log_prob(reference, x=x_o) - true.log_prob(reference)
    assert error.abs().mean() < 0.3, error.abs().mean()
