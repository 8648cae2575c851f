"""The opt-in torch.compile paths: compiled log_prob and training step agree with eager."""

import copy

import pytest
import torch

import pushforward as pf
from pushforward.training.compiled import (
    compile_log_prob,
    compile_train_step,
    compiler_available,
)


def _maf():
    torch.manual_seed(0)
    flow = pf.flows.MAF(3, transforms=2, hidden=[16, 16])
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return flow


def _agree(backend, dtype, atol):
    flow = _maf().to(dtype)
    x = torch.randn(64, 3, dtype=dtype)
    log_prob = compile_log_prob(flow, backend=backend)
    assert torch.allclose(log_prob(x), flow.log_prob(x), atol=atol, rtol=0)
    eager = copy.deepcopy(flow)
    opt_c = torch.optim.Adam(flow.parameters(), lr=1e-2)
    opt_e = torch.optim.Adam(eager.parameters(), lr=1e-2)
    step = compile_train_step(flow, opt_c, clip_grad=5.0, backend=backend)
    for _ in range(3):
        loss_c = step(x)
        opt_e.zero_grad()
        loss_e = -eager.log_prob(x).mean()
        loss_e.backward()
        torch.nn.utils.clip_grad_norm_(eager.parameters(), 5.0)
        opt_e.step()
        assert abs(loss_c - float(loss_e.detach())) < atol * 10
    for p, q in zip(flow.parameters(), eager.parameters()):
        assert torch.allclose(p, q, atol=atol * 10, rtol=0)


def test_traced_graph_agrees_with_eager_without_a_compiler():
    _agree("eager", torch.float64, 1e-12)


def test_compiled_path_still_validates_inputs():
    flow = _maf()
    log_prob = compile_log_prob(flow, backend="eager")
    with pytest.raises(ValueError, match="NaN"):
        log_prob(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        log_prob(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="Flow"):
        compile_log_prob(torch.nn.Linear(2, 2))


def test_compiled_train_step_skips_non_finite_losses():
    flow = _maf()
    opt = torch.optim.SGD(flow.parameters(), lr=1e-2)
    step = compile_train_step(flow, opt, backend="eager")
    before = [p.detach().clone() for p in flow.parameters()]
    with pf.validation(False):
        loss = step(torch.full((4, 3), float("inf")))
    assert loss != loss  # NaN: the step was skipped
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters()))
    assert torch.isfinite(torch.tensor(step(torch.zeros(4, 3))))  # finite steps run
    assert not all(torch.equal(a, b) for a, b in zip(before, flow.parameters()))


@pytest.mark.slow
@pytest.mark.skipif(not compiler_available(), reason="no C compiler for the Inductor backend")
def test_inductor_compiled_maf_agrees_with_eager():
    _agree("inductor", torch.float32, 2e-5)
