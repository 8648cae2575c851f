"""The change-of-variables engine: Transform, Chain, Inverse, BaseDistribution and Flow.

Conventions (SPEC §0): ``forward`` is the generative direction ``z -> x`` and returns
``(x, ladj)`` with ``ladj = log|det ∂x/∂z|`` per sample, shape ``(batch,)``; ``inverse`` is the
normalizing direction ``x -> z`` and returns ``(z, log|det ∂z/∂x|)``. A flow's density is

    log p(x) = log p_0(z) + log|det ∂z/∂x|,   z = f⁻¹(x),

computed in one inverse pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward._flow_distribution import FlowDistribution
from pushforward.specs import from_spec, serializable, to_spec

__all__ = ["Transform", "Chain", "Inverse", "BaseDistribution", "Flow", "FlowDistribution",
           "serializable", "to_spec", "from_spec"]

Shape = tuple[int, ...]

# Depth of nested transform calls: only the outermost call validates, so a Chain of K layers
# checks its input once instead of K times.
_depth = 0


class _Nested:
    def __enter__(self) -> None:
        global _depth
        _depth += 1

    def __exit__(self, *args: object) -> None:
        global _depth
        _depth -= 1


def _outermost() -> bool:
    return _depth == 0 and _v.is_validating()


class Transform(nn.Module):
    """An invertible map ``x = f(z)`` with its log absolute Jacobian determinant.

    Subclasses implement ``_forward(z, context)`` and ``_inverse(x, context)``, each returning the
    output and its per-sample ``ladj`` of shape ``(batch,)``, and declare their shapes. Input
    checks (shape, NaN/inf, domain via ``_check_x`` / ``_check_z``) live here, once.

    Attributes:
        event_shape: shape of one sample on the data side ``x`` (None: any shape).
        latent_shape: shape on the base side ``z`` (defaults to ``event_shape``).
        context_features: width of the context this transform reads (0: unconditional; the
            context is then accepted and ignored, so ``Chain`` can pass it blindly).
        analytic_inverse: False when the inverse is computed numerically (Planar, CNF).
        exact_ladj: False when ``ladj`` is a stochastic estimate (Hutchinson).
        supports_torch_func: False for a class whose forward/inverse cannot run inside a
            ``torch.func`` transform (``jacrev``, ``vmap``, ``grad``); calling it there raises
            ``NotImplementedError`` naming the class (the class docstring says why). A
            transform containing such a module inherits the refusal.
    """

    analytic_inverse: bool = True
    exact_ladj: bool = True
    supports_torch_func: bool = True

    def __init__(
        self,
        event_shape: int | Sequence[int] | None = None,
        latent_shape: int | Sequence[int] | None = None,
        context_features: int = 0,
    ) -> None:
        super().__init__()
        self.event_shape: Shape | None = None if event_shape is None else _v.as_shape(event_shape)
        self.latent_shape: Shape | None = (
            self.event_shape if latent_shape is None else _v.as_shape(latent_shape)
        )
        if int(context_features) < 0:
            raise ValueError(f"context_features must be >= 0, got {context_features}")
        self.context_features = int(context_features)

    # -- the contract -------------------------------------------------------------------------
    def forward(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Generative direction: ``x, ladj = f(z)`` with ``ladj = log|det ∂x/∂z|``.

        An unconditional transform (``context_features == 0``) accepts any ``context`` and
        ignores it: it is dropped here, once, before ``_forward`` sees it.
        """
        if not self.context_features:
            context = None
        if _depth == 0 and _v.in_torch_func():
            self._require_torch_func()
        outermost = _outermost()
        if outermost:
            self._validate(z, self.latent_shape, context, "z")
            if _v.reads_values(z):
                self._check_z(z)
        if z.shape[0] == 0 and self.event_shape is not None:
            # An empty batch: nothing to compute (several layers' reshapes cannot infer sizes).
            return z.new_zeros(0, *self.event_shape), z.new_zeros(0)
        with _Nested():
            x, ladj = self._forward(z, context)
        if outermost:
            _v.check_result(x, type(self).__name__, "forward output")
            _v.check_result(ladj, type(self).__name__, "forward ladj")
        return x, ladj

    def inverse(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Normalizing direction: ``z, ladj = f⁻¹(x)`` with ``ladj = log|det ∂z/∂x|``.

        As in ``forward``, an unconditional transform ignores ``context``.
        """
        if not self.context_features:
            context = None
        if _depth == 0 and _v.in_torch_func():
            self._require_torch_func()
        outermost = _outermost()
        if outermost:
            self._validate(x, self.event_shape, context, "x")
            if _v.reads_values(x):
                self._check_x(x)
        if x.shape[0] == 0 and self.latent_shape is not None:
            return x.new_zeros(0, *self.latent_shape), x.new_zeros(0)
        with _Nested():
            z, ladj = self._inverse(x, context)
        if outermost:
            _v.check_result(z, type(self).__name__, "inverse output")
            _v.check_result(ladj, type(self).__name__, "inverse ladj")
        return z, ladj

    @property
    def inv(self) -> Transform:
        """A view with the two directions swapped (``t.inv.inv is t``)."""
        view = self.__dict__.get("_inverse_view")
        return view if view is not None else Inverse(self)

    def _require_torch_func(self) -> None:
        """Refuse ``torch.func`` where a module of this transform cannot run under it.

        Raises ``NotImplementedError`` if a module (itself included) declares
        ``supports_torch_func = False``.
        """
        for module in self.modules():
            if getattr(module, "supports_torch_func", True) is False:
                name = type(module).__name__
                raise NotImplementedError(
                    f"{type(self).__name__}: {name} cannot run inside a torch.func transform "
                    f"(jacrev, vmap, grad; see the {name} docstring for why); compute "
                    "Jacobians with torch.autograd.functional.jacobian instead"
                )

    # -- for subclasses -----------------------------------------------------------------------
    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _check_x(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is outside the domain of the inverse."""

    def _check_z(self, z: Tensor) -> None:
        """Raise ``ValueError`` if ``z`` is outside the domain of the forward map."""

    def _inside_x(self, x: Tensor) -> Tensor | None:
        """Which rows of ``x`` lie in the domain of the inverse.

        A bool ``(batch,)`` mask, or None when the domain is the whole space. ``Flow.log_prob``
        gives ``−inf`` (density zero) outside it; a transform with a bounded domain (``Sigmoid``)
        overrides this together with ``_check_x``.
        """
        return None

    def _inside_z(self, z: Tensor) -> Tensor | None:
        """As ``_inside_x``, for the domain of the forward map."""
        return None

    def _validate(
        self, value: Tensor, shape: Shape | None, context: Tensor | None, name: str
    ) -> None:
        owner = type(self).__name__
        _v.check_tensor(value, shape, owner, name)
        _v.check_dtype(value, self, owner, name)
        if self.context_features:
            _v.check_context(context, self.context_features, value.shape[0], owner)
            _v.check_dtype(context, self, owner, "context")

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        parts = []
        if self.event_shape is not None:
            parts.append(f"event_shape={self.event_shape}")
        if self.latent_shape != self.event_shape:
            parts.append(f"latent_shape={self.latent_shape}")
        if self.context_features:
            parts.append(f"context_features={self.context_features}")
        return ", ".join(parts)


class Inverse(Transform):
    """The inverse of a transform: ``Inverse(t)(x) = t.inverse(x)``.

    Shares ``t``'s parameters; ``Inverse(t).inv is t``.

    Args:
        transform: the transform to invert (its parameters are shared, not copied).
    """

    def __init__(self, transform: Transform) -> None:
        super().__init__(transform.latent_shape, transform.event_shape, transform.context_features)
        self.transform = transform
        # Remembered outside the module tree (no parameter is registered twice).
        transform.__dict__["_inverse_view"] = self
        self.analytic_inverse = transform.analytic_inverse
        self.exact_ladj = transform.exact_ladj

    @property
    def inv(self) -> Transform:
        """The wrapped transform (``t.inv.inv is t``)."""
        return self.transform

    # The public methods (nested, so they do not validate again): a subclass that overrides
    # ``forward``/``inverse`` instead of ``_forward``/``_inverse`` still inverts correctly.
    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(z, context)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.transform(x, context)

    def _check_x(self, x: Tensor) -> None:
        self.transform._check_z(x)

    def _check_z(self, z: Tensor) -> None:
        self.transform._check_x(z)

    def _inside_x(self, x: Tensor) -> Tensor | None:
        return self.transform._inside_z(x)

    def _inside_z(self, z: Tensor) -> Tensor | None:
        return self.transform._inside_x(z)


class Chain(Transform):
    """Composition ``f = f_K ∘ … ∘ f_1``; ``Chain([t1, t2])`` applies ``t1`` first (forward).

    ``ladj = Σ_k ladj_k``; the inverse applies the inverses in reverse order.

    Args:
        transforms: the layers, in the order the forward (generative) direction applies them.

    Example:
        >>> import torch, pushforward as pf
        >>> t = pf.Chain([pf.transforms.Affine(2, scale=2.0), pf.transforms.Affine(2, scale=3.0)])
        >>> x, ladj = t(torch.ones(1, 2))
        >>> x.tolist(), round(ladj.item(), 4)  # ladj = 2 log 6
        ([[6.0, 6.0]], 3.5835)
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        transforms = list(transforms)
        if not transforms:
            raise ValueError("Chain needs at least one transform")
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Chain: {type(t).__name__} is not a pushforward Transform")
        latent = next((t.latent_shape for t in transforms if t.latent_shape is not None), None)
        event = next(
            (t.event_shape for t in reversed(transforms) if t.event_shape is not None), None
        )
        super().__init__(event, latent, max(t.context_features for t in transforms))
        self.transforms = nn.ModuleList(transforms)
        self.analytic_inverse = all(t.analytic_inverse for t in transforms)
        self.exact_ladj = all(t.exact_ladj for t in transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i: int) -> Transform:
        return self.transforms[i]  # type: ignore[return-value]

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for t in self.transforms:
            z, ladj = t(z, context)
            total = total + ladj
        return z, total

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for t in reversed(self.transforms):
            x, ladj = t.inverse(x, context)
            total = total + ladj
        return x, total

    def _check_x(self, x: Tensor) -> None:
        self.transforms[-1]._check_x(x)  # type: ignore[operator]

    def _check_z(self, z: Tensor) -> None:
        self.transforms[0]._check_z(z)  # type: ignore[operator]

    def _inside_x(self, x: Tensor) -> Tensor | None:
        return self.transforms[-1]._inside_x(x)  # type: ignore[operator]

    def _inside_z(self, z: Tensor) -> Tensor | None:
        return self.transforms[0]._inside_z(z)  # type: ignore[operator]


class BaseDistribution(nn.Module):
    """Interface of a base distribution ``p_0``: an ``nn.Module`` with ``log_prob`` and ``sample``.

    A template, as ``Transform`` is: ``log_prob`` and ``sample`` check their inputs once here
    (the shape of ``z``, the sample count, the temperature, the context of a conditional base,
    while validation is on) and call the subclass's ``_log_prob(z, context) -> (batch,)`` and
    ``_sample(n, context, temperature) -> (n, *event_shape)`` (reparametrised where the family
    allows). Subclasses declare ``event_shape`` and ``context_features`` and may override
    ``sample_and_log_prob`` (or ``log_prob`` / ``sample`` themselves, e.g. on a manifold). A
    conditional base gets one context row per sample: ``context`` is ``(n, context_features)``.
    """

    event_shape: Shape
    context_features: int = 0

    def log_prob(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p_0(z)``, shape ``(batch,)``.

        Raises:
            ValueError: ``z`` or the context is wrongly shaped or not finite (validation on).
        """
        if _v.is_validating():
            owner = type(self).__name__
            _v.check_tensor(z, self.event_shape, f"{owner}.log_prob", "z")
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

    def _base_log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        if getattr(self.base, "context_features", 0):
            return self.base.log_prob(z, context)
        return self.base.log_prob(z)

    def _base_draw(
        self, n: int, context: Tensor | None, temperature: float
    ) -> tuple[Tensor, Tensor]:
        kwargs = {} if temperature == 1.0 else {"temperature": temperature}
        if getattr(self.base, "context_features", 0):
            return self.base.sample_and_log_prob(n, context, **kwargs)
        return self.base.sample_and_log_prob(n, **kwargs)

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
            z, log_pz = self._base_draw(total, ctx, temperature)
            x, ladj = self.transform(z, ctx)
        log_px = log_pz - ladj
        if _v.is_validating():
            _v.check_result(x, "Flow.sample", "the sample")
            _v.check_result(log_px, "Flow.sample", "log_prob", allow_neg_inf=True)
        lead = sample_shape if batch is None else (*sample_shape, batch)
        return x.reshape(*lead, *x.shape[1:]), log_px.reshape(lead)

    def sample_and_log_prob(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """``x ~ p`` and ``log p(x)`` from one forward pass (differentiable, as ``rsample``)."""
        return self.rsample_and_log_prob(n, context, temperature)

    def rsample(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Reparametrised samples, ``(n, *event)`` or ``(n, B, *event)`` with context.

        ``n`` is an int or a sample shape.
        """
        return self.rsample_and_log_prob(n, context, temperature)[0]

    @torch.no_grad()
    def sample(
        self, n: int | Sequence[int], context: Tensor | None = None, temperature: float = 1.0
    ) -> Tensor:
        """Samples without gradients, ``(n, *event)`` or ``(n, B, *event)`` with context.

        ``n`` is an int, or a sample shape as in ``torch.distributions``: ``(*n, [B,] *event)``.
        """
        return self.rsample_and_log_prob(n, context, temperature)[0]

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
