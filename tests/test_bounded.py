"""Bounded support: ``bounded`` / ``box_bounds`` and the CLI's ``--bounds``."""

import json
import math

import pytest
import torch

import pushforward as pf
from pushforward.training.checkpoint import load
from pushforward.transforms import Chain, bounded, box_bounds


def _flow():
    torch.manual_seed(0)
    flow = pf.flows.MAF(2, transforms=2, hidden=[16, 16], identity_init=True).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))  # at 0.3 the tails reach |x| ~ 30
    return flow


def test_bounded_flow_is_a_normalised_density_on_the_box():
    low, high = torch.tensor([-1.0, 0.0]), torch.tensor([2.0, 0.5])
    flow = bounded(_flow(), low, high)
    n = 300  # midpoint rule on the box
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    x = low.double() + (high - low).double() * grid
    with torch.no_grad():
        mass = flow.log_prob(x).exp().mean() * float((high - low).prod())
    assert abs(float(mass) - 1) < 2e-2
    samples = flow.sample(500)
    assert bool(((samples > low) & (samples < high)).all())


def test_bounded_flow_matches_the_change_of_variables():
    inner = _flow()
    low, high = -2.0, 3.0
    flow = bounded(inner, low, high)
    x = torch.tensor([[0.1, -1.5], [2.9, 0.0]], dtype=torch.float64)
    u = (x - low) / (high - low)
    y = torch.log(u) - torch.log1p(-u)
    expected = inner.log_prob(y) - (math.log(high - low) + torch.log(u) + torch.log1p(-u)).sum(-1)
    assert torch.allclose(flow.log_prob(x), expected, atol=1e-10)
    # Outside the box the density is zero: log_prob is -inf (issue 17), the inverse refuses.
    outside = torch.tensor([[3.5, 0.0], [0.0, -2.5], [0.1, -1.5]], dtype=torch.float64)
    log_p = flow.log_prob(outside)
    assert log_p[:2].tolist() == [-math.inf, -math.inf] and torch.isfinite(log_p[2])
    with pf.validation(False):
        assert torch.equal(flow.log_prob(outside), log_p)
    with pytest.raises(ValueError, match="outside"):
        flow.transform.inverse(outside)


def test_bounded_transform_and_errors():
    t = bounded(pf.transforms.Affine(2), 0.0, 1.0)
    assert isinstance(t, Chain)
    with pytest.raises(ValueError, match="upper bound"):
        bounded(_flow(), 1.0, 0.0)
    with pytest.raises(ValueError, match="lower bounds"):
        bounded(_flow(), [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(TypeError, match="Flow or a Transform"):
        bounded(torch.nn.Linear(2, 2), 0.0, 1.0)


def test_box_bounds_widen_the_range():
    low, high = box_bounds(torch.tensor([[0.0, 5.0], [1.0, 5.0]]), margin=0.1)
    assert low == pytest.approx([-0.1, 4.5]) and high == pytest.approx([1.1, 5.5])  # 5: flat
    with pytest.raises(ValueError, match="NaN"):
        box_bounds(torch.tensor([[float("nan")]]))


def test_bounded_flow_checkpoint_round_trip(tmp_path):
    flow = bounded(_flow().float(), [-1.0, -1.0], [1.0, 2.0])
    pf.training.save(flow, tmp_path)
    again = load(tmp_path)
    x = torch.tensor([[0.2, 1.5], [-0.9, -0.5]])
    assert torch.allclose(again.log_prob(x), flow.log_prob(x), atol=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["preprocess"][0]["type"] == "sigmoid"


def test_cli_bounds(tmp_path, capsys):
    from pushforward.cli import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", "moons", "--flow", "maf", "--steps", "3", "--bounds",
                 "auto", "--size", "600", "--out", str(out), "--no-progress", "--threads", "1",
                 "--option", "hidden=[8]", "--option", "transforms=1"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert [layer["type"] for layer in config["preprocess"]] == ["sigmoid"]
    assert config["train"]["bounds"] == "auto"
    samples = load(out).sample(200)
    box = config["preprocess"][0]
    assert bool(((samples > torch.tensor(box["low"])) & (samples < torch.tensor(box["high"])))
                .all())
    assert main(["train", "--dataset", "moons", "--steps", "1", "--bounds", "0,1", "--size",
                 "600", "--out", str(tmp_path / "bad"), "--no-progress"]) != 0
    assert "outside the box" in capsys.readouterr().err
