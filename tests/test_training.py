"""fit and fit_reverse_kl: learning, history, early stopping, NaN handling, exact resume."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import pushforward as pf
from pushforward.core import Transform
from pushforward.training import History, TrainingDiverged, fit, fit_reverse_kl
from pushforward.transforms import ActNorm, Affine, LULinear


def _gaussian_data(n=2048, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    x = torch.randn(n, d, generator=g) @ mix.T + 1.0
    truth = torch.distributions.MultivariateNormal(torch.ones(d), mix @ mix.T)
    return x, truth


def _linear_flow(d=3):
    return pf.Flow([ActNorm(d), LULinear(d), Affine(d)], pf.StandardNormal(d))


def _maf(features=2, context=0, seed=0):
    torch.manual_seed(seed)
    return pf.flows.build("maf", features=features, context=context, transforms=2,
                          hidden=[16, 16])


def test_fit_learns_a_gaussian():
    x, truth = _gaussian_data()
    flow = _linear_flow()
    history = fit(flow, x[:1536], x[1536:], epochs=15, batch_size=128, lr=1e-2,
                  progress=False)
    assert isinstance(history, History)
    assert len(history.train_nll) == 15 and len(history.epoch_step) == 15
    assert history.val_nll and len(history.val_nll) == len(history.val_step)
    assert len(history.step_nll) == history.steps == 15 * 12
    assert history.train_nll[-1] < history.train_nll[0]
    entropy = truth.entropy().item()
    with torch.no_grad():
        nll = -flow.log_prob(x).mean().item()
    assert abs(nll - entropy) < 0.05


def test_fit_is_deterministic_given_a_seed():
    x, _ = _gaussian_data(512, 2)
    params = []
    for _ in range(2):
        flow = _maf()
        fit(flow, x, steps=30, batch_size=64, seed=7, progress=False)
        params.append(torch.cat([p.detach().flatten() for p in flow.parameters()]))
    assert torch.equal(params[0], params[1])
    flow = _maf()
    fit(flow, x, steps=30, batch_size=64, seed=8, progress=False)
    other = torch.cat([p.detach().flatten() for p in flow.parameters()])
    assert not torch.equal(params[0], other)


def test_best_model_restore_and_early_stopping():
    x, _ = _gaussian_data(1024, 2)
    val = torch.randn(256, 2) * 0.3 - 3.0  # far from the training data: val gets worse
    flow = _linear_flow(2)
    history = fit(flow, x, val, steps=400, batch_size=64, lr=2e-2, val_every=10,
                  patience=3, progress=False)
    assert history.stopped_early and history.steps < 400
    assert history.best_val_nll == min(history.val_nll)
    with torch.no_grad():
        restored = -flow.log_prob(val).mean().item()
    assert restored == pytest.approx(history.best_val_nll, rel=1e-5)


def test_plateau_and_constant_schedules():
    x, _ = _gaussian_data(512, 2)
    for schedule in ("plateau", None):
        flow = _linear_flow(2)
        history = fit(flow, x, x[:128], steps=60, batch_size=64, lr=1e-2, schedule=schedule,
                      val_every=5, progress=False)
        assert history.train_nll[-1] < history.train_nll[0]
    with pytest.raises(ValueError, match="schedule"):
        fit(_linear_flow(2), x, steps=1, schedule="linear", progress=False)


def test_fit_argument_errors():
    x, _ = _gaussian_data(64, 2)
    flow = _linear_flow(2)
    with pytest.raises(ValueError, match="epochs or steps"):
        fit(flow, x, epochs=1, steps=1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        fit(flow, x, steps=1, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(flow, x, steps=1, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="train"):
        fit(flow, "not data", steps=1, progress=False)
    with pytest.raises(ValueError, match=r"train must be shaped \(N, \*event\)"):
        fit(flow, [1, 2, 3], steps=1, progress=False)  # array-likes are converted, then checked
    with pytest.raises(ValueError, match="empty"):
        fit(flow, torch.zeros(0, 2), steps=1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        fit(flow, x, steps=1, resume=True, progress=False)


def test_context_pairs_and_datasets():
    torch.manual_seed(0)
    c = torch.randn(1024, 1)
    x = torch.cat([c, c], 1) * 2 + 0.1 * torch.randn(1024, 2)
    flow = _maf(context=1)
    history = fit(flow, (x, c), (x[:128], c[:128]), steps=150, batch_size=128, lr=5e-3,
                  progress=False)
    assert history.val_nll[-1] < history.val_nll[0] - 1.0
    flow = _maf(context=1)
    history = fit(flow, TensorDataset(x, c), steps=20, batch_size=64, progress=False)
    assert history.steps == 20

    class Items(Dataset):
        def __len__(self):
            return 256

        def __getitem__(self, i):
            return x[i]

    flow = _maf()
    history = fit(flow, Items(), Items(), steps=20, batch_size=64, progress=False)
    assert len(history.val_nll) >= 1


class _Penalised(Transform):
    """Affine map with a ``regularization()`` pulling its shift to zero."""

    def __init__(self):
        super().__init__(2)
        self.affine = Affine(2)
        self.weight = 100.0

    def regularization(self):
        return self.weight * self.affine.shift.pow(2).sum()

    def _forward(self, z, context):
        return self.affine(z)

    def _inverse(self, x, context):
        return self.affine.inverse(x)


def test_regularization_is_added_to_the_loss():
    x = torch.randn(512, 2) + 3.0
    plain = pf.Flow(Affine(2), pf.StandardNormal(2))
    fit(plain, x, steps=200, batch_size=128, lr=5e-2, progress=False)
    penalised = pf.Flow(_Penalised(), pf.StandardNormal(2))
    fit(penalised, x, steps=200, batch_size=128, lr=5e-2, progress=False)
    assert plain.transform.shift.abs().min() > 2.5
    assert penalised.transform.affine.shift.abs().max() < 0.5


class _Flaky(nn.Module):
    """Wraps a flow; its log_prob is NaN on the listed calls."""

    def __init__(self, flow, bad_calls):
        super().__init__()
        self.flow = flow
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def forward(self, x, context=None):
        out = self.flow.log_prob(x, context)
        self.calls += 1
        if self.training and self.calls in self.bad_calls:
            return out * float("nan")
        return out

    def log_prob(self, x, context=None):
        return self.forward(x, context)


def test_nan_steps_are_skipped_with_a_warning():
    x, _ = _gaussian_data(512, 2)
    flaky = _Flaky(_linear_flow(2), {3, 4})
    with pytest.warns(RuntimeWarning, match="non-finite"):
        history = fit(flaky, x, steps=20, batch_size=64, progress=False, max_bad_steps=3)
    assert history.skipped_steps == 2 and len(history.step_nll) == 18
    assert all(math.isfinite(p) for p in history.step_nll)
    assert all(torch.isfinite(p).all() for p in flaky.parameters())


def test_divergence_raises_and_keeps_the_saved_checkpoint(tmp_path):
    x, _ = _gaussian_data(512, 2)
    flow = _maf()
    fit(flow, x, steps=10, batch_size=64, progress=False, checkpoint_dir=tmp_path)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    flaky = _Flaky(flow, set(range(1, 1000)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TrainingDiverged, match="4 non-finite"):
            fit(flaky, x, steps=50, batch_size=64, progress=False, max_bad_steps=4,
                checkpoint_dir=tmp_path, checkpoint_every=1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved
    pf.training.load(tmp_path)


class _NoisyItems(Dataset):
    """Items with fresh torch noise (like dequantisation): resume must restore the RNG."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.01 * torch.rand(2)


class _Crash(Exception):
    pass


def test_killed_run_resumes_bit_identically(tmp_path):
    x, _ = _gaussian_data(700, 2)
    data, val = _NoisyItems(x[:600]), x[600:]
    kwargs = dict(steps=45, batch_size=64, lr=5e-3, seed=3, val_every=7, progress=False)

    reference = _maf()
    ref_history = fit(reference, data, val, **kwargs)

    def crash(step, nll):
        if step == 31:
            raise _Crash

    crashed = _maf()
    with pytest.raises(_Crash):
        fit(crashed, data, val, checkpoint_dir=tmp_path, checkpoint_every=10, callback=crash,
            **kwargs)
    torch.manual_seed(12345)  # a fresh process would start from other RNG states
    resumed = _maf(seed=99)  # and other initial weights: all restored from the checkpoint
    history = fit(resumed, data, val, checkpoint_dir=tmp_path, resume=True, **kwargs)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert history.step_nll == ref_history.step_nll
    assert history.val_nll == ref_history.val_nll
    assert history.train_nll == ref_history.train_nll


def test_resume_refuses_other_settings(tmp_path):
    x, _ = _gaussian_data(256, 2)
    fit(_maf(), x, steps=5, batch_size=64, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot resume"):
        fit(_maf(), x, steps=10, batch_size=32, progress=False, checkpoint_dir=tmp_path,
            resume=True)


def test_fit_reverse_kl_finds_a_gaussian_and_its_normaliser():
    mean = torch.tensor([1.0, -2.0])
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    precision = torch.linalg.inv(cov)
    log_z = math.log(2 * math.pi) + 0.5 * torch.logdet(cov).item()

    def log_density(x):  # unnormalised: Z = 2π |Σ|^½
        d = x - mean
        return -0.5 * torch.einsum("bi,ij,bj->b", d, precision, d)

    torch.manual_seed(0)
    flow = pf.Flow([LULinear(2), Affine(2)], pf.StandardNormal(2))
    history = fit_reverse_kl(flow, log_density, steps=600, batch_size=256, lr=2e-2,
                             progress=False)
    assert history.extra["kl"] < 0.01
    assert abs(history.extra["log_normalizer"] - log_z) < 0.02
    assert history.extra["elbo"] <= history.extra["log_normalizer"] + 1e-9
    assert history.step_nll[-1] < history.step_nll[0]
    samples = flow.sample(20000)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        fit_reverse_kl(flow, lambda x: x, steps=1, progress=False)


def test_bad_data_and_folders_are_refused(tmp_path):
    flow = _linear_flow(2)
    x = torch.randn(64, 2)
    with pytest.raises(ValueError, match="NaN"):
        fit(flow, torch.cat([x, torch.full((1, 2), float("nan"))]), steps=1, progress=False)
    with pytest.raises(ValueError, match="shape"):
        fit(flow, torch.randn(64, 3), steps=1, progress=False)
    with pytest.raises(TypeError, match="floating"):
        fit(flow, torch.ones(64, 2, dtype=torch.long), steps=1, progress=False)
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        fit(flow, x, steps=1, progress=False, checkpoint_dir=file)


def test_tampered_training_state_is_refused(tmp_path):
    from pushforward.training import checkpoint as ckpt

    x, _ = _gaussian_data(256, 2)
    fit(_maf(), x, steps=6, batch_size=64, progress=False, checkpoint_dir=tmp_path,
        checkpoint_every=2)
    state = tmp_path / ckpt.STATE_FILE
    raw = state.read_bytes()
    state.write_bytes(raw.replace(b'\\"step\\": 6', b'\\"step\\": 1'))
    assert state.read_bytes() != raw
    with pytest.raises(ValueError, match="checksum") as info:
        fit(_maf(), x, steps=12, batch_size=64, progress=False, checkpoint_dir=tmp_path,
            resume=True)
    assert "\n" not in str(info.value)
    state.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError):
        fit(_maf(), x, steps=12, batch_size=64, progress=False, checkpoint_dir=tmp_path,
            resume=True)


def test_sigint_checkpoints_and_resume_matches(tmp_path):
    import os
    import signal

    x, _ = _gaussian_data(512, 2)
    kwargs = dict(steps=30, batch_size=64, lr=5e-3, seed=2, progress=False)
    reference = _maf()
    fit(reference, x, **kwargs)

    def interrupt(step, nll):
        if step == 12:
            os.kill(os.getpid(), signal.SIGINT)

    flow = _maf()
    history = fit(flow, x, checkpoint_dir=tmp_path, callback=interrupt, **kwargs)
    assert history.interrupted and 12 < history.steps < 30
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = _maf(seed=5)
    history = fit(resumed, x, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert not history.interrupted and history.steps == 30
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
