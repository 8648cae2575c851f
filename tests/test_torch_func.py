"""Transforms compose with ``torch.func``; the kit's context and ``torch.func`` properties bite.

Every registry case goes through ``check_transform`` (tests/test_contract.py), which runs forward
and inverse inside ``torch.func.jacrev`` of one sample and feeds unconditional transforms a
random context. The tests here cover the user-facing idioms (``jacrev``, ``grad``, ``vmap``,
``functional_call``) on presets, the declared refusal, and that the kit fails broken transforms.
``vmap`` is not promised for numerical inverses that stop on a tolerance (Planar, Sylvester, the
generative direction of residual blocks): their loops branch on tensor values.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call, grad, jacrev, vmap

import pushforward as pf
from pushforward.core import Chain, Transform
from pushforward.diagnostics import check_transform
from pushforward.diagnostics.check import TransformCheckError
from pushforward.transforms import Affine, MaskedAutoregressive


@pytest.mark.parametrize("logdet", ["exact", "roulette"])
def test_residual_flow_runs_under_jacrev(logdet):
    torch.manual_seed(0)
    flow = pf.flows.ResidualFlow(features=3, logdet=logdet).double()
    x = torch.randn(3, dtype=torch.float64)
    t = flow.transform
    for method in (t.forward, t.inverse):
        jac = jacrev(lambda s, m=method: m(s[None])[0][0])(x)
        reference = torch.autograd.functional.jacobian(lambda s, m=method: m(s[None])[0][0], x)
        assert torch.allclose(jac, reference, atol=1e-10)
    score = grad(lambda s: flow.log_prob(s[None])[0])(x)
    assert score.shape == (3,) and bool(torch.isfinite(score).all())


@pytest.mark.parametrize("name", ["maf", "iaf", "realnvp", "nsf", "glow", "nice", "naf"])
def test_presets_vmap_and_grad_of_log_prob(name):
    torch.manual_seed(0)
    flow = pf.flows.build(name, features=3).double().eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    expected = flow.log_prob(x)
    per_sample = vmap(lambda s: flow.log_prob(s[None])[0])(x)
    assert torch.allclose(per_sample, expected, atol=1e-10)
    scores = vmap(grad(lambda s: flow.log_prob(s[None])[0]))(x)
    reference = torch.func.jacrev(lambda s: flow.log_prob(s).sum())(x)
    assert torch.allclose(scores, reference, atol=1e-8)


def test_functional_call_swaps_parameters():
    torch.manual_seed(0)
    flow = pf.flows.MAF(2, transforms=2, hidden=(8,)).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    params = {k: v.detach() + 0.1 for k, v in flow.named_parameters()}
    moved = functional_call(flow, params, (x,))
    assert not torch.allclose(moved, flow.log_prob(x))
    copy = pf.flows.MAF(2, transforms=2, hidden=(8,)).double()
    copy.load_state_dict({**flow.state_dict(), **params})
    assert torch.allclose(moved, copy.log_prob(x), atol=1e-12)
    grads = grad(lambda p: functional_call(flow, p, (x,)).sum())(params)
    assert set(grads) == set(params)


def test_cnf_declares_adaptive_solves_unsupported_and_works_on_a_grid():
    torch.manual_seed(0)
    cnf = pf.continuous.CNF(pf.continuous.TimeMLP(2, hidden=(8,)), 2).double()
    z = torch.randn(2, dtype=torch.float64)
    assert cnf.supports_torch_func is False
    with pytest.raises(NotImplementedError, match="CNF.*torch.func.*autograd.functional"):
        jacrev(lambda s: cnf(s[None])[0][0])(z)
    with cnf.solver(method="rk4", steps=10):
        assert cnf.supports_torch_func
        jac = jacrev(lambda s: cnf(s[None])[0][0])(z)
        reference = torch.autograd.functional.jacobian(lambda s: cnf(s[None])[0][0], z)
    assert torch.allclose(jac, reference, atol=1e-10)
    # A chain holding a refusing module refuses too, naming it.
    chain = Chain([Affine(2), cnf])
    with pytest.raises(NotImplementedError, match="Chain: CNF cannot run"):
        jacrev(lambda s: chain(s[None])[0][0])(z)
    check_transform(cnf, torch.randn(3, 2), atol=1e-6)  # the kit accepts the declared refusal


# -- the kit fails transforms that break these properties -------------------------------------
class _RequiresGradInside(Transform):
    """A transform whose ladj calls ``requires_grad_`` (what broke ResidualFlow)."""

    def __init__(self) -> None:
        super().__init__(2)

    def _ladj(self, v: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = v.detach().requires_grad_(True)
            (g,) = torch.autograd.grad((2 * leaf).sum(), leaf)
        return torch.log(g).sum(-1).detach()

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return 2 * z, self._ladj(z)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x / 2, -self._ladj(x)


class _SilentlyUndeclared(_RequiresGradInside):
    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if pf._validation.in_torch_func():
            raise NotImplementedError("no torch.func here")
        return 2 * z, z.new_full((z.shape[0],), 2 * torch.log(torch.tensor(2.0)).item())

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x / 2, x.new_full((x.shape[0],), -2 * torch.log(torch.tensor(2.0)).item())


class _Declared(_RequiresGradInside):
    """Declares (and documents) that it cannot run under ``torch.func``."""

    supports_torch_func = False


class _ReadsContextAnyway(Transform):
    """Overrides ``forward`` itself and lets an ignored context leak into the output."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shift = 0.0 if context is None else context.mean()
        return z + shift, z.new_zeros(z.shape[0])

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])


class _RefusesContext(_ReadsContextAnyway):
    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if context is not None:
            raise ValueError("got a context but context_features=0")
        return z, z.new_zeros(z.shape[0])


def test_kit_fails_a_transform_that_crashes_under_jacrev():
    with pytest.raises(TransformCheckError, match="torch.func.*requires_grad"):
        check_transform(_RequiresGradInside(), torch.randn(3, 2))


def test_kit_fails_an_undeclared_refusal():
    with pytest.raises(TransformCheckError, match="declares supports_torch_func = True"):
        check_transform(_SilentlyUndeclared(), torch.randn(3, 2))


def test_kit_accepts_a_declared_refusal():
    t = _Declared()
    with pytest.raises(NotImplementedError, match="_Declared cannot run inside a torch.func"):
        jacrev(lambda s: t(s[None])[0][0])(torch.randn(2))
    check_transform(t, torch.randn(3, 2))


@pytest.mark.parametrize("cls", [_ReadsContextAnyway, _RefusesContext])
def test_kit_fails_an_unconditional_transform_that_does_not_ignore_a_context(cls):
    with pytest.raises(TransformCheckError, match="context ignored"):
        check_transform(cls(), torch.randn(3, 2), gradients=False)


def test_made_layers_accept_and_ignore_a_context():
    torch.manual_seed(0)
    chain = Chain([MaskedAutoregressive(2, 3), MaskedAutoregressive(2)])
    x, context = torch.randn(4, 2), torch.randn(4, 3)
    z, ladj = chain.inverse(x, context)
    x2, _ = chain(z, context)
    assert torch.allclose(x2, x, atol=1e-5)
    plain = MaskedAutoregressive(2)
    assert torch.equal(plain.inverse(x, context)[0], plain.inverse(x)[0])
