"""One keyword for the context width across layers: ``context_features`` (``context=`` alias).

Every public transform class whose constructor takes a context width names it
``context_features``; the layers that used to say ``context`` keep it as an alias.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import pushforward as pf
from pushforward.core import Transform
from pushforward.transforms import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    Planar,
    Radial,
    coupling_mask,
)


def _transform_classes() -> list[type]:
    found = {}
    for module in (pf.transforms, pf.manifolds, pf.continuous):
        for name in getattr(module, "__all__", dir(module)):
            value = getattr(module, name, None)
            if (inspect.isclass(value) and issubclass(value, Transform)
                    and name not in {"Transform", "Chain", "Inverse"}):
                found[name] = value
    return [found[k] for k in sorted(found)]


@pytest.mark.parametrize("cls", _transform_classes(), ids=lambda c: c.__name__)
def test_context_width_is_called_context_features(cls):
    parameters = inspect.signature(cls.__init__).parameters
    if "context" in parameters:
        assert "context_features" in parameters, (
            f"{cls.__name__}: the context width must be the keyword context_features "
            "(context= may stay as an alias)")
        assert parameters["context"].kind is inspect.Parameter.KEYWORD_ONLY


MASK = coupling_mask(4, "half")


@pytest.mark.parametrize("build", [
    lambda **kw: Planar(4, **kw), lambda **kw: Radial(4, **kw),
    lambda **kw: Coupling(MASK, "affine", **kw), lambda **kw: AffineCoupling(MASK, **kw),
    lambda **kw: AdditiveCoupling(MASK, **kw),
], ids=["Planar", "Radial", "Coupling", "AffineCoupling", "AdditiveCoupling"])
def test_context_alias_and_positional_spelling_agree(build):
    for kwargs in ({"context_features": 3}, {"context": 3}):
        torch.manual_seed(0)
        t = build(**kwargs)
        assert t.context_features == 3
        x = torch.randn(2, 4)
        assert t(x, torch.randn(2, 3))[0].shape == (2, 4)
    with pytest.raises(TypeError, match="disagree"):
        build(context_features=2, context=3)


def test_presets_keep_context():
    flow = pf.flows.build("realnvp", features=2, context=3)
    assert flow.context_features == 3
