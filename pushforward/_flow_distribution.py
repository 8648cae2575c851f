"""``FlowDistribution``: a ``Flow`` seen as a ``torch.distributions.Distribution``.

Shapes follow ``torch.distributions``: ``sample(sample_shape)`` is
``(*sample_shape, *batch_shape, *event_shape)`` and ``log_prob(value)`` broadcasts ``value``'s
leading dimensions against ``batch_shape``. Without a context the batch shape is ``()`` (or what
``expand`` gave); with a context ``(*batch, C)`` it is ``batch``. Moments, entropy and
(inverse) CDFs have no closed form for a flow: they raise ``NotImplementedError`` saying what to
use instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from pushforward import _validation as _v

if TYPE_CHECKING:  # pragma: no cover
    from pushforward.core import Flow

__all__ = ["FlowDistribution"]


def _sample_shape(sample_shape: object) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` of non-negative integers (errors name the problem)."""
    try:
        shape = torch.Size(sample_shape)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "FlowDistribution.sample: sample_shape must be a sequence of non-negative "
            f"integers, got {sample_shape!r}"
        ) from None
    if any(s < 0 for s in shape):
        raise ValueError(
            f"FlowDistribution.sample: sample_shape must be >= 0 in every entry, got "
            f"{tuple(shape)}"
        )
    return shape


class FlowDistribution(Distribution):
    """A ``torch.distributions.Distribution`` view of a ``Flow`` (optionally at a fixed context).

    ``log_prob``, ``sample`` and ``rsample`` (reparametrised: gradients reach the flow's
    parameters) follow the ``torch.distributions`` shape rules, as does ``expand``.

    Args:
        flow: the flow.
        context: None, or a context ``(*batch_shape, context_features)``; each batch element is
            the flow at one context row.
        batch_shape: the batch shape (default: the context's leading shape, or ``()``); a
            context is broadcast to it.

    Example:
        >>> import torch, pushforward as pf
        >>> d = pf.flows.MAF(2, transforms=1).distribution()
        >>> x = d.sample((5,))
        >>> x.shape, d.log_prob(x).shape, d.log_prob(d.sample()).shape
        (torch.Size([5, 2]), torch.Size([5]), torch.Size([]))
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(
        self,
        flow: Flow,
        context: Tensor | None = None,
        batch_shape: Sequence[int] | None = None,
    ) -> None:
        width = flow.context_features
        if context is not None:
            if not isinstance(context, Tensor) or context.dim() < 1:
                raise ValueError(
                    f"Flow.distribution: context must be a tensor (*batch, {width}), got "
                    f"{type(context).__name__} {tuple(getattr(context, 'shape', ()))}"
                )
            if _v.is_validating():
                flat = context.reshape(-1, context.shape[-1]) if context.dim() > 1 else None
                _v.check_context(flat if flat is not None else context, width, None,
                                 "Flow.distribution")
        elif width and _v.is_validating():
            _v.check_context(None, width, None, "Flow.distribution")
        lead = torch.Size(()) if context is None else context.shape[:-1]
        batch = lead if batch_shape is None else torch.Size(batch_shape)
        if context is not None and batch != lead:
            try:
                context = context.expand(*batch, context.shape[-1])
            except RuntimeError:
                raise ValueError(
                    f"Flow.distribution: a context of batch shape {tuple(lead)} cannot be "
                    f"broadcast to batch shape {tuple(batch)}"
                ) from None
        self.flow = flow
        self.context = context
        super().__init__(batch, torch.Size(flow.event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # noqa: D102
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(
        self, batch_shape: Sequence[int], _instance: FlowDistribution | None = None
    ) -> FlowDistribution:
        """The same flow with batch shape ``batch_shape`` (the context broadcast to it)."""
        return FlowDistribution(self.flow, self.context, batch_shape)

    # -- sampling -----------------------------------------------------------------------------
    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:  # noqa: B008
        """Reparametrised samples ``(*sample_shape, *batch_shape, *event_shape)``."""
        sample_shape = _sample_shape(sample_shape)
        n, m = math.prod(sample_shape), math.prod(self.batch_shape)
        if self.context is None:
            x = self.flow.rsample(n * m)
        else:
            context = self.context.reshape(m, self.context.shape[-1])
            x = self.flow.rsample(n, context) if m else context.new_zeros(n, 0, *self.event_shape)
        return x.reshape(*sample_shape, *self.batch_shape, *self.event_shape)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:  # noqa: B008
        """Samples without gradients, ``(*sample_shape, *batch_shape, *event_shape)``."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    # -- density ------------------------------------------------------------------------------
    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(value)``, the event dimensions summed out.

        ``value`` is ``(*sample_shape, *batch_shape, *event_shape)``; its leading dimensions
        broadcast against ``batch_shape``.
        """
        if not isinstance(value, Tensor):
            raise TypeError(f"FlowDistribution.log_prob: value must be a torch.Tensor, got "
                            f"{type(value).__name__}")
        event = tuple(self.event_shape)
        k = len(event)
        if value.dim() < k or tuple(value.shape[value.dim() - k:]) != event:
            raise ValueError(
                f"FlowDistribution.log_prob: value shape {tuple(value.shape)} must end with the "
                f"event shape {event}"
            )
        lead = value.shape[: value.dim() - k]
        try:
            shape = torch.broadcast_shapes(lead, self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"FlowDistribution.log_prob: value shape {tuple(value.shape)} does not broadcast "
                f"with batch shape {tuple(self.batch_shape)} and event shape {event}"
            ) from None
        flat = value.expand(*shape, *event).reshape(-1, *event)
        context = None
        if self.context is not None:
            width = self.context.shape[-1]
            context = self.context.expand(*shape, width).reshape(-1, width)
        return self.flow.log_prob(flat, context).reshape(shape)

    # -- what a flow has no closed form for ---------------------------------------------------
    def _no_closed_form(self, what: str, instead: str) -> NoReturn:
        raise NotImplementedError(
            f"FlowDistribution.{what}: a normalizing flow has no closed-form {what}; {instead}"
        )

    @property
    def mean(self) -> Tensor:  # noqa: D102
        self._no_closed_form("mean", "estimate it by Monte Carlo from samples, e.g. "
                                     "d.sample((10_000,)).mean(0)")

    @property
    def mode(self) -> Tensor:  # noqa: D102
        self._no_closed_form("mode", "maximise d.log_prob(x) over x numerically (e.g. with "
                                     "torch.optim from a sample)")

    @property
    def variance(self) -> Tensor:  # noqa: D102
        self._no_closed_form("variance", "estimate it by Monte Carlo from samples, e.g. "
                                         "d.sample((10_000,)).var(0)")

    @property
    def stddev(self) -> Tensor:  # noqa: D102
        self._no_closed_form("stddev", "estimate it by Monte Carlo from samples, e.g. "
                                       "d.sample((10_000,)).std(0)")

    def entropy(self) -> Tensor:  # noqa: D102
        self._no_closed_form("entropy", "estimate it by Monte Carlo, e.g. "
                                        "-d.log_prob(d.sample((10_000,))).mean(0)")

    def cdf(self, value: Tensor) -> Tensor:  # noqa: D102
        self._no_closed_form("cdf", "estimate P(X ≤ value) by Monte Carlo, e.g. "
                                    "(d.sample((10_000,)) <= value).all(-1).float().mean(0)")

    def icdf(self, value: Tensor) -> Tensor:  # noqa: D102
        self._no_closed_form("icdf", "a multivariate flow has no quantile function; use "
                                     "empirical quantiles of d.sample((n,)) per coordinate")

    def enumerate_support(self, expand: bool = True) -> Tensor:  # noqa: D102
        raise NotImplementedError(
            "FlowDistribution.enumerate_support: a flow's support is continuous (the reals), "
            "so it cannot be enumerated; draw samples with d.sample(...) instead"
        )
