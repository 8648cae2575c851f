"""The transform contract: ``Transform`` (the base class), its ``Inverse`` view and ``Chain``.

``forward`` is the generative direction ``z -> x`` and returns ``(x, ladj)`` with
``ladj = log|det ∂x/∂z|`` per sample, shape ``(batch,)``; ``inverse`` is the normalizing
direction ``x -> z`` and returns ``(z, log|det ∂z/∂x|)``. Input checks live here, once, in the
outermost call. Re-exported by ``pushforward.core``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.specs import serializable

__all__ = ["Transform", "Inverse", "Chain", "Shape"]

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
        context, outermost = self._enter(z, context, "z")
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
        context, outermost = self._enter(x, context, "x")
        if x.shape[0] == 0 and self.latent_shape is not None:
            return x.new_zeros(0, *self.latent_shape), x.new_zeros(0)
        with _Nested():
            z, ladj = self._inverse(x, context)
        if outermost:
            _v.check_result(z, type(self).__name__, "inverse output")
            _v.check_result(ladj, type(self).__name__, "inverse ladj")
        return z, ladj

    def push(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``x = f(z)`` alone: ``forward`` without its ``ladj``, for sampling.

        The same checks and the same ``x`` as ``forward``; a transform whose ``ladj`` costs
        work of its own skips it (a CNF integrates ``dz/dt`` alone, without the trace: the
        same ``x`` to the solver's tolerance, and exactly on a fixed grid).
        """
        context, outermost = self._enter(z, context, "z")
        if z.shape[0] == 0 and self.event_shape is not None:
            return z.new_zeros(0, *self.event_shape)
        with _Nested():
            x = self._push(z, context)
        if outermost:
            _v.check_result(x, type(self).__name__, "forward output")
        return x

    def _enter(
        self, value: Tensor, context: Tensor | None, side: str
    ) -> tuple[Tensor | None, bool]:
        """``(context, outermost)``: the context read (None when unconditional).

        The outermost call also checks ``value`` on ``side`` (``"z"`` or ``"x"``) and the context.
        """
        if not self.context_features:
            context = None
        if _depth == 0 and _v.in_torch_func():
            self._require_torch_func()
        outermost = _outermost()
        if outermost:
            latent = side == "z"
            self._validate(value, self.latent_shape if latent else self.event_shape, context,
                           side)
            if _v.reads_values(value):
                (self._check_z if latent else self._check_x)(value)
        return context, outermost

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

    def _push(self, z: Tensor, context: Tensor | None) -> Tensor:
        # ``forward`` (nested) by default: a subclass overriding it is honoured.
        return self(z, context)[0]

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

    def _affine_stages(self) -> list | None:
        """This transform's density direction as fused affine stages (``fused_affine``).

        In the order the inverse applies them; None (the default) when it is not a chain of
        fusable affine layers (``Flow.log_prob`` then takes the general path).
        """
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


@serializable("inverse")
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


@serializable("chain")
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

    def _push(self, z: Tensor, context: Tensor | None) -> Tensor:
        for t in self.transforms:
            # a layer without a push of its own runs its forward directly (one call less)
            z = t(z, context)[0] if type(t)._push is Transform._push else t.push(z, context)
        return z

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

    def _affine_stages(self) -> list | None:
        stages: list = []
        for t in reversed(self.transforms):
            more = t._affine_stages()  # type: ignore[operator]
            if more is None:
                return None
            stages += more
        return stages

    def _inside_z(self, z: Tensor) -> Tensor | None:
        return self.transforms[0]._inside_z(z)  # type: ignore[operator]
