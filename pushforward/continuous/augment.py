"""Augmented flows: a density on ``x ∈ ℝ^d`` from a flow on the lifted space ``[x, a] ∈ ℝ^{d+k}``.

The transform stays a square bijection on ``d + k`` dimensions (so the Transform contract and
``check_transform`` apply to it unchanged); the augmentation lives at the Flow level, in
``AugmentedFlow``, which owns the auxiliary distribution ``q(a)`` and marginalises ``a`` out by
importance sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import BaseDistribution, Chain, Flow, Transform
from pushforward.distributions import DiagonalNormal, StandardNormal
from pushforward.specs import serializable

__all__ = ["AugmentedFlow"]


def _auxiliary(q: str | BaseDistribution, augment: int) -> nn.Module:
    if q == "learned":
        return DiagonalNormal(augment)
    if q == "fixed":
        return StandardNormal(augment)
    if isinstance(q, str):
        raise ValueError(f"AugmentedFlow: unknown q {q!r}; use 'learned', 'fixed' or a module")
    if not isinstance(q, nn.Module) or not hasattr(q, "log_prob") or not hasattr(q, "sample"):
        raise TypeError(
            f"AugmentedFlow: q must be 'learned', 'fixed' or a base distribution module, got "
            f"{type(q).__name__}"
        )
    if tuple(getattr(q, "event_shape", ())) != (augment,):
        raise ValueError(
            f"AugmentedFlow: q has event shape {tuple(getattr(q, 'event_shape', ()))}, the "
            f"augmentation has ({augment},)"
        )
    return q


@serializable("augmented-flow")
class AugmentedFlow(Flow):
    """A flow on ``[x, a] ∈ ℝ^{d+k}`` used as a model of ``x ∈ ℝ^d`` (augmented flow / ANODE).

    The joint density is the flow's: ``log p(x, a) = log p_0(z) + log|det ∂z/∂[x, a]|``,
    ``z = f⁻¹([x, a])``, with ``f`` any transform on ``d + k`` dimensions (typically
    ``CNF(field, d, augment=k)``). The marginal ``p(x) = ∫ p(x, a) da`` has no closed form, so
    ``log_prob`` returns the importance-weighted lower bound (Burda et al. 2015)

        log p(x) ≥ L_K(x) = E[ log (1/K) Σ_k p(x, a_k) / q(a_k) ],   a_1..a_K ~ q(a),

    estimated with ``K = samples`` draws per point: ``L_1`` is the ELBO, ``L_K`` increases with
    ``K`` and tends to ``log p(x)``. ``log_prob`` therefore keeps ``Flow.log_prob``'s signature
    and shape but returns this stochastic bound (maximising it trains a valid model). Set ``K``
    with ``samples=`` here, by assigning ``flow.samples``, or per call
    (``flow.log_prob(x, samples=256)`` for evaluation). Sampling draws ``[x, a]`` from the joint
    flow and drops ``a``.

    Args:
        transform: the joint transform on ``features + augment`` dimensions.
        base: the base distribution on ``features + augment`` dimensions.
        augment: ``k``, the number of auxiliary dimensions (default: ``transform.augment``).
        q: the auxiliary distribution: ``"learned"`` (a diagonal Gaussian with learnable mean
            and scale), ``"fixed"`` (``N(0, I)``), or a base-distribution module on ``k``
            dimensions; a conditional one (``context_features > 0``) gets ``[x, context]``.
        samples: ``K``, importance samples per point in ``log_prob`` (default 1: the ELBO).
        embedding: optional context embedding (as in ``Flow``).
        context_features: raw context width or shape (as in ``Flow``).
        data_transform: an optional bijection on the ``d`` data dimensions applied after ``a``
            is dropped (data side last), e.g. a fixed standardisation:
            ``x = data_transform(y)``, ``log p(x) ≥ L_K(y) + log|det ∂y/∂x|``.

    References:
        Augmented neural ODEs. E. Dupont, A. Doucet, Y. W. Teh, 2019. arXiv:1904.01681.
        Augmented normalizing flows: bridging the gap between generative flows and latent
        variable models. C.-W. Huang, L. Dinh, A. Courville, 2020. arXiv:2002.07101.
        Importance weighted autoencoders. Y. Burda, R. Grosse, R. Salakhutdinov, 2015.
        arXiv:1509.00519.
    """

    def __init__(
        self,
        transform: Transform,
        base: nn.Module,
        augment: int | None = None,
        q: str | BaseDistribution = "learned",
        samples: int = 1,
        embedding: nn.Module | None = None,
        context_features: int | Sequence[int] | None = None,
        data_transform: Transform | None = None,
    ) -> None:
        super().__init__(transform, base, embedding, context_features)
        augment = _v.check_int(getattr(transform, "augment", 0) if augment is None else augment,
                               "AugmentedFlow", "augment", type_error=False)
        total = self.event_shape
        if len(total) != 1 or total[0] <= augment:
            raise ValueError(
                f"AugmentedFlow: the transform acts on {total}, which cannot hold {augment} "
                "augmented dimensions plus at least one data dimension"
            )
        self.augment = augment
        self.features = total[0] - augment
        self.joint_shape = total
        self.event_shape = (self.features,)
        self.q = _auxiliary(q, augment)
        self.samples = samples
        if data_transform is not None and not isinstance(data_transform, Transform):
            raise TypeError("AugmentedFlow: data_transform must be a pushforward Transform")
        self.data_transform = data_transform

    def wrap_data(self, layers: list[Transform]) -> AugmentedFlow:
        """A copy-free view of this flow with ``layers`` appended on the data side.

        It shares every module; used by ``Flow.prepend``.
        """
        if not layers:
            return self
        current = [] if self.data_transform is None else [self.data_transform]
        return AugmentedFlow(
            self.transform, self.base, self.augment, self.q, self.samples, self.embedding,
            self.context_shape if self.embedding is not None else None,
            Chain([*current, *layers]),
        )

    @property
    def samples(self) -> int:
        """``K``, importance samples per point used by ``log_prob``."""
        return self._samples

    @samples.setter
    def samples(self, value: int) -> None:
        self.__dict__["_samples"] = _samples(value)

    def _draw_auxiliary(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``a ~ q`` (reparametrised) and ``log q(a)``, one draw per row of ``x``."""
        q_features = int(getattr(self.q, "context_features", 0))
        if not q_features:
            a, log_q = self.q.sample_and_log_prob(x.shape[0])
            return a.to(x), log_q.to(x)
        q_context = x if context is None else torch.cat([x, context.to(x)], dim=-1)
        if q_context.shape[-1] != q_features:
            raise ValueError(
                f"AugmentedFlow: q reads a context of width {q_features}, but [x, context] has "
                f"width {q_context.shape[-1]}"
            )
        return self.q.sample_and_log_prob(x.shape[0], q_context)

    def log_prob(
        self, x: Tensor, context: Tensor | None = None, samples: int | None = None
    ) -> Tensor:
        """The importance-weighted bound ``L_K(x) ≤ log p(x)``, shape ``(batch,)``.

        Args:
            x: data, ``(batch, features)``.
            context: ``(batch, context_features)`` for a conditional flow.
            samples: ``K`` for this call (default ``self.samples``).
        """
        k = self.samples if samples is None else _samples(samples)
        if _v.is_validating():
            _v.check_tensor(x, self.event_shape, "AugmentedFlow.log_prob", "x")
        batch = x.shape[0]
        ctx = self.embed_context(context, batch)
        outer = x.new_zeros(batch)
        if self.data_transform is not None:
            with _v.validation(False):
                x, outer = self.data_transform.inverse(x, ctx)
        xs = x.repeat(k, 1)
        ctxs = None if ctx is None else ctx.repeat(k, 1)
        with _v.validation(False):
            a, log_q = self._draw_auxiliary(xs, ctxs)
            z, ladj = self.transform.inverse(torch.cat([xs, a], dim=-1), ctxs)
            log_joint = self._base_log_prob(z, ctxs) + ladj
        weights = (log_joint - log_q).reshape(k, batch)
        return torch.logsumexp(weights, dim=0) - math.log(k) + outer

    def rsample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """``x`` from the joint flow with ``a`` dropped, ``(n, d)`` or ``(n, B, d)``."""
        joint = super().rsample(n, context, temperature)
        y = joint[..., : self.features]
        if self.data_transform is None:
            return y
        ctx = None
        if context is not None:
            ctx = self.embed_context(context.repeat(y.shape[0], 1), None)
        with _v.validation(False):
            x, _ = self.data_transform(y.reshape(-1, self.features), ctx)
        return x.reshape(y.shape)

    @torch.no_grad()
    def sample(self, n: int, context: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """Samples without gradients, ``(n, d)`` or ``(n, B, d)`` (``a`` dropped)."""
        return self.rsample(n, context, temperature)

    def rsample_and_log_prob(
        self, n: int, context: Tensor | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Samples and their ``log_prob`` bound (a second pass: ``K`` solves per sample)."""
        x = self.rsample(n, context, temperature)
        if context is None:
            return x, self.log_prob(x)
        flat = x.reshape(-1, self.features)
        bound = self.log_prob(flat, context.repeat(x.shape[0], 1))
        return x, bound.reshape(x.shape[:2])

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Same as ``rsample_and_log_prob``."""
        return self.rsample_and_log_prob(n, context, temperature)

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"features={self.features}, augment={self.augment}, samples={self.samples}"


def _samples(value: int) -> int:
    return _v.check_int(value, "AugmentedFlow", "samples (K)", type_error=False)
