"""Fused density path of affine layers: a MAF layer, or a whole flow of them, as one node.

An affine layer maps ``x_B = x`` (MAF) or the transformed part ``x_B`` of ``x`` (a vector
coupling, whose kept part ``x_A`` passes unchanged) to ``z_B = x_B e^{−s} + m`` with
``(ŝ, m) = net(u)``, ``u = x`` (a MADE) or ``u = x_A`` (an MLP), ``−s = −B tanh(ŝ/B)``
(``pushforward.transforms.maps.AffineMap``) and ``ladj = Σ −s``. ``Flow.log_prob`` of a chain of
such layers on ``N(0, I)``,

    log p(x) = Σ_k Σ_i −s_{k,i} − ½‖z‖² − (D/2) log 2π,

runs here as **one** autograd node (``affine_chain``) with a written-out backward
(``∂ log p/∂z = −z``, then each layer: ``∂z/∂x_B = e^{−s}``, ``∂z/∂m = 1``,
``∂z/∂(−s) = x_B e^{−s}``, ``∂(−s)/∂ŝ = (−s/B)² − 1``, and the conditioner's stack as in
``pushforward.fused``), so the per-layer wrappers, the ladj sums and the base density add no
autograd node and no Python call per layer. A MAF layer called on its own is the same node with
one stage and no base. When the backward is itself differentiated (``create_graph=True``) the
node differentiates the general formula instead, so higher derivatives are exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pushforward import fused as _fused

__all__ = ["AffineStage", "affine_chain"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class AffineStage:
    """One affine layer of the fused path: its conditioner and which features it reads and maps.

    Args:
        net: the conditioner, a module with a flat parameter ``flat`` and a method
            ``_fused_plan()`` returning its ``pushforward.fused._Plan`` (a MADE or a fused MLP).
            Its last layer's rows alternate ``(ŝ_i, m_i)``.
        bound: the affine map's clamp ``B`` (None: none).
        parts: for a coupling, the slices of ``x_A`` and ``x_B``; None for a MAF layer
            (``u = x_B = x``).
    """

    def __init__(self, net: nn.Module, bound: float | None,
                 parts: tuple[slice, slice] | None = None) -> None:
        self.net, self.bound, self.parts = net, bound, parts
        self.scale = -1.0 if bound is None else -2.0 / bound  # of the ŝ rows (``_affine``)
        self.cols = parts  # the parts in the working layout (``_interleaved``)

    def usable(self, x: Tensor, context: Tensor | None) -> bool:
        """Whether the fused path may run this layer (dtypes, a context if read, no hooks)."""
        net = self.net
        if net._plan.context_slot is not None and (
                context is None or context.dim() != 2 or context.dtype != x.dtype):
            return False
        return (x.dtype == net.flat.dtype and not net._forward_hooks
                and not net._forward_pre_hooks)

    def inverse(self, x: Tensor, context: Tensor | None, flat: Tensor,
                plan: _fused._Plan) -> tuple[Tensor, Tensor, tuple]:
        """``z``, ``−s`` and what the backward needs."""
        weights, biases, context_weight = plan.weights(flat, self.scale)
        if self.parts is None:
            context = context if context_weight is not None else None
            neg, e, z, inputs = _affine(x, x, context, weights, biases, context_weight,
                                        self.bound)
            return z, neg, (inputs, weights, context_weight, neg, e, x)
        part_a, part_b = self.cols
        u, x_b = x[:, part_a], x[:, part_b]
        neg, e, z_b, inputs = _affine(u, x_b, None, weights, biases, None, self.bound)
        state = (inputs, weights, None, neg, e, x_b)
        if part_a.step == 1 and part_b.step == 1:  # column blocks
            return torch.cat([u, z_b] if part_a.start == 0 else [z_b, u], 1), neg, state
        z = x.clone()
        z[:, part_b] = z_b
        return z, neg, state

    def backward(self, saved: tuple, plan: _fused._Plan, flat: Tensor, context: Tensor | None,
                 grad_z: Tensor | None, grad_ladj: Tensor | None, needs: Sequence[bool],
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Gradients of ``x``, ``context`` and ``flat`` from those of ``z`` and ``ladj``.

        ``grad_ladj`` is ``(batch, 1)`` (one value per sample: ``ladj`` is a sum over features).
        The last layer is differentiated in its reordered form ``[−2ŝ/B; m]`` (``_affine``),
        with ``∂(−s)/∂(−2ŝ/B) = (B/2)(1 − (s/B)²)``; ``plan.head_layout`` maps the gradient
        back to the stored rows.
        """
        inputs, weights, context_weight, neg, e, x_b = saved
        part_a, part_b = self.cols if self.cols is not None else (None, None)
        grad_zb = grad_z if grad_z is None or part_b is None else grad_z[:, part_b]
        if grad_zb is None:
            grad_zb = torch.zeros_like(x_b)
            direct = None
            grad_neg = grad_ladj.expand_as(neg).clone()
        else:
            direct = grad_zb * e  # ∂z/∂x_B at fixed parameters
            grad_neg = (torch.addcmul(grad_ladj, direct, x_b) if grad_ladj is not None
                        else direct * x_b)
        bound = self.bound
        if bound is not None:
            grad_neg.mul_(neg.square().mul_(-0.5 / bound).add_(0.5 * bound))
        grad_u, grad_context, grad_flat = _head_backward(
            plan, inputs, weights, context_weight, context, flat,
            torch.cat([grad_neg, grad_zb], 1), self.scale, needs)
        if not needs[0]:
            return None, grad_context, grad_flat
        if part_a is None:
            grad_x = grad_u if direct is None else grad_u.add_(direct)
            return grad_x, grad_context, grad_flat
        if grad_z is not None:
            grad_u = grad_u.add_(grad_z[:, part_a])
        if direct is None:
            direct = torch.zeros_like(x_b)
        if part_a.step == 1 and part_b.step == 1:  # column blocks
            grad_x = torch.cat([grad_u, direct] if part_a.start == 0 else [direct, grad_u], 1)
        else:
            grad_x = grad_u.new_empty(x_b.shape[0], x_b.shape[1] + grad_u.shape[1])
            grad_x[:, part_a] = grad_u
            grad_x[:, part_b] = direct
        return grad_x, grad_context, grad_flat


def _head_backward(plan: _fused._Plan, inputs: list[Tensor], weights: list[Tensor],
                   context_weight: Tensor | None, context: Tensor | None, flat: Tensor,
                   grad: Tensor, scale: float, needs: Sequence[bool],
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The conditioner's backward from ``grad`` of the reordered last layer's output.

    ``weights`` (and ``context_weight``) are in ``plan.head_layout(·, scale)``, as the forward
    used them; the gradient is computed in that layout and mapped back to ``flat``'s.
    """
    last = len(weights) - 1
    grad_head = torch.empty_like(flat) if needs[2] else None
    h = inputs[last]
    top_context = context if last == 0 else None
    views = None
    if grad_head is not None:
        views = grad_weights, grad_biases, grad_context_weight = plan.unpack(grad_head)
        if h.shape[1] < grad.shape[1]:
            grad_weights[last].copy_(torch.mm(h.t(), grad).t())  # the faster layout here
        else:
            torch.mm(grad.t(), h, out=grad_weights[last])
        torch.sum(grad, 0, out=grad_biases[last])
        if top_context is not None:
            torch.mm(grad.t(), top_context, out=grad_context_weight)
    if last:
        grad_h = _fused.relu_backward(torch.mm(grad, weights[last]), h)
        grad_u, grad_context, _ = _fused._stack_backward(
            plan, inputs[:last], weights[:last], context_weight, context, flat, grad_h, needs,
            grad_head, views, masked=False)
    else:
        grad_u = torch.mm(grad, weights[0]) if needs[0] else None
        grad_context = (torch.mm(grad, context_weight)
                        if needs[1] and top_context is not None else None)
    if grad_head is None:
        return grad_u, grad_context, None
    _, inv, s = plan.head_layout(grad_head, scale)
    return grad_u, grad_context, torch.index_select(grad_head.mul_(s), 0, inv)


def _affine(u: Tensor, x: Tensor, context: Tensor | None, weights: list[Tensor],
            biases: list[Tensor], context_weight: Tensor | None,
            bound: float | None) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """``−s``, ``e^{−s}``, ``z`` and every layer's input, from the conditioner's weights.

    The last layer comes in ``_Plan.head_layout``: its rows ``(ŝ_i, m_i)`` reordered to
    ``[ŝ; m]`` and the ``ŝ`` rows scaled by ``−2/B`` (−1 without a bound), so ``ŝ`` and ``m``
    are column blocks (faster elementwise work than on alternate columns: d = 16, 64 in
    ``benchmarks/suite.py``). With a bound, ``−s = B (2 σ(−2ŝ/B) − 1)``.
    """
    last = len(weights) - 1
    if last:
        h, inputs = _fused._run(u, context, weights[:last], biases[:last], context_weight)
        inputs.append(h.relu_())
        context = None  # the context entered the first layer
    else:
        h, inputs = u, [u]
    out = torch.addmm(biases[last], h, weights[last].t())
    if context is not None:
        out.addmm_(context, context_weight.t())
    d = x.shape[1]
    raw, shift = out[:, :d], out[:, d:]
    # contiguous from here on: strided operands leave the vectorised kernels (exp: 2-3x)
    neg = raw.contiguous() if bound is None else raw.sigmoid().mul_(2.0 * bound).sub_(bound)
    e = neg.exp()
    return neg, e, torch.addcmul(shift, x, e), inputs


def _interleaved(stages: Sequence[AffineStage], d: int) -> bool:
    """Whether every stage is a coupling on the even and odd features (alternating masks).

    The chain then works on ``[x_even | x_odd]``, where every part is a column block (a cat
    instead of a strided scatter, contiguous operands); ``cols`` are set to those blocks. Only
    with the base density folded in, which ignores the order of ``z``.
    """
    if not stages or any(stage.parts is None for stage in stages):
        return False
    if all(stage.cols[0].step == 1 and stage.cols[1].step == 1 for stage in stages):
        return False  # already blocks (half masks)
    if not all({(a.start, a.step), (b.start, b.step)} == {(0, 2), (1, 2)}
               for a, b in (stage.cols for stage in stages)):
        return False
    blocks = {0: slice(0, (d + 1) // 2, 1), 1: slice((d + 1) // 2, d, 1)}
    for stage in stages:
        stage.cols = (blocks[stage.cols[0].start], blocks[stage.cols[1].start])
    return True


def _split(x: Tensor) -> Tensor:
    """``[x_even | x_odd]``."""
    return torch.cat([x[:, 0::2], x[:, 1::2]], 1)


def _merge(y: Tensor) -> Tensor:
    """The inverse of ``_split``."""
    x = torch.empty_like(y)
    even = (y.shape[1] + 1) // 2
    x[:, 0::2] = y[:, :even]
    x[:, 1::2] = y[:, even:]
    return x


def _run_chain(x: Tensor, context: Tensor | None, stages: Sequence[AffineStage],
               flats: Sequence[Tensor], plans: Sequence[_fused._Plan], base: bool,
               saved: list | None) -> tuple[Tensor, Tensor]:
    """The stages in order, then the base density if ``base``: ``z`` and the total.

    ``z`` is in the layout ``x`` came in (``_interleaved``: possibly evens then odds).
    """
    total = None
    for stage, flat, plan in zip(stages, flats, plans):
        x, neg, state = stage.inverse(x, context, flat, plan)
        ladj = neg.sum(-1)
        total = ladj if total is None else total.add_(ladj)
        if saved is not None:
            saved.append(state)
    if base:  # the base density does not depend on the order of the features
        total = total.sub_(x.square().sum(-1), alpha=0.5).sub_(x.shape[-1] * _HALF_LOG_2PI)
    return x, total


class _AffineChain(torch.autograd.Function):
    """The stages (and the base density) as one node (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, context: Tensor | None, stages: Sequence[AffineStage],  # noqa: ANN001
                plans: Sequence[_fused._Plan], base: bool, general: Callable,
                *flats: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        saved: list = []
        split = base and _interleaved(stages, x.shape[1])  # z is not returned then
        with torch.enable_grad():  # rebuild the masked weights (see ``_Plan.weights``)
            z, total = _run_chain(_split(x) if split else x, context, stages, flats, plans,
                                  base, saved)
        ctx.save_for_backward(x, context, *flats)
        ctx.states, ctx.stages, ctx.plans, ctx.base, ctx.general = (
            saved, stages, plans, base, general)
        ctx.z, ctx.split = (z if base else None), split
        ctx.set_materialize_grads(False)
        return total if base else (z, total)

    @staticmethod
    def backward(ctx, *grads: Tensor | None):  # noqa: ANN001, ANN205
        grad_z, grad_total = (None, grads[0]) if ctx.base else grads
        x, context, *flats = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if grad_z is None and grad_total is None:
            return (None,) * len(needs)
        if torch.is_grad_enabled():  # double backward: differentiate the general formula
            wanted = [t for t, n in zip((x, context, *flats), needs[:2] + needs[6:]) if n]
            with torch.enable_grad():
                outputs = ctx.general(x, context)  # (z, total)
            pairs = [(o, g) for o, g in zip(outputs, (grad_z, grad_total)) if g is not None]
            found = iter(torch.autograd.grad([o for o, _ in pairs], wanted,
                                             [g for _, g in pairs], create_graph=True,
                                             allow_unused=True))
            grads = [next(found) if n else None for n in needs[:2] + needs[6:]]
            return grads[0], grads[1], None, None, None, None, *grads[2:]
        grad_ladj = None if grad_total is None else grad_total.unsqueeze(-1)
        if ctx.base and grad_ladj is not None:
            from_base = ctx.z * grad_ladj
            grad_z = from_base.neg_() if grad_z is None else grad_z.sub(from_base)
        grad_context = None
        grad_flats: list[Tensor | None] = [None] * len(flats)
        for k in range(len(flats) - 1, -1, -1):
            want = (k > 0 or needs[0], needs[1], needs[6 + k])
            grad_z, grad_c, grad_flats[k] = ctx.stages[k].backward(
                ctx.states[k], ctx.plans[k], flats[k], context, grad_z, grad_ladj, want)
            if grad_c is not None:
                grad_context = grad_c if grad_context is None else grad_context.add_(grad_c)
        if ctx.split and grad_z is not None:
            grad_z = _merge(grad_z)
        return grad_z, grad_context, None, None, None, None, *grad_flats


def affine_chain(x: Tensor, context: Tensor | None, stages: Sequence[AffineStage], base: bool,
                 general: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]],
                 ) -> tuple[Tensor, Tensor] | Tensor:
    """The density direction of affine layers in order, on the fast path.

    Args:
        x: ``(batch, d)``.
        context: ``(batch, context_features)`` read by MAF layers, or None.
        stages: the layers in the order the density direction applies them.
        base: also add ``log N(z; 0, I)`` to the total.
        general: ``general(x, context) -> (z, total)``, the differentiable formula (double
            backward).

    Returns:
        ``z`` ``(batch, d)`` and ``Σ ladj`` ``(batch,)``; with ``base``, ``Σ ladj + log p_0(z)``
        alone.
    """
    flats = [stage.net.flat for stage in stages]
    plans = [stage.net._fused_plan() for stage in stages]
    if torch.is_grad_enabled() and (
        x.requires_grad or any(f.requires_grad for f in flats)
        or (context is not None and context.requires_grad)
    ):
        return _AffineChain.apply(x, context, stages, plans, base, general, *flats)
    split = base and _interleaved(stages, x.shape[1])  # z is not returned then
    z, total = _run_chain(_split(x) if split else x, context, stages, flats, plans, base, None)
    return total if base else (z, total)
