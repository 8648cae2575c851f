"""Conditioner networks shared by the transforms.

Only generic building blocks live here; family-specific networks (MADE masks, conv nets,
time-conditioned fields) are added beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pushforward.fused import (
    FlatSlots,
    _Plan,
    fast_path_enabled,
    flatten_linears,
    global_hooks,
    relu_stack,
)
from pushforward.fused_affine import AffineStage, affine_chain
from pushforward.specs import serializable

__all__ = ["MLP", "MADE", "MaskedLinear", "ConvNet", "activation", "with_context"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def activation(name: str | Callable[[], nn.Module]) -> nn.Module:
    """An activation module from its name (relu, elu, gelu, silu, tanh, softplus) or a factory.

    Args:
        name: ``"relu"``, ``"elu"``, ``"gelu"``, ``"silu"``, ``"tanh"``, ``"softplus"``, or a
            zero-argument callable returning a module.

    Returns:
        A new activation module.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if callable(name) and not isinstance(name, str):
        return name()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


_make_activation = activation


class _Linear(FlatSlots, nn.Linear):
    """``nn.Linear`` whose weight and bias can move into an owner's flat parameter."""


@serializable("mlp")
class MLP(nn.Sequential):
    """A multi-layer perceptron ``in_features -> hidden... -> out_features``.

    With ``fused=True`` all weights and biases live in one parameter ``flat`` (the layers read
    views of it; ``state_dict`` keeps the per-layer keys ``0.weight``, ``0.bias``...), and a
    ReLU network runs as one autograd node with a written-out backward (``pushforward.fused``).
    Coupling layers build their vector conditioners so.

    Args:
        in_features: input width.
        out_features: output width.
        hidden: widths of the hidden layers.
        activation: name or factory of the activation between layers.
        zero_last: initialise the last layer to zero (the transform starts at the identity).
        fused: one flat parameter and the fused path (see above).

    Example:
        >>> import torch
        >>> MLP(3, 2, hidden=(8,), fused=True)(torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str | Callable[[], nn.Module] = "relu",
        zero_last: bool = False,
        fused: bool = False,
    ) -> None:
        widths = [int(in_features), *(int(h) for h in hidden), int(out_features)]
        layers: list[nn.Module] = []
        relu = True
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(_Linear(a, b))
            if i < len(widths) - 2:
                act = _make_activation(activation)
                if type(act) is nn.ReLU:
                    # it always follows a Linear whose fresh output nothing else reads
                    act.inplace = True
                else:
                    relu = False
                layers.append(act)
        super().__init__(*layers)
        self.in_features = widths[0]
        self.out_features = widths[-1]
        if zero_last:
            last = layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self._plan: _Plan | None = None
        if fused:
            linears = [(str(i), m) for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
            flatten_linears(self, linears)
            self._plan = _stack_plan([m for _, m in linears]) if relu else None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        plan = self._plan
        if (plan is not None and x.dim() == 2 and x.dtype == self.flat.dtype
                and fast_path_enabled()):
            return relu_stack(x, None, self.flat, plan, self._general)
        return super().forward(x)

    def _general(self, x: Tensor, context: Tensor | None, flat: Tensor) -> Tensor:
        return super().forward(x)

    def _fused_plan(self) -> _Plan | None:
        """The fused path's plan of this ReLU stack (None: not fused)."""
        return self._plan


def _stack_plan(layers: Sequence[nn.Module], context: nn.Module | None = None) -> _Plan:
    """Slots of the flat parameter for each layer of a ReLU stack (see ``pushforward.fused``)."""
    slots = []
    for layer in layers:
        (w, w_shape), (b, b_shape) = layer._flat_slots["weight"], layer._flat_slots["bias"]
        slots.append((w, w_shape, b, b_shape.numel()))
    context_slot = context._flat_slots["weight"] if context is not None else None
    return _Plan(slots, context_slot)


def with_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate a context to the features: ``[x, context]`` along the last dimension.

    Args:
        x: the features, ``(batch, d)``.
        context: ``(batch, c)`` or None.

    Returns:
        ``(batch, d + c)``, or ``x`` itself when ``context`` is None.
    """
    return x if context is None else torch.cat([x, context.to(x.dtype)], dim=-1)


# -- MADE: masked autoencoder for distribution estimation -------------------------------------


@serializable("masked-linear")
class MaskedLinear(FlatSlots, nn.Linear):
    """A linear layer with a fixed 0/1 connectivity mask: ``y = (W ⊙ M) x + b``.

    The mask is applied at every call (``masked_weight()``), so a masked entry never contributes
    and never receives a gradient, whatever value the stored weight takes. (Inside a ``MADE``
    the weight lives in the MADE's flat parameter and the fused path caches ``W ⊙ M`` once per
    parameter update instead.)

    Args:
        mask: ``(out_features, in_features)`` 0/1 tensor.
        bias: whether the layer has a bias.
    """

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def masked_weight(self) -> Tensor:
        """``W ⊙ M`` (differentiable in ``W``)."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return nn.functional.linear(x, self.masked_weight(), self.bias)


def _degrees(features: int, ordering: str | Sequence[int] | Tensor, seed: int) -> Tensor:
    """Input degrees ``1 … d``: feature ``i`` is generated ``degree[i]``-th."""
    d = features
    if isinstance(ordering, str):
        if ordering == "natural":
            return torch.arange(1, d + 1)
        if ordering in ("reversed", "reverse"):
            return torch.arange(d, 0, -1)
        if ordering == "random":
            generator = torch.Generator().manual_seed(int(seed))
            return torch.randperm(d, generator=generator) + 1
        raise ValueError(
            f"MADE: unknown ordering {ordering!r}; use 'natural', 'reversed', 'random' or a "
            "permutation of the features"
        )
    order = torch.as_tensor(ordering, dtype=torch.long).flatten()
    if order.numel() != d or not torch.equal(torch.sort(order).values, torch.arange(d)):
        raise ValueError(f"MADE: ordering {ordering!r} is not a permutation of 0..{d - 1}")
    degrees = torch.empty(d, dtype=torch.long)
    degrees[order] = torch.arange(1, d + 1)
    return degrees


@serializable("made")
class MADE(nn.Module):
    """Masked autoencoder: ``params[i]`` depends only on the features generated before ``i``.

    Input degrees follow the ordering (feature ``i`` gets degree ``m(i) ∈ {1 … d}``); hidden
    units get degrees cycling through ``{1 … d−1}`` (``{0 … d−1}`` with a context, so the first
    feature can still depend on it); a hidden unit of degree ``k`` sees inputs of degree ``≤ k``
    and an output of feature ``i`` sees hidden units of degree ``< m(i)``. The context enters
    every unit of the first hidden layer without mask, hence every hidden unit and every output.
    ``∂ params[i] / ∂ x_j = 0`` whenever ``m(j) ≥ m(i)``.

    Args:
        features: the dimension ``d``.
        params: numbers produced per feature; the output is ``(batch, d, params)``.
        hidden: widths of the hidden layers (``()``: a single masked linear layer).
        context_features: width of the context (0: none).
        ordering: ``"natural"`` (0, 1, …), ``"reversed"``, ``"random"`` (drawn from ``seed``),
            or the features listed in the order they are generated.
        seed: seed of the random ordering.
        residual: use masked residual blocks ``h ← h + W act(h) + b`` between hidden layers
            (all hidden widths must then be equal).
        activation: name or factory of the activation.

    References:
        MADE: Masked Autoencoder for Distribution Estimation. Germain, Gregor, Murray,
        Larochelle, 2015. arXiv:1502.03509.

    Example:
        >>> import torch
        >>> made = MADE(3, params=2, hidden=(8,))
        >>> made(torch.randn(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        features: int,
        params: int = 1,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        ordering: str | Sequence[int] | Tensor = "natural",
        seed: int = 0,
        residual: bool = False,
        activation: str | Callable[[], nn.Module] = "relu",
    ) -> None:
        super().__init__()
        d, p, c = int(features), int(params), int(context_features)
        hidden = [int(h) for h in hidden]
        if d < 1 or p < 1 or c < 0 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MADE: need features >= 1, params >= 1, context_features >= 0 and positive "
                f"hidden widths, got features={d}, params={p}, context_features={c}, "
                f"hidden={hidden}"
            )
        if residual and (not hidden or len(set(hidden)) != 1):
            raise ValueError(f"MADE: residual blocks need equal hidden widths, got {hidden}")
        self.features, self.params, self.context_features = d, p, c
        self.residual = bool(residual)
        degrees = _degrees(d, ordering, seed)
        self.register_buffer("degrees", degrees)
        low = 0 if (c or d == 1) else 1
        previous = degrees
        layers = []
        for width in hidden:
            current = low + torch.arange(width) % (d - low)
            layers.append(MaskedLinear(current[:, None] >= previous[None, :]))
            previous = current
        out_degrees = degrees.repeat_interleave(p)
        layers.append(MaskedLinear(out_degrees[:, None] > previous[None, :]))
        self.layers = nn.ModuleList(layers)
        self.context = _Linear(c, layers[0].out_features, bias=False) if c else None
        self.activation = _make_activation(activation)
        # every weight and bias in one parameter ``flat`` (state_dict keys unchanged)
        named = [(f"layers.{i}", layer) for i, layer in enumerate(layers)]
        if self.context is not None:
            named.append(("context", self.context))
        flatten_linears(self, named)
        self._plan = _stack_plan(layers, self.context)
        self._fusable = not self.residual and type(self.activation) is nn.ReLU

    def _checked(self, context: Tensor | None) -> Tensor | None:
        if self.context is None:
            if context is not None:
                raise ValueError("MADE: got a context but context_features=0")
        elif context is None:
            raise ValueError(f"MADE: needs a context of width {self.context_features}")
        return context

    def _first(self, x: Tensor, context: Tensor | None) -> Tensor:
        return x if self.context is None else x + self.context(context)

    def _masked(self) -> tuple[list[Tensor], list[Tensor]]:
        """``W ⊙ M`` and ``b`` per layer.

        Differentiable when a gradient can flow to them, otherwise cached once per parameter
        update.
        """
        layers = self.layers
        if torch.is_grad_enabled() and self.flat.requires_grad:
            return [layer.masked_weight() for layer in layers], [layer.bias for layer in layers]
        plan = self._plan
        plan.masks = [layer.mask for layer in layers]
        weights, biases, _ = plan.weights(self.flat)
        return weights, biases

    def _fast(self, x: Tensor, context: Tensor | None) -> bool:
        return (self._fusable and x.dim() == 2 and x.dtype == self.flat.dtype
                and (context is None or (context.dim() == 2 and context.dtype == x.dtype))
                and fast_path_enabled())

    def affine_inverse(
        self, x: Tensor, context: Tensor | None, bound: float | None
    ) -> tuple[Tensor, Tensor] | None:
        """A MAF layer's density direction with the affine map, fused (``params == 2``).

        ``(ŝ_i, m_i) = MADE(x)_i``, ``z_i = x_i e^{−s_i} + m_i`` with ``s = B tanh(ŝ/B)``, and
        ``ladj = −Σ_i s_i``, as ``AffineMap(bound).inverse`` on this MADE's output, in one
        autograd node (``pushforward.fused_affine``).

        Args:
            x: ``(batch, d)``.
            context: ``(batch, context_features)`` or None.
            bound: the map's clamp ``B`` (None: none).

        Returns:
            ``z`` and ``ladj`` ``(batch,)``, or None where the fast path does not apply
            (another map width, the general path's conditions, forward hooks on the MADE):
            the caller then calls the MADE and the map.
        """
        context = self._checked(context)
        if (self.params != 2 or not self._fast(x, context) or self._forward_hooks
                or self._forward_pre_hooks or global_hooks()):
            return None  # hooks on the MADE must see its call: the general path makes it

        def general(x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
            # the same formula with differentiable, out-of-place operations (double backward)
            raw, shift = self._general(x, context, self.flat).unflatten(-1, (-1, 2)).unbind(-1)
            neg = -raw if bound is None else torch.sigmoid(raw * (-2.0 / bound)) * (
                2.0 * bound) - bound
            return torch.addcmul(shift, x, neg.exp()), neg.sum(-1)

        return affine_chain(x, context, [AffineStage(self, bound)], False, general)

    def _fused_plan(self) -> _Plan:
        """The fused path's plan, with the current masks (they follow ``.to()``)."""
        plan = self._plan
        plan.masks = [layer.mask for layer in self.layers]
        return plan

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Parameters ``(*batch, d, params)`` of every feature, in one pass."""
        context = self._checked(context)
        if self._fast(x, context):
            plan = self._plan
            plan.masks = [layer.mask for layer in self.layers]
            h = relu_stack(x, context, self.flat, plan, self._general)
        else:
            h = self._general(x, context, self.flat)
        return h.unflatten(-1, (self.features, self.params))

    def _general(self, x: Tensor, context: Tensor | None, flat: Tensor) -> Tensor:
        """The differentiable formula (the general path), ``(*batch, d * params)``."""
        layers = self.layers
        h = self._first(layers[0](x), context)
        last = len(layers) - 1
        # Without residual blocks every pre-activation is a fresh tensor used once, so a ReLU
        # can overwrite it (one allocation fewer per layer; autograd keeps the output it needs).
        inplace = not self.residual and type(self.activation) is nn.ReLU
        for i in range(1, last + 1):
            if self.residual and i < last:
                h = h + layers[i](self.activation(h))
            elif inplace:
                h = layers[i](torch.relu_(h))
            else:
                h = layers[i](self.activation(h))
        return h

    def sequential(
        self,
        step: Callable[[int, Tensor], tuple[Tensor, Tensor]],
        like: Tensor,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Solve ``u_i = step(i, params_i(u))`` feature by feature in the ordering.

        Used by the sequential direction of autoregressive transforms: one pass per feature
        (``d`` in all). Masked weights are formed once; the first layer is updated by a rank-one
        term per new feature instead of a full product, and only the rows of the output layer
        that belong to the current feature are evaluated.

        Args:
            step: ``step(i, params)`` with ``params`` of shape ``(batch, params)`` returns the
                value of feature ``i`` and an extra per-feature number (e.g. its log-derivative),
                both ``(batch,)``.
            like: a ``(batch, d)`` tensor giving batch size, dtype and device.
            context: ``(batch, context_features)`` or None.

        Returns:
            ``u`` and the extras, both ``(batch, d)``.
        """
        layers = self.layers
        context = self._checked(context)
        weights, biases = self._masked()
        first = weights[0]
        # The first layer at u = 0, then one rank-one update per generated feature. Without a
        # context the first feature's parameters are the same for every sample: on the fast
        # path they are computed for one row and broadcast.
        batch = like.shape[0]
        constant = context is None and fast_path_enabled()
        if constant:
            pre = biases[0].expand(batch, -1)
        else:
            pre = self._first(nn.functional.linear(torch.zeros_like(like), first, biases[0]),
                              context)
        d, p = self.features, self.params
        out_weight = weights[-1].unflatten(0, (d, p))
        out_bias = biases[-1].unflatten(0, (d, p))
        last = len(layers) - 1
        order = self._order()
        values: list[Tensor] = []
        extras: list[Tensor] = []
        previous = -1
        for i in order:
            if previous >= 0:
                pre = torch.addr(pre, values[-1], first[:, previous])
            rows = pre[:1] if previous < 0 and constant else pre
            if last == 0:
                params = rows[:, i * p : (i + 1) * p]
            else:
                h = rows
                for k in range(1, last):
                    if self.residual:
                        h = h + nn.functional.linear(self.activation(h), weights[k], biases[k])
                    else:
                        h = nn.functional.linear(self.activation(h), weights[k], biases[k])
                params = nn.functional.linear(self.activation(h), out_weight[i], out_bias[i])
            if params.shape[0] != batch:
                params = params.expand(batch, -1)
            value, extra = step(i, params)
            values.append(value)
            extras.append(extra)
            previous = i
        # back to feature order by listing the columns in it (no permutation tensor needed)
        column = [0] * d
        for k, i in enumerate(order):
            column[i] = k
        u = torch.stack([values[k] for k in column], dim=1)
        return u, torch.stack([extras[k] for k in column], dim=1)

    def _order(self) -> list[int]:
        """Features in generation order, cached until the ``degrees`` buffer changes."""
        key = (self.degrees.data_ptr(), self.degrees._version)
        cached = self.__dict__.get("_order_cache")
        if cached is None or cached[0] != key:
            cached = (key, torch.argsort(self.degrees).tolist())
            self.__dict__["_order_cache"] = cached
        return cached[1]


# -- convolutional conditioners (coupling layers on images) ------------------------------------


@serializable("conv-net")
class ConvNet(nn.Module):
    """A small residual conv net ``(B, in, H, W) -> (B, out, H, W)`` (spatial size kept).

    ``conv3×3(in → hidden)``, then ``blocks`` residual blocks
    ``h ← h + conv1×1(act(conv3×3(act(h))))``, then ``act`` and a ``conv3×3(hidden → out)``
    (zero-initialised with ``zero_last``, so a coupling layer starts at the identity, as in Glow).
    Padding keeps the spatial size, so it works down to 1×1 images.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        hidden: channels of the hidden layers.
        blocks: number of residual blocks (0: a plain three-layer conv net).
        activation: name or factory of the activation.
        zero_last: initialise the last convolution to zero.

    Example:
        >>> import torch
        >>> ConvNet(3, 6, hidden=8)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 6, 4, 4])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        blocks: int = 1,
        activation: str | Callable[[], nn.Module] = "relu",
        zero_last: bool = True,
    ) -> None:
        super().__init__()
        in_channels, out_channels, hidden = int(in_channels), int(out_channels), int(hidden)
        if in_channels < 1 or out_channels < 1 or hidden < 1 or int(blocks) < 0:
            raise ValueError(
                f"ConvNet: need positive channel counts and blocks >= 0, got in={in_channels}, "
                f"out={out_channels}, hidden={hidden}, blocks={blocks}"
            )
        self.stem = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                _make_activation(activation),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                _make_activation(activation),
                nn.Conv2d(hidden, hidden, 1),
            )
            for _ in range(int(blocks))
        )
        self.head = nn.Sequential(
            _make_activation(activation), nn.Conv2d(hidden, out_channels, 3, padding=1)
        )
        if zero_last:
            nn.init.zeros_(self.head[1].weight)
            nn.init.zeros_(self.head[1].bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)
