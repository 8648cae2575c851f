"""Every base distribution follows the ``BaseDistribution`` template: the public ``log_prob`` and
``sample`` (with their checks) live once in the base class; a family writes ``_log_prob``,
``_sample`` and, for a bounded support, ``_check_z``."""

import inspect

import pytest
import torch

import pushforward as pf
from pushforward.core import BaseDistribution
from pushforward.manifolds import (
    Dirichlet,
    UniformSimplex,
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherMixture,
)


def _bases():
    found = set()
    for module in (pf.distributions, pf.manifolds, pf.discretized):
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, BaseDistribution)
                    and value is not BaseDistribution):
                found.add(value)
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _bases(), ids=lambda c: c.__name__)
def test_no_base_overrides_the_public_methods(cls):
    for name in ("log_prob", "sample"):
        assert getattr(cls, name) is getattr(BaseDistribution, name), f"{cls.__name__}.{name}"


MANIFOLD = [
    (lambda: UniformSphere(3), "sphere"),
    (lambda: VonMisesFisher(3, concentration=2.0), "sphere"),
    (lambda: VonMisesFisherMixture(3, components=2), "sphere"),
    (lambda: Dirichlet(3, concentration=2.0), "simplex"),
    (lambda: UniformSimplex(3), "simplex"),
]


@pytest.mark.parametrize(("make", "space"), MANIFOLD,
                         ids=[m().__class__.__name__ for m, _ in MANIFOLD])
def test_manifold_bases_check_once_in_the_template(make, space):
    base = make()
    z = base.sample(5)
    assert z.shape == (5, 3) and base.log_prob(z).shape == (5,)
    assert base.sample(0).shape == (0, 3)
    off = z * 1.5 if space == "sphere" else z + 0.5
    with pytest.raises(ValueError, match=type(base).__name__):
        base.log_prob(off)  # off the manifold
    with pf.validation(False):
        base.log_prob(off)  # the switch turns the check off
    with pytest.raises(ValueError, match="z"):
        base.log_prob(torch.ones(5, 4))
    with pytest.raises(ValueError, match="temperature"):
        base.sample(3, temperature=0.5)
    with pytest.raises(ValueError):
        base.sample(-1)
    z2, log_p = base.sample_and_log_prob(4)
    torch.testing.assert_close(log_p, base.log_prob(z2))
