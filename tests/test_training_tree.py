"""fit walks the model's module tree once (pushforward.training._tree), with the same results."""

from __future__ import annotations

import torch
from torch import nn

import pushforward as pf
from pushforward.training._tree import attribute, frozen, submodules
from pushforward.training.history import function_evaluations
from pushforward.training.objectives import regularization


class _Penalised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.nfe = 3

    def regularization(self) -> torch.Tensor:
        return self.weight.square().sum()


def test_frozen_walk_is_the_live_walk_and_is_restored() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), _Penalised()))
    live = list(net.modules())
    with frozen(net):
        assert list(submodules(net)) == live
        with frozen(net):  # nested: same walk, the outer one restored on exit
            assert list(submodules(net)) == live
        assert list(submodules(net)) == live
        other = nn.Linear(1, 1)
        assert list(submodules(other)) == [other]  # another module: the live walk
    assert list(submodules(net)) == live


def test_attribute_matches_getattr() -> None:
    module = _Penalised()
    module.register_buffer("scale", torch.ones(1))
    module.child = nn.Linear(1, 1)
    for name in ("nfe", "regularization", "weight", "scale", "child", "missing", "training"):
        expected = getattr(module, name, None)
        found = attribute(module, name)
        if isinstance(expected, torch.Tensor):
            assert found is expected
        else:
            assert found == expected, name


def test_regularization_and_evaluations_inside_and_outside_fit_agree() -> None:
    net = nn.Sequential(nn.Linear(2, 2), _Penalised(), _Penalised())
    outside = (regularization(net), function_evaluations(net))
    with frozen(net):
        inside = (regularization(net), function_evaluations(net))
    assert torch.equal(outside[0], inside[0]) and outside[0].item() == 4.0
    assert outside[1] == inside[1] == (6, 0)
    assert regularization(nn.Linear(2, 2)) is None and function_evaluations(nn.ReLU()) is None


def test_fit_counts_a_regularizer_every_step() -> None:
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=2, transforms=1, hidden=[8])
    penalty = _Penalised()
    flow.penalty = penalty  # a submodule with a regularizer: its gradient reaches the weight
    before = penalty.weight.detach().clone()
    pf.fit(flow, torch.randn(64, 2), steps=3, batch_size=32, progress=False,
           handle_signals=False, lr=1e-2)
    assert (penalty.weight.detach().abs() < before.abs()).all()
