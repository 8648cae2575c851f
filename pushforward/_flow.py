"""``Flow``: a base distribution pushed forward through a transform. Re-exported by ``core``.

``x = f(z)``, ``z ~ p_0``; the density is computed in one inverse pass,

    log p(x) = log p_0(z) + log|det ∂z/∂x|,   z = f⁻¹(x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward._flow_distribution import FlowDistribution
from pushforward._transform import Chain, Shape, Transform
from pushforward.fused import fast_path, fast_path_enabled, global_hooks
from pushforward.fused_affine import affine_chain
from pushforward.specs import serializable, to_spec

__all__ = ["Flow"]

@serializable("flow")
class Flow(nn.Module):
    """A normalizing flow: a base distribution pushed forward through a transform.

    ``x = f(z)``, ``z ~ p_0``, and ``log p(x) = log p_0(f⁻¹(x)) + log|det ∂f⁻¹/∂x|``.

    Args:
        transform: the generative map ``f`` (a list is chained).
        base: the base distribution ``p_0``.
        embedding: optional network applied once per call to the raw context before the
            transform and the base see it; its output must be ``(batch, k)`` with ``k`` the
            width the transform reads (checked after the embedding runs).
        context_features: the raw context's width, or its shape (e.g. ``(2, 5)`` for a
            time series fed to a convolutional embedding). Only meaningful with an
            ``embedding``; None there means any raw shape with a batch dimension.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.Flow(pf.transforms.Affine(2), pf.StandardNormal(2))
        >>> flow.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    def __init__(
        self,
        transform: Transform | Sequence[Transform],
        base: nn.Module,
        embedding: nn.Module | None = None,
        context_features: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(transform, Transform):
            transform = Chain(transform)
        self.transform = transform
        self.base = base
        self.embedding = embedding
        inner = max(transform.context_features, getattr(base, "context_features", 0))
        self._inner_context = inner
        # The raw context's event shape: None = not checked (any shape, an embedding's input).
        self.context_shape: Shape | None = None if embedding is not None else (inner,)
        self.context_features = inner
        if context_features is not None:
            shape = _v.as_shape(context_features)
            if embedding is None and shape != (inner,):
                raise ValueError(
                    f"Flow: context_features={context_features} but the transform and base "
                    f"read {inner} context features (a different raw shape needs an embedding)"
                )
            self.context_shape = shape
            self.context_features = shape[0] if len(shape) == 1 else math.prod(shape)
        if embedding is not None and not inner:
            raise ValueError("Flow: an embedding was given but neither the transform nor the "
                             "base reads a context")
        event = transform.event_shape
        if event is None:
            event = tuple(getattr(base, "event_shape", ())) or None
        if event is None:
            raise ValueError("Flow: neither the transform nor the base declares an event shape")
        self.event_shape: Shape = tuple(event)
        latent, base_shape = transform.latent_shape, getattr(base, "event_shape", None)
        if latent is not None and base_shape is not None and tuple(latent) != tuple(base_shape):
            raise ValueError(
                f"Flow: the transform's base-side shape {tuple(latent)} differs from the base "
                f"distribution's event shape {tuple(base_shape)}"
            )

    # -- helpers ------------------------------------------------------------------------------
    def _check_raw_context(self, context: Tensor | None, batch: int | None) -> None:
        """Check the context as the caller gives it (before any embedding)."""
        if self.context_shape is not None and len(self.context_shape) == 1:
            _v.check_context(context, self.context_features, batch, "Flow")
        else:
            if context is None:
                raise ValueError("Flow: is conditional and needs a context")
            _v.check_tensor(context, self.context_shape, "Flow", "context")
            if batch is not None and context.shape[0] != batch:
                raise ValueError(
                    f"Flow: context has batch size {context.shape[0]} but the input has {batch}"
                )
        if context is not None:
            _v.check_dtype(context, self, "Flow", "context")

    def _context(self, context: Tensor | None, batch: int | None) -> Tensor | None:
        """The context the transform and base read: checked, embedded once, checked again."""
        validating = _v.is_validating()
        if validating:
            self._check_raw_context(context, batch)
        if context is not None and self.embedding is not None:
            raw_batch = context.shape[0]
            context = self.embedding(context)
            if validating:
                _v.check_context(context, self._inner_context, raw_batch,
                                 "Flow (the embedding's output)")
        return context

    def embed_context(self, context: Tensor | None, batch: int | None = None) -> Tensor | None:
        """The context as the transform and base read it: checked, then embedded once.

        Args:
            context: the raw context ``(batch, ...)`` or None.
            batch: the batch size it must have (None: any).

        Returns:
            The embedded context ``(batch, k)`` (the raw one without an embedding), or None.

        Raises:
            ValueError: the context is missing, unexpected or wrongly shaped (validation on).
        """
        return self._context(context, batch)

    def prepend(self, layers: Sequence[Transform]) -> Flow:
        """A flow that applies ``layers`` to the data first (normalizing direction).

        Pre-processing in data units: ``x = layers(f(z))`` in the generative direction, so
        ``log_prob`` and ``sample`` speak the user's units (a standardisation, a logit, a box).
        The base, the context embedding and the parameters are shared. A flow that records a
        ``config`` (a preset) gains ``config["preprocess"]``, the layers' ``pushforward.specs``
        records, so a checkpoint rebuilds the same structure.

        Args:
            layers: transforms in generative order (the data side last).

        Returns:
            The wrapped flow (``self`` when ``layers`` is empty).

        Example:
            >>> import torch, pushforward as pf
            >>> flow = pf.flows.MAF(2, transforms=1).prepend([pf.transforms.Sigmoid(0.0, 1.0)])
            >>> bool(((flow.sample(5) > 0) & (flow.sample(5) < 1)).all())
            True
        """
        layers = list(layers)
        if not layers:
            return self
        if callable(getattr(self, "wrap_data", None)):  # an augmented flow: layers act on x only
            wrapped = self.wrap_data(layers)
        else:
            wrapped = Flow(
                Chain([self.transform, *layers]),
                self.base,
                embedding=self.embedding,
                context_features=self.context_shape if self.embedding is not None else None,
            )
        config = getattr(self, "config", None)
        if isinstance(config, dict):
            wrapped.config = {**config, "preprocess": [to_spec(layer) for layer in layers]}
        return wrapped

    def _sample_count(self, n: int | Sequence[int]) -> tuple[int, Shape]:
        """``n`` as (count, sample shape): an int ``n`` or a shape as in torch.distributions."""
        if isinstance(n, Tensor) and n.dim() == 1 or isinstance(n, (tuple, list, torch.Size)):
            shape = tuple(_v.check_count(s, "Flow.sample") for s in n)
            return math.prod(shape), shape
        count = _v.check_count(n, "Flow.sample")
        return count, (count,)

    def _fused_log_prob(self, x: Tensor, context: Tensor | None) -> Tensor | None:
        """``log p(x)`` as one autograd node, or None where that does not apply.

        It applies when the transform is a chain of fusable affine layers (MAF, vector affine
        couplings) on ``N(0, I)`` (``pushforward.fused_affine``).
        """
        if not (getattr(self.base, "standard_normal", False) and x.dim() == 2
                and fast_path_enabled() and not global_hooks()):
            return None
        stages = self.transform._affine_stages()
        if not stages or not all(stage.usable(x, context) for stage in stages):
            return None

        def general(x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
            with fast_path(False):
                z, ladj = self.transform.inverse(x, context)
                return z, self._base_log_prob(z, context) + ladj

        return affine_chain(x, context, stages, True, general)

    def _base_log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        if getattr(self.base, "context_features", 0):
            return self.base.log_prob(z, context)
        return self.base.log_prob(z)

    def _base_draw(
        self, n: int, context: Tensor | None, temperature: float, density: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``z ~ p_0`` and ``log p_0(z)`` (None unless ``density``)."""
        kwargs = {} if temperature == 1.0 else {"temperature": temperature}
        args = (n, context) if getattr(self.base, "context_features", 0) else (n,)
        if density:
            return self.base.sample_and_log_prob(*args, **kwargs)
        return self.base.sample(*args, **kwargs), None

    # -- density ------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p(x)``, shape ``(batch,)``; ``−inf`` outside the flow's support.

        ``x`` may carry extra leading dimensions, ``(*sample, batch, *event)`` → ``(*sample,
        batch)``, as in ``torch.distributions``; a context ``(batch, ...)`` is then shared by
        every sample (embedded once). A point outside the support of a bounded flow
        (``pf.transforms.bounded``) has density zero: its ``log_prob`` is ``−inf``, even though
        the transform's ``inverse`` refuses it.

        Args:
            x: points ``(batch, *event)`` or ``(*sample, batch, *event)``.
            context: None, or the context ``(batch, ...)`` of a conditional flow.

        Returns:
            ``log p(x)``, shape ``(batch,)`` or ``(*sample, batch)``.
        """
        validating = _v.is_validating()
        lead: Shape | None = None
        k = len(self.event_shape)
        if (isinstance(x, Tensor) and x.dim() > k + 1
                and tuple(x.shape[x.dim() - k:]) == self.event_shape):
            lead = tuple(x.shape[: x.dim() - k])
            if context is not None:
                if not isinstance(context, Tensor) or context.dim() < 1:
                    raise ValueError("Flow.log_prob: context must be a tensor (batch, ...)")
                if lead[-1] not in (1, context.shape[0]):
                    raise ValueError(
                        f"Flow.log_prob: x of shape {tuple(x.shape)} has batch size {lead[-1]} "
                        f"(its last leading dimension) but the context has {context.shape[0]}"
                    )
                lead = (*lead[:-1], context.shape[0])
                x = x.expand(*lead, *self.event_shape)
            x = x.reshape(-1, *self.event_shape)
        if validating:
            _v.check_tensor(x, self.event_shape, "Flow.log_prob", "x")
            _v.check_dtype(x, self, "Flow.log_prob", "x")
        inside = self.transform._inside_x(x)
        if validating and _v.reads_values(x):
            self.transform._check_x(x if inside is None else x[inside])
        if lead is not None and context is not None:
            ctx = self._context(context, context.shape[0])
            if ctx is not None:
                ctx = ctx.expand(math.prod(lead[:-1]), *ctx.shape).reshape(-1, ctx.shape[-1])
        else:
            ctx = self._context(context, x.shape[0])
        with _v.validation(False):
            log_px = self._fused_log_prob(x, ctx)
            if log_px is None:
                z, ladj = self.transform.inverse(x, ctx)
                log_px = self._base_log_prob(z, ctx) + ladj
        if inside is not None:
            log_px = log_px.masked_fill(~inside, -math.inf)
        if validating:
            # −inf is a density that underflows this dtype; NaN and +inf are refused.
            _v.check_result(log_px, "Flow.log_prob", "log_prob", allow_neg_inf=True)
        return log_px if lead is None else log_px.reshape(lead)

    # -- sampling -----------------------------------------------------------------------------
    def rsample_and_log_prob(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised ``x ~ p`` and ``log p(x)`` in one forward pass.

        Shapes: ``(n, *event)`` and ``(n,)``; with context ``(B, ...)``: ``(n, B, *event)`` and
        ``(n, B)``. ``n`` may also be a shape, as ``torch.distributions`` takes:
        ``(*n, [B,] *event)``. ``temperature`` scales the base draw (Gaussian bases only);
        ``log p`` is then the density of the tempered base pushed forward.
        """
        x, log_px = self._draw(n, context, temperature, density=True)
        return x, cast(Tensor, log_px)

    def _draw(self, n: int | Sequence[int], context: Tensor | None, temperature: float,
              density: bool) -> tuple[Tensor, Tensor | None]:
        """``x = f(z)``, ``z ~ p_0``; with ``density`` also ``log p_0(z) − log|det J_f(z)|``.

        Without ``density`` the second value is None: the base density is not evaluated.
        """
        n, sample_shape = self._sample_count(n)
        batch = None
        ctx = None
        if context is not None:
            if not isinstance(context, Tensor) or context.dim() < 1:
                raise ValueError("Flow.sample: context must be a tensor (batch, ...)")
            batch = context.shape[0]
            ctx = self._context(context, None)  # embedded once, then shared by the n draws
            if ctx is not None:
                ctx = ctx.repeat(n, 1)
        elif _v.is_validating():
            self._context(None, None)
        total = n * (batch or 1)
        with _v.validation(False):
            z, log_pz = self._base_draw(total, ctx, temperature, density)
            if log_pz is None:
                x, log_px = self.transform.push(z, ctx), None
            else:
                x, ladj = self.transform(z, ctx)
                log_px = log_pz - ladj
        if _v.is_validating():
            _v.check_result(x, "Flow.sample", "the sample")
            if log_px is not None:
                _v.check_result(log_px, "Flow.sample", "log_prob", allow_neg_inf=True)
        lead = sample_shape if batch is None else (*sample_shape, batch)
        x = x.reshape(*lead, *x.shape[1:])
        return x, None if log_px is None else log_px.reshape(lead)

    def sample_and_log_prob(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """``x ~ p`` and ``log p(x)`` from one forward pass (differentiable, as ``rsample``)."""
        return self.rsample_and_log_prob(n, context, temperature)

    def rsample(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Reparametrised samples, ``(n, *event)`` or ``(n, B, *event)`` with context.

        ``n`` is an int or a sample shape. ``log p(x)`` is not computed.
        """
        return self._draw(n, context, temperature, density=False)[0]

    @torch.no_grad()
    def sample(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Samples without gradients, ``(n, *event)`` or ``(n, B, *event)`` with context.

        ``n`` is an int, or a sample shape as in ``torch.distributions``: ``(*n, [B,] *event)``.
        """
        return self._draw(n, context, temperature, density=False)[0]

    def distribution(self, context: Tensor | None = None) -> FlowDistribution:
        """This flow as a ``torch.distributions.Distribution`` (batch ``(B,)`` with context).

        ``sample``, ``rsample``, ``log_prob`` and ``expand`` follow the ``torch.distributions``
        shape rules; ``mean``, ``entropy``, ``cdf``... raise ``NotImplementedError`` (no closed
        form: estimate them from samples).
        """
        return FlowDistribution(self, context)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Same as ``log_prob`` (so DDP and hooks see a forward)."""
        return self.log_prob(x, context)
