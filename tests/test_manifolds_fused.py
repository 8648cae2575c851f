"""The shared-parameter fast path of the manifold flows (issue 21, item 5).

Densities equal the values the previous implementation gave on fixed inputs (float64, recorded
before the change), the hand-written backward of the factored matrix equals autograd (gradcheck,
double backward), and checkpoints keep their keys.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import normalize

from pushforward.core import Flow
from pushforward.manifolds import (
    Calibration,
    Dirichlet,
    GeneralizedCalibration,
    NormalizedAffine,
    NormalizedLinear,
    NormalizedTranslation,
    UniformSphere,
)
from pushforward.manifolds._fused import FactoredMatrix, factored_matrix_reference

# log p at the inputs of _flows() by the code before the fast path (commit 388e773).
SPHERE_BEFORE = [-12.158671959636173, -12.214585585571285, -8.443541730812948,
                 -16.79410714529641, -15.37952119917091]
SIMPLEX_BEFORE = [-6.086996679769698, 4.7844802461547875, -17.062989937771743,
                  -7.141370979546559, -7.464918394001569]


def _flows() -> tuple[Flow, torch.Tensor, Flow, torch.Tensor]:
    f64 = torch.float64
    g = torch.Generator().manual_seed(7)

    def mat(n: int) -> torch.Tensor:
        return torch.eye(n, dtype=f64) + 0.3 * torch.randn(n, n, generator=g, dtype=f64)

    def unit(n: int) -> torch.Tensor:
        return normalize(torch.randn(n, generator=g, dtype=f64), dim=0)

    layers = []
    for _ in range(6):
        m = mat(3)
        layers.append(NormalizedAffine(3, matrix=m, shift=m @ (0.4 * unit(3))))
        layers.append(NormalizedLinear(3, matrix=mat(3)))
        layers.append(NormalizedTranslation(3, shift=0.5 * unit(3)))
    sphere = Flow(layers, UniformSphere(3))
    x = normalize(torch.randn(5, 3, generator=g, dtype=f64), dim=-1)
    a = torch.eye(4, dtype=f64) + 0.2 * torch.randn(4, 4, generator=g, dtype=f64)
    a = a - a.mean(-1, keepdim=True) + 1.3 * torch.eye(4, dtype=f64).mean(-1, keepdim=True)
    a = a - (a.sum(-1, keepdim=True) - 1.1) / 4
    simplex = Flow([
        GeneralizedCalibration(4, matrix=a, shift=0.3 * torch.randn(4, generator=g, dtype=f64)),
        Calibration(4, scale=torch.tensor(1.7, dtype=f64),
                    shift=0.2 * torch.randn(4, generator=g, dtype=f64)),
        GeneralizedCalibration(4, matrix=torch.eye(4, dtype=f64)),
    ], Dirichlet(4, concentration=torch.tensor(2.0, dtype=f64)))
    p = torch.softmax(torch.randn(5, 4, generator=g, dtype=f64), -1)
    return sphere, x, simplex, p


def test_log_densities_equal_the_previous_implementation() -> None:
    sphere, x, simplex, p = _flows()
    torch.testing.assert_close(sphere.log_prob(x), torch.tensor(SPHERE_BEFORE, dtype=x.dtype),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(simplex.log_prob(p), torch.tensor(SIMPLEX_BEFORE, dtype=p.dtype),
                               rtol=1e-12, atol=1e-12)


def test_fast_path_equals_autograd_path_inside_torch_func() -> None:
    """Under ``torch.func`` the layers use plain autograd operations: same values, same grads."""
    sphere, x, simplex, p = _flows()
    for flow, value in ((sphere, x), (simplex, p)):
        params = dict(flow.named_parameters())
        fast = torch.autograd.grad(flow.log_prob(value).sum(), list(params.values()))

        def total(ps: dict[str, torch.Tensor], flow: Flow = flow, value: torch.Tensor = value
                  ) -> torch.Tensor:
            return torch.func.functional_call(flow, ps, (value,)).sum()

        plain = torch.func.grad(total)(params)
        for (name, g_plain), g_fast in zip(plain.items(), fast):
            torch.testing.assert_close(g_fast, g_plain, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("invert", [False, True])
def test_factored_matrix_backward_and_double_backward(invert: bool) -> None:
    f64 = torch.float64
    g = torch.Generator().manual_seed(3)
    leaves = tuple((0.4 * torch.randn(*shape, generator=g, dtype=f64)).requires_grad_()
                   for shape in ((3, 3), (3, 3), (3,)))
    consts = (torch.eye(3, dtype=f64)[[1, 2, 0]], torch.tensor([1.0, -1.0, 1.0], dtype=f64),
              torch.eye(3, dtype=f64))

    def fused(*xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return FactoredMatrix.apply(*xs, *consts, invert)

    assert torch.autograd.gradcheck(fused, leaves)
    assert torch.autograd.gradgradcheck(fused, leaves)
    for a, b in zip(fused(*leaves), factored_matrix_reference(*leaves, *consts, invert)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_gradient_penalty_through_a_layer_is_exact() -> None:
    """``create_graph=True`` (double backward) through the fast path equals torch.func's."""
    g = torch.Generator().manual_seed(5)
    t = NormalizedAffine(3, matrix=torch.eye(3, dtype=torch.float64)
                         + 0.3 * torch.randn(3, 3, generator=g, dtype=torch.float64))
    x = normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=-1)
    x.requires_grad_()
    (gx,) = torch.autograd.grad(t.inverse(x)[1].sum(), x, create_graph=True)
    grads = torch.autograd.grad(gx.square().sum(), list(t.parameters()))
    params = dict(t.named_parameters())

    def ladj_sum(ps: dict[str, torch.Tensor], v: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(t.inv, {f"transform.{k}": p for k, p in ps.items()},
                                          (v,))[1].sum()

    def penalty_func(ps: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.grad(ladj_sum, argnums=1)(ps, x.detach()).square().sum()

    expected = torch.func.grad(penalty_func)(params)
    for name, got in zip(params, grads):
        torch.testing.assert_close(got, expected[name], rtol=1e-10, atol=1e-12, msg=name)


def test_checkpoint_keys_are_unchanged() -> None:
    keys = set(NormalizedAffine(3).state_dict())
    assert keys == {"raw_shift", "linear.permutation", "linear.lower", "linear.upper",
                    "linear.log_diag", "linear.sign_diag"}
    assert set(GeneralizedCalibration(3).state_dict()) == {
        "helmert", "unit", "sign_eigenvalue", "coupling", "log_eigenvalue", "raw_shift",
        "reduced.permutation", "reduced.lower", "reduced.upper", "reduced.log_diag",
        "reduced.sign_diag"}
