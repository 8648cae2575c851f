"""Tests of the performance work: fast paths agree with the plain computations they replace."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import pushforward as pf
from pushforward._validation import check_tensor
from pushforward.nn import MADE
from pushforward.transforms import maps
from pushforward.transforms.coupling import _as_slice
from pushforward.transforms.maps import AffineMap, soft_clamp


def test_finite_check_fast_path_is_exact():
    check_tensor(torch.randn(4, 3), (3,), "T")
    # a finite tensor whose float32 sum overflows still passes (exact fallback)
    big = torch.full((4, 3), 3e38)
    check_tensor(big, (3,), "T")
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(4, 3)
        x[2, 1] = bad
        with pytest.raises(ValueError, match="1 NaN or infinite"):
            check_tensor(x, (3,), "T")
    x = torch.randn(4, 3)
    x[0, 0], x[1, 1] = float("inf"), -float("inf")  # inf − inf: the sum is NaN
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        check_tensor(x, (3,), "T")


def test_soft_clamp_is_bound_tanh():
    u = torch.linspace(-60, 60, 2001, dtype=torch.float64)
    for bound in (0.5, 3.0, 10.0):
        torch.testing.assert_close(soft_clamp(u, bound), bound * torch.tanh(u / bound),
                                   atol=1e-14, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bound", [3.0, None])
def test_affine_inverse_node_matches_plain_autograd(bound, fused, monkeypatch):
    # the fused node serves inputs of at least _FUSED_MIN_NUMEL elements, plain operations the rest
    monkeypatch.setattr(maps, "_FUSED_MIN_NUMEL", 0 if fused else 10**9)
    torch.manual_seed(0)
    m = AffineMap(bound)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    p = 2 * torch.randn(6, 5, 2, dtype=torch.float64, requires_grad=True)

    def plain(x, p):
        raw, shift = p.unbind(-1)
        s = raw if bound is None else bound * torch.tanh(raw / bound)
        return x * torch.exp(-s) + shift, -s

    z, neg = m.inverse(x, p)
    assert ("AffineInverse" in type(z.grad_fn).__name__) == fused
    z0, neg0 = plain(x, p)
    torch.testing.assert_close(z, z0)
    torch.testing.assert_close(neg, neg0)
    weights = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    g = torch.autograd.grad((z * weights[0]).sum() + (neg * weights[1]).sum(), (x, p))
    g0 = torch.autograd.grad((z0 * weights[0]).sum() + (neg0 * weights[1]).sum(), (x, p))
    for a, b in zip(g, g0):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(m.inverse, (x, p))
    assert torch.autograd.gradgradcheck(m.inverse, (x, p))
    # without gradients the same values come from plain operations
    with torch.no_grad():
        torch.testing.assert_close(m.inverse(x, p)[0], z0)
    # forward and inverse still invert each other
    back, ladj = m.forward(z, p)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ladj, -neg)


def test_as_slice():
    assert _as_slice(torch.tensor([0, 2, 4])) == slice(0, 5, 2)
    assert _as_slice(torch.tensor([3])) == slice(3, 4, 1)
    assert _as_slice(torch.tensor([1, 2, 4])) is None
    assert _as_slice(torch.tensor([2, 1])) is None
    assert _as_slice(torch.tensor([], dtype=torch.long)) is None


def test_made_order_cache_follows_the_degrees_buffer():
    made = MADE(4, 2, hidden=(8,), ordering="reversed")
    assert made._order() == [3, 2, 1, 0]
    other = MADE(4, 2, hidden=(8,), ordering=[2, 0, 3, 1])
    made.load_state_dict(other.state_dict())  # copies degrees in place: the cache refreshes
    assert made._order() == [2, 0, 3, 1]


def test_made_inplace_relu_keeps_gradients():
    torch.manual_seed(0)
    made = MADE(3, 2, hidden=(16, 16)).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(made, (x,))


def test_suite_smoke(tmp_path):
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    try:
        import suite
    finally:
        sys.path.pop(0)
    out = tmp_path / "suite.json"
    with pf.validation(True):
        suite.main(["--flows", "maf", "--dims", "2", "--peers", "zuko", "--batch", "64",
                    "--repeats", "1", "--min-time", "0.001", "--steps", "3", "--hidden", "8",
                    "--transforms", "1", "--seeds", "0", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    ours = [r for r in result["speed"] if r["impl"] == "pushforward"]
    assert {r["op"] for r in ours} == {"log_prob", "train_step", "sample"}
    assert all(r["throughput"] > 0 for r in ours)
    params = next(r["params"] for r in ours)
    memory = next(r for r in result["memory"] if r["impl"] == "pushforward")
    assert memory["peak_bytes"] >= 4 * params  # at least the gradients
    assert {r["data"] for r in result["nll"]} == {"moons", "8gaussians", "digits"}
    assert all(r["value"] == r["value"] for r in result["nll"])  # not NaN
    assert {r["seed"] for r in result["nll"]} == {0, 1}
