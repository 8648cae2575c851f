"""Every module follows the default dtype at construction, and ``.to(dtype)`` afterwards.

Built under ``torch.set_default_dtype(float64)`` (and float32), every floating parameter and
buffer of every transform in the contract registry, every public class of ``transforms``,
``manifolds``, ``distributions``, ``continuous`` and ``nn``, and every preset in
``pf.flows.names()`` has that dtype, and its log_prob / sample / round trips run in it.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from contract import all_cases
from test_preset_kit import SMALL, _sized
from torch import nn

import pushforward as pf
from pushforward import _registry
from pushforward.core import Transform

DTYPES = [torch.float64, torch.float32]
OTHER = {torch.float64: torch.float32, torch.float32: torch.float64}
CASES = all_cases()


@pytest.fixture(params=DTYPES, ids=["float64", "float32"])
def default_dtype(request):
    """Set the default dtype for one test and restore the previous one afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    try:
        yield request.param
    finally:
        torch.set_default_dtype(previous)


def wrong_dtypes(module: nn.Module, dtype: torch.dtype) -> list[str]:
    """Names and dtypes of the floating parameters and buffers not in ``dtype``."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [f"{name}: {t.dtype}" for name, t in tensors
            if t.is_floating_point() and t.dtype != dtype]


def _round_trip(t: Transform, x: torch.Tensor, context: torch.Tensor | None) -> None:
    dtype = x.dtype
    with torch.no_grad():
        z, ladj_inv = t.inverse(x, context)
        x2, ladj = t(z, context)
    for value in (z, ladj_inv, x2, ladj):
        assert value.dtype == dtype
    tol = 1e-6 if dtype == torch.float64 else 2e-2
    assert torch.allclose(x2, x, atol=tol, rtol=tol)


# -- the transform registry -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("case", "c"),
    [pytest.param(case, c, id=f"{case.name}-ctx{c}") for case in CASES for c in case.contexts],
)
def test_registry_follows_default_dtype(case, c, default_dtype):
    torch.manual_seed(0)
    t = case.make(c).eval()
    assert not wrong_dtypes(t, default_dtype), wrong_dtypes(t, default_dtype)
    generator = torch.Generator().manual_seed(0)
    x = case.inputs(3, generator).to(default_dtype)
    context = None if c == 0 else torch.randn(3, c, generator=generator).to(default_dtype)
    _round_trip(t, x, context)
    # ... and .to(dtype) afterwards moves everything.
    other = OTHER[default_dtype]
    t = t.to(other)
    assert not wrong_dtypes(t, other), wrong_dtypes(t, other)
    _round_trip(t, x.to(other), None if context is None else context.to(other))


# -- every public class, built with simple arguments ------------------------------------------
def _sphere(n: int) -> torch.Tensor:
    g = torch.randn(4, n)
    return g / g.norm(dim=-1, keepdim=True)


def _simplex(n: int) -> torch.Tensor:
    e = torch.rand(4, n) + 0.1
    return e / e.sum(-1, keepdim=True)


def _build_public(name: str):
    """Simple constructor arguments for the public classes that ``cls(3)`` does not build."""
    from pushforward.transforms import Affine, coupling_mask

    special = {
        "Permutation": lambda cls: cls([2, 0, 1]),
        "Coupling": lambda cls: cls(coupling_mask(3, "half")),
        "AffineCoupling": lambda cls: cls(coupling_mask(3, "half")),
        "AdditiveCoupling": lambda cls: cls(coupling_mask(3, "half")),
        "IntegerCoupling": lambda cls: cls(coupling_mask(3, "half")),
        "Sigmoid": lambda cls: cls(),
        "Logit": lambda cls: cls(),
        "InvertibleConv1x1": lambda cls: cls((3, 2, 2)),
        "Squeeze": lambda cls: cls((2, 4, 4)),
        "MultiScale": lambda cls: cls([pf.transforms.Squeeze((2, 4, 4))]),
        "CNF": lambda cls: cls(pf.continuous.TimeMLP(3, hidden=(8,)), 3),
        "ConcatSquash": lambda cls: cls(3, 4, 1),
        "AugmentedFlow": lambda cls: cls(Affine(4), pf.StandardNormal(4), augment=1),
        "ConditionalDiagonalNormal": lambda cls: cls(3, context_features=2),
        "MLP": lambda cls: cls(3, 4),
        "ConvNet": lambda cls: cls(2, 3),
        "MaskedLinear": lambda cls: cls(torch.ones(4, 3, dtype=torch.bool)),
        "Standardization": lambda cls: cls([0.0, 1.0, 2.0], [1.0, 2.0, 3.0]),
        "Reshape": lambda cls: cls((1, 3), (3,)),
    }
    return special.get(name, lambda cls: cls(3))


def _public_classes() -> list[tuple[str, type]]:
    found: dict[str, type] = {}
    for module in (pf.transforms, pf.manifolds, pf.distributions, pf.continuous, pf.nn):
        names = getattr(module, "__all__", None) or dir(module)
        for name in names:
            value = getattr(module, name, None)
            if (inspect.isclass(value) and issubclass(value, nn.Module)
                    and value.__module__.startswith("pushforward")
                    and not inspect.isabstract(value)
                    and name not in {"Transform", "Chain", "Inverse", "BaseDistribution"}
                    and not name.startswith("Abstract")):
                found[f"{module.__name__.split('.')[-1]}.{name}"] = value
    return sorted(found.items())


def _exercise(obj: nn.Module, dtype: torch.dtype) -> None:
    """Run the object's main method on inputs of ``dtype`` and check the result's dtype."""
    name = type(obj).__name__
    if isinstance(obj, Transform):
        shape = obj.event_shape or (3,)
        if name in {"NormalizedTranslation", "NormalizedLinear", "NormalizedAffine",
                    "SphereCNF"} or hasattr(obj, "sphere"):
            x = _sphere(shape[0])
        elif name in {"Calibration", "GeneralizedCalibration"}:
            x = _simplex(shape[0])
        elif name in {"Sigmoid", "LogitPreprocessing"}:
            x = 0.1 + 0.8 * torch.rand(4, *shape)
        else:
            x = torch.randn(4, *shape)
        _round_trip(obj.eval(), x.to(dtype), None)
    elif isinstance(obj, pf.Flow) or hasattr(obj, "sample") and hasattr(obj, "log_prob"):
        width = getattr(obj, "context_features", 0)
        context = torch.randn(4, width, dtype=dtype) if width else None
        x = obj.sample(4, context)
        assert x.dtype == dtype
        log_p = obj.log_prob(x, context)
        assert log_p.dtype == dtype and bool(torch.isfinite(log_p).all())


@pytest.mark.parametrize(("name", "cls"),
                         [pytest.param(n, c, id=n) for n, c in _public_classes()])
def test_public_class_follows_default_dtype(name, cls, default_dtype):
    torch.manual_seed(0)
    obj = _build_public(cls.__name__)(cls)
    assert not wrong_dtypes(obj, default_dtype), wrong_dtypes(obj, default_dtype)
    _exercise(obj, default_dtype)
    other = OTHER[default_dtype]
    obj = obj.to(other)
    assert not wrong_dtypes(obj, other), wrong_dtypes(obj, other)
    _exercise(obj, other)


# -- every preset ------------------------------------------------------------------------------
def _preset_options(name: str) -> list[dict]:
    """Small configurations of a preset for each kind of data it declares (pf.flows.accepts)."""
    accepted = pf.flows.accepts(name)
    parameters = inspect.signature(_registry._REGISTRY[name]).parameters
    small = {k: v for k, v in (("transforms", 2), ("hidden", (8, 8))) if k in parameters}
    options = []
    if accepted & {"vectors", "sphere", "simplex"}:
        options.append({"features": 3, **small})
        if "context" in accepted:
            options.append({"features": 3, "context": 2, **small})
    if "images" in accepted:
        options.append({"shape": (2, 4, 4)})
        if "context" in accepted and "vectors" not in accepted:
            options.append({"shape": (2, 4, 4), "context": 2})
    if "audio" in accepted:  # waveform segments conditioned on their mel spectrogram
        options.append({**SMALL[name], **_sized(name)})
    return options


@pytest.mark.parametrize("name", pf.flows.names())
def test_preset_follows_default_dtype(name, default_dtype):
    options = _preset_options(name)
    assert options, f"{name}: no configuration to build (no features= or shape= option)"
    for opts in options:
        torch.manual_seed(0)
        flow = pf.flows.build(name, **opts).eval()
        assert not wrong_dtypes(flow, default_dtype), (opts, wrong_dtypes(flow, default_dtype))
        for dtype in (default_dtype, OTHER[default_dtype]):
            flow = flow.to(dtype)
            assert not wrong_dtypes(flow, dtype), (opts, wrong_dtypes(flow, dtype))
            c = flow.context_features  # an audio preset is always conditional
            context = torch.randn(3, c, dtype=dtype) if c else None
            with torch.no_grad():
                x = flow.sample(3) if context is None else flow.sample(1, context)[0]
                log_p = flow.log_prob(x, context)
            assert x.dtype == dtype and log_p.dtype == dtype, opts
            assert log_p.shape == (3,) and bool(torch.isfinite(log_p).all()), opts
            with torch.no_grad():
                z, _ = flow.transform.inverse(x, context)
                x2, _ = flow.transform(z, context)
            tol = 1e-3 if dtype == torch.float64 else 5e-2  # ODE presets: solver tolerance
            assert torch.allclose(x2, x, atol=tol, rtol=tol), (opts, float((x2 - x).abs().max()))


def test_fixture_restores_the_default_dtype():
    assert torch.get_default_dtype() == torch.float32
