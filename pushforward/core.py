"""The change-of-variables engine: Transform, Chain, Inverse, BaseDistribution and Flow.

Conventions (SPEC §0): ``forward`` is the generative direction ``z -> x`` and returns
``(x, ladj)`` with ``ladj = log|det ∂x/∂z|`` per sample, shape ``(batch,)``; ``inverse`` is the
normalizing direction ``x -> z`` and returns ``(z, log|det ∂z/∂x|)``. A flow's density is

    log p(x) = log p_0(z) + log|det ∂z/∂x|,   z = f⁻¹(x),

computed in one inverse pass. The transform contract lives in ``pushforward._transform``, the
flow in ``pushforward._flow``; this module defines the base-distribution template and is the
one place to import all of them from.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward._flow import Flow
from pushforward._flow_distribution import FlowDistribution
from pushforward._transform import Chain, Inverse, Shape, Transform
from pushforward.specs import from_spec, serializable, to_spec

__all__ = ["Transform", "Chain", "Inverse", "BaseDistribution", "Flow", "FlowDistribution",
           "serializable", "to_spec", "from_spec"]


class BaseDistribution(nn.Module):
    """Interface of a base distribution ``p_0``: an ``nn.Module`` with ``log_prob`` and ``sample``.

    A template, as ``Transform`` is: ``log_prob`` and ``sample`` check their inputs once here
    (the shape of ``z``, the sample count, the temperature, the context of a conditional base,
    while validation is on) and call the subclass's ``_log_prob(z, context) -> (batch,)`` and
    ``_sample(n, context, temperature) -> (n, *event_shape)`` (reparametrised where the family
    allows). A base with a bounded support (a manifold) checks the points of ``log_prob``
    in ``_check_z(z)``, called here while validation is on, as ``Transform._check_x`` is.
    Subclasses declare ``event_shape`` and ``context_features`` and may override
    ``sample_and_log_prob``. A conditional base gets one context row per sample: ``context``
    is ``(n, context_features)``.
    """

    event_shape: Shape
    context_features: int = 0
    # True for N(0, I) without parameters: ``Flow.log_prob`` may then fold ``log p_0`` into the
    # fused node of a chain of affine layers (``pushforward.fused_affine``).
    standard_normal: bool = False

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p_0(z)``, shape ``(batch,)``.

        Raises:
            ValueError: ``z`` or the context is wrongly shaped or not finite, or ``z`` lies
                outside the support (validation on).
        """
        if _v.is_validating():
            owner = type(self).__name__
            _v.check_tensor(z, self.event_shape, f"{owner}.log_prob", "z")
            if _v.reads_values(z):
                self._check_z(z)
            if self.context_features:
                _v.check_context(context, self.context_features, z.shape[0], owner)
        return self._log_prob(z, context)

    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``n`` draws ``(n, *event_shape)``; ``temperature`` scales the spread where defined.

        Raises:
            TypeError: ``n`` is not an integer.
            ValueError: ``n < 0``, a bad temperature or context.
        """
        owner = type(self).__name__
        temperature = float(temperature)
        if not temperature > 0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a positive finite number, got {temperature}")
        n = _v.check_count(n, f"{owner}.sample")
        if self.context_features and _v.is_validating():
            _v.check_context(context, self.context_features, n, owner)
        return self._sample(n, context, temperature)

    def _check_z(self, z: Tensor) -> None:
        """Raise ``ValueError`` if a point of ``z`` lies outside the support (default: none)."""

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} implements no log_prob")

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} implements no sample")

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None, **options: float
    ) -> tuple[Tensor, Tensor]:
        """``z ~ p_0`` and ``log p_0(z)``; ``options`` (e.g. ``temperature``) go to ``sample``."""
        z = self.sample(n, context, **options)
        return z, self.log_prob(z, context)
