"""Fused fast path for ReLU stacks of (masked) linear layers: MADE and MLP conditioners.

A conditioner ``h_0 = x``, ``h_k = relu((W_k ⊙ M_k) h_{k-1} + b_k)``, ``out = (W_L ⊙ M_L) h_{L-1} +
b_L`` (``M_k = 1`` for a plain MLP; a MADE's context enters the first layer as ``+ W_c c``, i.e.
``W_1 = [W_1x | W_c]`` acting on ``[x, c]``) is evaluated here as one autograd node:

* **flat parameters** — all weights and biases of a conditioner live in one ``nn.Parameter``
  (``flat``); the layers read views of it. An optimiser sees one tensor per conditioner instead of
  two per layer (``torch.optim.Adam`` on CPU pays per tensor). ``state_dict`` hooks keep the
  per-layer keys (``layers.0.weight``, ``0.bias``...), so checkpoints written before and after the
  change load either way.
* **masked weights materialised once per parameter update**: ``W ⊙ M`` is cached and rebuilt
  when ``flat``'s version counter moves (``load_state_dict``, an in-place init, most optimiser
  steps) or any ``torch.optim`` optimiser has stepped since (a global step hook: fused Adam
  updates in place without moving version counters). Editing ``flat.data`` behind autograd's
  back moves neither; call ``refresh()`` then.
* **one ``autograd.Function`` per stack** with a written-out backward: the ReLU runs in place on
  the fresh pre-activation buffers, the backward fills one flat gradient buffer whose weight
  slices are ``(gᵀ h) ⊙ M`` (so masked entries never receive a gradient), computed as
  ``(hᵀ g)ᵀ`` when the layer's input is narrower than its output (a faster layout at small d).
* **double backward**: when the backward itself is differentiated (``create_graph=True``:
  gradient penalties, score matching) the node re-runs the general differentiable formula on its
  saved inputs and differentiates that, so higher derivatives are exact.

The general path (plain differentiable operations on views of ``flat``) runs whenever the fast
one does not apply: other activations, residual MADE blocks, inputs that are not ``(batch,
features)`` matrices, mixed dtypes, ``torch.compile`` tracing, ``torch.func`` transforms, and
inside ``fast_path(False)``. Both give the same numbers to round-off (tested in float64).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

__all__ = [
    "fast_path", "fast_path_enabled", "refresh", "FlatSlots", "flatten_linears", "relu_stack",
    "global_hooks", "relu_backward",
]

_ENABLED = True

# Optimiser steps taken in this process. ``Adam(fused=True)`` (and other fused kernels) write
# the parameters without moving their version counters, so the cached masked weights are also
# keyed on this count, which a global post-step hook of ``torch.optim`` advances.
_STEPS = [0]


def _count_step(*_: object) -> None:
    _STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


@contextlib.contextmanager
def fast_path(enabled: bool = True) -> Iterator[None]:
    """Switch the fused conditioner path on or off inside a ``with`` block.

    Args:
        enabled: False runs every MADE/MLP conditioner through the general path.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.build("maf", features=2, transforms=1, hidden=(8,))
        >>> x = torch.randn(4, 2)
        >>> with pf.fused.fast_path(False):
        ...     slow = flow.log_prob(x)
        >>> torch.allclose(slow, flow.log_prob(x), atol=1e-5)
        True
    """
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    try:
        yield
    finally:
        _ENABLED = previous


def fast_path_enabled() -> bool:
    """Whether the fused path may run now (switch on, no compile tracing, no ``torch.func``)."""
    return (_ENABLED and not torch._C._are_functorch_transforms_active()
            and not torch.compiler.is_compiling())


def global_hooks() -> bool:
    """Whether global module forward hooks are registered (they must see every call)."""
    from torch.nn.modules import module as _module

    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks)


def refresh(module: nn.Module) -> None:
    """Forget the cached masked weights of every fused conditioner inside ``module``.

    Needed only after editing ``flat.data`` (or a layer's ``weight.data``) in place, which
    autograd's version counter does not see; optimiser steps, ``load_state_dict`` and in-place
    edits under ``torch.no_grad()`` are picked up on their own.

    Args:
        module: a flow, transform or conditioner.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.build("maf", features=2, transforms=1, hidden=(8,))
        >>> made = flow.transform.transforms[0].made
        >>> made.flat.data.mul_(0.5)  # behind autograd's back
        tensor(...)
        >>> pf.fused.refresh(flow)
    """
    for sub in module.modules():
        plan = sub.__dict__.get("_plan")
        if isinstance(plan, _Plan):
            plan.refresh()


# -- flat parameters ----------------------------------------------------------------------------


class FlatSlots:
    """Mixin for linear layers whose ``weight``/``bias`` may live in an owner's flat parameter.

    Once ``flatten_linears`` has moved them, ``layer.weight`` and ``layer.bias`` are views of
    ``owner.flat`` read at every access (so they follow ``.to()``, ``load_state_dict`` and
    ``torch.func.functional_call`` on the owner); before that the layer is an ordinary one.
    """

    def __getattr__(self, name: str) -> Tensor:
        slots = self.__dict__.get("_flat_slots")
        if slots is not None and name in slots:
            offset, shape = slots[name]
            flat = self.__dict__["_flat_owner"].flat
            return flat[offset : offset + shape.numel()].view(shape)
        return super().__getattr__(name)  # type: ignore[misc]


def flatten_linears(owner: nn.Module, layers: Sequence[tuple[str, nn.Module]]) -> None:
    """Move the weights and biases of ``layers`` into one parameter ``owner.flat``.

    The layers keep working (their ``weight``/``bias`` become views, see ``FlatSlots``); the
    owner's ``state_dict`` still lists ``"{name}.weight"``/``"{name}.bias"`` per layer (copies,
    so a checkpoint never holds aliased tensors) and ``load_state_dict`` accepts those keys.

    Args:
        owner: the module that will own ``flat`` (a MADE or an MLP).
        layers: ``(name relative to owner, layer)`` pairs; each layer mixes in ``FlatSlots``.
    """
    entries: list[tuple[str, int, torch.Size]] = []
    pieces: list[Tensor] = []
    offset = 0
    moved: list[tuple[nn.Module, str, int, torch.Size]] = []
    for name, layer in layers:
        if not isinstance(layer, FlatSlots):
            raise TypeError(f"flatten_linears: {name} ({type(layer).__name__}) lacks FlatSlots")
        for slot in ("weight", "bias"):
            param = layer._parameters.get(slot)
            if param is None:
                continue
            entries.append((f"{name}.{slot}", offset, param.shape))
            moved.append((layer, slot, offset, param.shape))
            pieces.append(param.detach().reshape(-1))
            offset += param.numel()
    owner.register_parameter("flat", nn.Parameter(torch.cat(pieces)))
    for layer, slot, start, shape in moved:
        del layer._parameters[slot]
        layer.__dict__["_flat_owner"] = owner
        layer.__dict__.setdefault("_flat_slots", {})[slot] = (start, shape)
    owner.__dict__["_flat_entries"] = entries
    owner._register_state_dict_hook(_emit_entries)
    owner._register_load_state_dict_pre_hook(_gather_entries, with_module=True)


def _emit_entries(module: nn.Module, state: dict, prefix: str, _meta: object) -> None:
    flat = state.pop(prefix + "flat", None)
    if flat is None:
        return
    for key, offset, shape in module.__dict__["_flat_entries"]:
        state[prefix + key] = flat[offset : offset + shape.numel()].view(shape).clone()


def _gather_entries(module: nn.Module, state: dict, prefix: str, *_: object) -> None:
    entries = module.__dict__["_flat_entries"]
    keys = [prefix + key for key, _, _ in entries]
    if prefix + "flat" in state:
        # both spellings (``{**flow.state_dict(), **dict(flow.named_parameters())}``): the
        # parameter's own name wins, the per-layer copies are dropped
        for key in keys:
            state.pop(key, None)
        return
    if not all(k in state for k in keys):
        return  # load_state_dict reports the missing keys
    if any(tuple(state[k].shape) != tuple(shape) for k, (_, _, shape) in zip(keys, entries)):
        return  # left in place: reported as unexpected, with ``flat`` missing
    state[prefix + "flat"] = torch.cat([state.pop(k).reshape(-1) for k in keys])


# -- the fused ReLU stack -----------------------------------------------------------------------


class _Plan:
    """What a stack needs besides its inputs: the layout of ``flat`` and the masks.

    ``flat`` holds, per layer, the weight (row-major) then the bias, and last the context weight
    (no bias). ``weights(flat)`` returns the effective weights ``W ⊙ M``, the biases and the
    context weight, detached from autograd: one product with a mask packed like ``flat`` (ones on
    biases and unmasked layers), one split, one view per weight. Without gradients (evaluation,
    sampling) the result is cached for as long as ``flat`` is the same tensor with the same
    version and storage and no optimiser has stepped (``load_state_dict`` or an in-place init
    moves the version, every ``torch.optim`` step the step count; editing ``flat.data`` moves
    neither: call ``refresh()`` then).
    """

    def __init__(self, slots: list[tuple[int, torch.Size, int, int]],
                 context_slot: tuple[int, torch.Size] | None) -> None:
        self.slots = slots  # (weight offset, weight shape, bias offset, bias size) per layer
        self.context_slot = context_slot
        self.shapes: list[torch.Size] = []
        for _, shape, _, n in slots:
            self.shapes += [shape, torch.Size([n])]
        if context_slot is not None:
            self.shapes.append(context_slot[1])
        self.sizes = [shape.numel() for shape in self.shapes]
        self.masks: list[Tensor | None] = [None] * len(slots)
        self._packed: tuple[tuple, Tensor | None] | None = None
        self._layout: tuple | None = None  # (key, layout, masks) of ``head_layout``
        # per head scale (None: the plain layout): (key, weights, biases, context weight)
        self._cache: dict[float | None, tuple] = {}

    def packed_mask(self, like: Tensor) -> Tensor | None:
        """The masks laid out like ``flat`` (None when no layer is masked)."""
        masks = self.masks
        key = tuple(id(m) for m in masks) + (like.dtype, like.device)
        if self._packed is None or self._packed[0] != key:
            if all(m is None for m in masks):
                packed = None
            else:
                pieces = []
                for (_, shape, _, n), mask in zip(self.slots, masks):
                    pieces.append(like.new_ones(shape.numel()) if mask is None
                                  else mask.to(like).reshape(-1))
                    pieces.append(like.new_ones(n))
                if self.context_slot is not None:
                    pieces.append(like.new_ones(self.context_slot[1].numel()))
                packed = torch.cat(pieces)
            # the masks are held (not only their ids) so an id cannot be reused meanwhile
            self._packed = (key, packed, masks)  # type: ignore[assignment]
        return self._packed[1]

    def unpack(self, flat: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """Weights, biases and context weight as views of a tensor laid out like ``flat``."""
        pieces = torch.split_with_sizes(flat, self.sizes)
        views = [piece if len(shape) == 1 else piece.view(shape)
                 for piece, shape in zip(pieces, self.shapes)]
        layers = len(self.slots)
        context = views[2 * layers] if self.context_slot is not None else None
        return views[0 : 2 * layers : 2], views[1 : 2 * layers : 2], context

    def head_layout(self, like: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        """The layout with the last layer's rows ``(a_1, b_1, a_2, b_2, …)`` as ``[c·a; b]``.

        Returns ``(perm, inv, s)``: the effective parameters are ``e = flat[perm] ⊙ s``, with
        ``s`` the packed mask (in ``e``'s order) times ``c = scale`` on the ``a`` rows (of the
        last weight, its bias, and the context weight when the last layer is the first);
        a gradient ``g_e`` in that layout maps back as ``∂/∂flat = (g_e ⊙ s)[inv]``.
        """
        key = (scale, like.dtype, like.device, *(id(m) for m in self.masks))
        if self._layout is None or self._layout[0] != key:
            n, device = sum(self.sizes), like.device
            perm = torch.arange(n, device=device)
            s = torch.ones(n, dtype=like.dtype, device=device)
            offset, (rows, cols), bias, _ = self.slots[-1]
            blocks = [(offset, cols), (bias, 1)]
            if len(self.slots) == 1 and self.context_slot is not None:
                blocks.append((self.context_slot[0], self.context_slot[1][1]))
            order = torch.cat([torch.arange(0, rows, 2, device=device),
                               torch.arange(1, rows, 2, device=device)])
            for start, width in blocks:
                block = start + order[:, None] * width + torch.arange(width, device=device)
                perm[start : start + rows * width] = block.reshape(-1)
                s[start : start + rows // 2 * width] = scale
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(n, device=device)
            mask = self.packed_mask(like)
            if mask is not None:
                s = s * mask[perm]
            # the masks are held, so an id in the key cannot be reused meanwhile
            self._layout = (key, (perm, inv, s), self.masks)
        return self._layout[1]

    def weights(self, flat: Tensor, scale: float | None = None,
                ) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """Effective weights, biases and context weight (see the class docstring).

        ``scale``: the last layer in ``head_layout(·, scale)`` (None: as stored).
        """
        grad = torch.is_grad_enabled()
        key = (flat, flat._version, flat.data_ptr(), _STEPS[0],
               tuple(id(m) for m in self.masks))
        cached = self._cache.get(scale)
        if grad or cached is None or not _same(key, cached[0]):
            data = flat.detach()
            if scale is None:
                mask = self.packed_mask(data)
                value = self.unpack(data if mask is None else data * mask)
            else:
                perm, _, s = self.head_layout(data, scale)
                value = self.unpack(torch.index_select(data, 0, perm).mul_(s))
            if grad:
                return value
            cached = self._cache[scale] = (key, *value)
        return cached[1:]

    def refresh(self) -> None:
        """Forget the cached weights (after editing ``flat.data`` in place)."""
        self._cache = {}


def _same(a: tuple, b: tuple) -> bool:
    return a[0] is b[0] and a[1:] == b[1:]


def _run(x: Tensor, context: Tensor | None, weights: list[Tensor], biases: list[Tensor],
         context_weight: Tensor | None) -> tuple[Tensor, list[Tensor]]:
    """Forward of the stack without autograd; returns the output and every layer's input."""
    inputs = [x]
    h = x
    last = len(weights) - 1
    for k, (weight, bias) in enumerate(zip(weights, biases)):
        a = torch.addmm(bias, h, weight.t())
        if k == 0 and context is not None:
            a.addmm_(context, context_weight.t())
        if k < last:
            a.relu_()
            inputs.append(a)
        h = a
    return h, inputs


def _stack_backward(plan: _Plan, inputs: list[Tensor], weights: list[Tensor],
                    context_weight: Tensor | None, context: Tensor | None, flat: Tensor,
                    grad: Tensor, needs: Sequence[bool], grad_flat: Tensor | None = None,
                    grad_views: tuple | None = None, masked: bool = True,
                    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The written-out backward of a stack: gradients of ``x``, ``context`` and ``flat``.

    ``weights`` (and ``inputs``) may be the first layers only, ``grad`` then being the gradient
    of the last of them's output and ``grad_flat`` a buffer whose later slots the caller
    filled (``grad_views``: its ``plan.unpack``); the mask is applied to all of it unless
    ``masked`` is False (the caller maps the buffer back itself).
    """
    grad_x = grad_context = None
    if needs[2] and grad_flat is None:
        grad_flat = torch.empty_like(flat)
    if grad_flat is not None:
        grad_weights, grad_biases, grad_context_weight = grad_views or plan.unpack(grad_flat)
    g = grad.contiguous()
    for k in range(len(weights) - 1, -1, -1):
        h = inputs[k]
        if grad_flat is not None:
            slot = grad_weights[k]
            out_features, in_features = slot.shape
            if in_features < out_features:
                slot.copy_(torch.mm(h.t(), g).t())  # (hᵀ g)ᵀ: the faster layout here
            else:
                torch.mm(g.t(), h, out=slot)
            torch.sum(g, 0, out=grad_biases[k])
            if k == 0 and context is not None:
                torch.mm(g.t(), context, out=grad_context_weight)
        if k == 0:
            if needs[0]:
                weight = weights[0]
                # a very narrow input (d ≤ 4): (Wᵀ gᵀ)ᵀ is the faster layout
                grad_x = (torch.mm(weight.t(), g.t()).t() if weight.shape[1] <= 4
                          else torch.mm(g, weight))
            if needs[1]:
                grad_context = torch.mm(g, context_weight)
        else:
            g = relu_backward(torch.mm(g, weights[k]), h)
    if grad_flat is not None and masked:
        mask = plan.packed_mask(grad_flat)
        if mask is not None:
            grad_flat.mul_(mask)  # masked entries never receive a gradient
    return grad_x, grad_context, grad_flat


def relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """``grad ⊙ [output > 0]``, written over ``grad`` (a fresh product nothing else reads)."""
    return torch.ops.aten.threshold_backward.grad_input(grad, output, 0, grad_input=grad)


class _ReluStack(torch.autograd.Function):
    """The whole conditioner as one node (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, context: Tensor | None, flat: Tensor,  # noqa: ANN001
                plan: _Plan, general: object) -> Tensor:
        with torch.enable_grad():  # rebuild the masked weights (see ``_Plan.weights``)
            weights, biases, context_weight = plan.weights(flat)
        out, inputs = _run(x, context, weights, biases, context_weight)
        ctx.save_for_backward(x, context, flat)
        ctx.inputs, ctx.weights, ctx.context_weight = inputs, weights, context_weight
        ctx.plan, ctx.general = plan, general
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        x, context, flat = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            # differentiating the backward (create_graph=True): differentiate the general
            # formula instead, so every higher derivative is exact
            wanted = [t for t, n in zip((x, context, flat), needs) if n]
            with torch.enable_grad():
                out = ctx.general(x, context, flat)
            found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True,
                                             allow_unused=True))
            grads = [next(found) if n else None for n in needs]
            return grads[0], grads[1], grads[2], None, None
        grad_x, grad_context, grad_flat = _stack_backward(
            ctx.plan, ctx.inputs, ctx.weights, ctx.context_weight, context, flat, grad, needs)
        return grad_x, grad_context, grad_flat, None, None


def relu_stack(x: Tensor, context: Tensor | None, flat: Tensor, plan: _Plan,
               general: object) -> Tensor:
    """Evaluate a ReLU stack on the fast path (one autograd node when a gradient is wanted).

    Args:
        x: ``(batch, in_features)``.
        context: ``(batch, context_features)`` added through the first layer, or None.
        flat: the owner's flat parameter.
        plan: slots and masks of the stack.
        general: ``general(x, context, flat)``, the differentiable formula (double backward).

    Returns:
        ``(batch, out_features)``.
    """
    if torch.is_grad_enabled() and (
        x.requires_grad or flat.requires_grad or (context is not None and context.requires_grad)
    ):
        return _ReluStack.apply(x, context, flat, plan, general)
    weights, biases, context_weight = plan.weights(flat)
    return _run(x, context, weights, biases, context_weight)[0]
