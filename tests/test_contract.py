"""Every registered transform, and its inverse, through the generic test kit in float64."""

import inspect

import pytest
import torch
from contract import all_cases

import pushforward as pf
from pushforward.core import Transform
from pushforward.diagnostics import check_transform

CASES = all_cases()
PARAMS = [
    pytest.param(case, c, id=f"{case.name}-ctx{c}") for case in CASES for c in case.contexts
]


def _build(case, context_features):
    torch.manual_seed(1)
    t = case.make(context_features).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(case.perturb * torch.randn_like(p))
    return t


def _context(c, batch, generator):
    return None if c == 0 else torch.randn(batch, c, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize(("case", "c"), PARAMS)
def test_transform_contract(case, c):
    generator = torch.Generator().manual_seed(2)
    t = _build(case, c)
    x = case.inputs(case.batch, generator)
    ctx = _context(c, case.batch, generator)
    check_transform(t, x, ctx, atol=case.atol, ladj_reference=case.ladj_reference)


@pytest.mark.parametrize(("case", "c"), PARAMS)
def test_inverse_view_contract(case, c):
    generator = torch.Generator().manual_seed(3)
    t = _build(case, c)
    x = case.inputs(case.batch, generator)
    ctx = _context(c, case.batch, generator)
    with torch.no_grad():
        z, _ = t.inverse(x, ctx)
    assert t.inv.inv is t
    if case.ladj_reference is None:
        check_transform(t.inv, z, ctx, atol=case.atol)


def _public_transform_classes():
    modules = [pf.transforms]
    for name in ("manifolds", "continuous"):
        module = getattr(pf, name, None)
        if module is not None:
            modules.append(module)
    found = set()
    for module in modules:
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Transform)
                and value.__module__.startswith("pushforward")
                and not inspect.isabstract(value)
                and value.__name__ not in {"Transform", "Chain", "Inverse"}
                and not value.__name__.startswith("Abstract")
            ):
                found.add(value)
    return found


def test_every_public_transform_has_a_case():
    covered = set()
    generator = torch.Generator().manual_seed(0)
    for case in CASES:
        for c in case.contexts:
            t = case.make(c)
            stack = [t]
            while stack:
                m = stack.pop()
                covered.add(type(m))
                stack.extend(m.children())
    del generator
    missing = sorted(cls.__name__ for cls in _public_transform_classes() - covered)
    assert not missing, f"transforms without a contract case: {missing}"
