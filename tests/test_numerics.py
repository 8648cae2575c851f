"""Numerical robustness: the extreme-input policy, stable formulas, float64 mode, NaN-free runs.

Policy (RELIABILITY.md): a finite input of any magnitude is accepted. A transform returns finite
outputs or raises ``NonFiniteResult`` (a ``ValueError``) when they overflow the dtype; a
log-density may be ``-inf`` (the density underflows the dtype), never NaN or ``+inf``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import pushforward as pf
from pushforward._validation import NonFiniteResult
from pushforward.transforms import Affine


def test_extreme_but_finite_inputs_follow_the_policy():
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=2, transforms=2, hidden=[8])
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.tensor([[1e30, 0.0], [0.5, -0.3]])
    lp = flow.log_prob(x)  # float32: log p ≈ −5e59 is below float32's range
    assert lp[0] == -math.inf and torch.isfinite(lp[1])
    lp64 = flow.double().log_prob(x.double())  # float64 represents it
    assert torch.isfinite(lp64).all() and lp64[0] < -1e59
    t = Affine(2, scale=torch.tensor([4.0, 1.0]))
    with pytest.raises(NonFiniteResult, match="Affine: forward output has 1 NaN or infinite"):
        t(torch.tensor([[3e38, 0.0]]))  # 4 × 3e38 overflows float32
    assert isinstance(NonFiniteResult("x"), ValueError)


def test_nan_result_is_refused_but_fit_skips_the_step():
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=2, transforms=1, hidden=[8])
    with torch.no_grad():
        next(flow.parameters()).fill_(math.nan)
    with pytest.raises(NonFiniteResult, match="Flow.log_prob: log_prob has 4 NaN"):
        flow.log_prob(torch.zeros(4, 2))
    with pytest.warns(RuntimeWarning, match="non-finite"), pytest.raises(pf.TrainingDiverged):
        pf.fit(flow, torch.randn(64, 2), steps=5, batch_size=16, progress=False,
               max_bad_steps=3)


def test_no_unstable_log_exp_patterns_in_the_package():
    # log(exp(.)), log(sigmoid(.)), log(1 + exp(.)), softmax(.).log(): use logsumexp,
    # logsigmoid, softplus and log_softmax instead.
    pattern = re.compile(r"log\((torch\.)?(exp|sigmoid|softmax)\(|sigmoid\(\)\.log|"
                         r"\.exp\(\)\.log\(|log1?p?\(1 ?\+ ?(torch\.)?exp|softmax\([^)]*\)\.log\(")
    root = Path(pf.__file__).parent
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_gaussian_log_prob_is_stable_far_out():
    base = pf.StandardNormal(3).double()
    z = torch.tensor([[1e150, 0.0, 0.0], [1e-300, -1e-300, 0.0]], dtype=torch.float64)
    lp = base.log_prob(z)
    assert torch.isfinite(lp).all()
    assert lp[1] == pytest.approx(-1.5 * math.log(2 * math.pi))


def test_conditional_normal_scale_cannot_overflow():
    base = pf.distributions.ConditionalDiagonalNormal(2, 3, hidden=(8,))
    with torch.no_grad():
        for p in base.parameters():
            p.fill_(1.0)
    c = torch.full((4, 3), 1e6)
    z = base.sample(4, c)
    assert torch.isfinite(z).all() and torch.isfinite(base.log_prob(z, c)).all()


def test_float64_mode(tmp_path):
    torch.manual_seed(0)
    flow = pf.flows.build("nsf", features=2, transforms=2, hidden=[16]).to(torch.float64)
    x = pf.load_dataset("moons", seed=0).train
    history = pf.fit(flow, x, steps=20, progress=False, checkpoint_dir=tmp_path)
    assert all(math.isfinite(v) for v in history.step_nll)
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    loaded = pf.load(tmp_path)
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    with pytest.raises(TypeError, match="dtype float32 but the parameters are float64"):
        loaded.log_prob(torch.zeros(2, 2))
    assert loaded.log_prob(torch.zeros(2, 2, dtype=torch.float64)).dtype == torch.float64


def test_cli_dtype_float64(tmp_path, capsys):
    from pushforward.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dtype", "float64", "--steps", "3", "--flow", "maf", "--out",
                 str(out), "--no-progress"]) == 0
    flow = pf.load(out)
    assert next(flow.parameters()).dtype == torch.float64


def _default_run(dataset: str, seed: int, steps: int):
    from pushforward import cli

    bundle = pf.load_dataset(dataset, seed=seed)
    torch.manual_seed(seed)
    flow = cli.build_flow(cli.DEFAULT_FLOW, bundle, {})
    history = pf.fit(flow, bundle.train, bundle.val, steps=steps, batch_size=cli.DEFAULT_BATCH,
                     lr=cli.DEFAULT_LR, clip_grad=5.0, seed=seed, progress=False)
    return flow, bundle, history


def _assert_clean(flow, bundle, history):
    assert history.skipped_steps == 0
    assert all(math.isfinite(v) for v in history.step_nll)
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    with torch.no_grad():
        test = bundle.test if isinstance(bundle.test, torch.Tensor) else bundle.test[0]
        assert torch.isfinite(flow.log_prob(test)).all()
        assert torch.isfinite(flow.sample(2000)).all()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_default_run_float32_never_nan(seed):
    """``pushforward train`` (nsf on moons, 2000 steps, float32) over 5 seeds."""
    from pushforward import cli

    _assert_clean(*_default_run(cli.DEFAULT_DATASET, seed, cli.DEFAULT_STEPS))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["8gaussians", "checkerboard", "pinwheel", "2spirals",
                                     "circles", "rings", "swissroll"])
def test_toy_datasets_float32_never_nan(dataset):
    for seed in range(5):
        _assert_clean(*_default_run(dataset, seed, 500))


def test_flow_refuses_a_base_of_another_shape():
    with pytest.raises(ValueError, match=r"base-side shape \(2,\) differs"):
        pf.Flow(Affine(2), pf.StandardNormal(3))
