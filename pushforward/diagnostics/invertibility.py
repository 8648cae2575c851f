"""How invertible is a flow in floating point? Reconstruction errors and local conditioning.

A flow is invertible on paper; in float32 its inverse can lose most of its digits (SPEC §5). The
report measures, on the data you give it:

* the round-trip error ``‖f(f⁻¹(x)) − x‖`` per sample, in the flow's dtype and in a float64 copy
  (the float64 copy separates rounding from an inverse that is itself inexact or wrong);
* how far the latents ``f⁻¹(x)`` computed in the flow's dtype are from the float64 ones;
* the local conditioning of the normalizing map ``x ↦ z``: the largest and smallest singular
  values of its Jacobian ``J(x) = ∂f⁻¹/∂x`` by power iteration on Jacobian-vector products
  (never forming ``J``, so it scales to images). ``σ_max(J)`` is power iteration on ``JᵀJ``;
  ``σ_min(J) = 1/σ_max(∂f/∂z)`` is power iteration on the generative map at ``z = f⁻¹(x)``.
  Their ratio ``κ = σ_max/σ_min`` bounds how much a relative rounding error of the input can
  grow: about ``κ · eps`` of the output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Flow, Transform
from pushforward.evaluation import eval_mode

__all__ = ["invertibility_report", "InvertibilityReport", "singular_value_extremes"]

_PERCENTILES = (50.0, 90.0, 99.0, 100.0)


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=-1)


@dataclass
class InvertibilityReport:
    """The result of ``invertibility_report``; ``str(report)`` is a readable summary.

    Attributes:
        reconstruction_error: ``‖f(f⁻¹(x)) − x‖`` per sample in the flow's dtype, ``(N,)``.
        reconstruction_error_64: the same for a float64 copy of the flow, ``(N,)`` float64.
        relative_error: ``reconstruction_error`` divided by ``max(‖x_i‖, median_j ‖x_j‖)``.
        relative_error_64: the same for the float64 copy.
        latent_error: ``‖f⁻¹(x) − f⁻¹₆₄(x)‖ / max(‖z_i‖, median ‖z‖)``: how wrong the latents
            (hence ``log p``) computed in the flow's dtype are, ``(N,)``.
        percentiles: percentiles (50, 90, 99, 100) of ``relative_error``.
        worst: the worst samples as ``(index, absolute error, relative error, relative error
            in float64)``, worst first.
        conditioning_index: indices of the samples whose conditioning was estimated.
        sigma_max: largest singular value of ``∂f⁻¹/∂x`` at those samples (power iteration;
            a lower bound that converges from below).
        sigma_min: smallest singular value of ``∂f⁻¹/∂x`` (``1/σ_max(∂f/∂z)``; an upper bound).
        condition: ``sigma_max / sigma_min`` (a lower bound on the condition number).
        dtype: the flow's dtype.
        thresholds: the thresholds ``ok`` was decided with.
        ok: False when a threshold is exceeded.
        reason: why ``ok`` is False ("" when it is True).
    """

    reconstruction_error: Tensor
    reconstruction_error_64: Tensor
    relative_error: Tensor
    relative_error_64: Tensor
    latent_error: Tensor
    percentiles: dict[float, float]
    worst: list[tuple[int, float, float, float]]
    conditioning_index: Tensor
    sigma_max: Tensor
    sigma_min: Tensor
    condition: Tensor
    dtype: torch.dtype
    thresholds: dict[str, float] = field(default_factory=dict)
    ok: bool = True
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        eps = torch.finfo(self.dtype).eps
        n = self.reconstruction_error.shape[0]
        name = str(self.dtype).replace("torch.", "")
        lines = [
            f"Invertibility report ({n} samples, flow dtype {name}, eps {eps:.1e})",
            "  relative round-trip error ‖f(f⁻¹(x)) − x‖ / ‖x‖:",
            "    " + "  ".join(f"p{p:g} {v:.2e}" for p, v in self.percentiles.items()),
        ]
        if n:
            lines.append(
                f"    float64 copy: median {self.relative_error_64.median().item():.2e}  "
                f"max {self.relative_error_64.max().item():.2e}"
            )
            lines.append(
                f"  latent error vs float64 ‖z − z₆₄‖/‖z‖: median "
                f"{self.latent_error.median().item():.2e}  "
                f"max {self.latent_error.max().item():.2e}"
            )
            digits = -math.log10(max(float(self.relative_error.max()), eps * 1e-3))
            available = -math.log10(eps)
            lines.append(f"  correct digits in the worst round trip: "
                         f"{min(max(digits, 0.0), available):.1f} of {available:.1f}")
        if self.condition.numel():
            c = self.condition
            lines.append(
                f"  conditioning of x ↦ z on {c.numel()} samples: κ median {c.median().item():.2e}"
                f"  max {c.max().item():.2e}  (σ_max up to {self.sigma_max.max().item():.2e}, "
                f"σ_min down to {self.sigma_min.min().item():.2e}); κ·eps max "
                f"{c.max().item() * eps:.1e}"
            )
        if self.worst:
            lines.append("  worst samples (index: abs error, rel error, rel error in float64):")
            for i, a, r, r64 in self.worst:
                lines.append(f"    {i:6d}: {a:.2e}  {r:.2e}  {r64:.2e}")
        limits = ", ".join(f"{k} {v:.1e}" for k, v in self.thresholds.items())
        lines.append(f"  thresholds: {limits}")
        lines.append("  OK" if self.ok else f"  NOT OK: {self.reason}")
        return "\n".join(lines)


# -- power iteration --------------------------------------------------------------------------
def _normalise(v: Tensor) -> Tensor:
    norm = _per_sample_norm(v).clamp_min(torch.finfo(v.dtype).tiny)
    return v / norm.reshape(-1, *([1] * (v.dim() - 1)))


def _top_singular_value(
    fn: Callable[..., Tensor], inputs: Tensor, n_iter: int, tol: float, generator: torch.Generator
) -> Tensor:
    """Per-sample ``σ_max`` of the Jacobian of a batch-independent map, by power iteration.

    ``J v`` comes from double backward (the gradient of ``u ↦ Jᵀu`` with respect to ``u``) and
    ``Jᵀw`` from backward, on one recorded graph; ``J`` is never formed.
    """
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(inputs)
        u = torch.zeros_like(out, requires_grad=True)
        (jtu,) = torch.autograd.grad(out, inputs, u, create_graph=True)
        v = torch.randn(inputs.shape, generator=generator, dtype=torch.float64)
        v = _normalise(v.to(dtype=inputs.dtype, device=inputs.device))  # host draw, any device
        sigma = inputs.new_zeros(inputs.shape[0])
        for _ in range(max(1, n_iter)):
            (jv,) = torch.autograd.grad(jtu, u, v, retain_graph=True, allow_unused=True)
            if jv is None:  # the map does not depend on its input
                return sigma
            new = _per_sample_norm(jv).detach()
            (jtjv,) = torch.autograd.grad(out, inputs, jv, retain_graph=True)
            v = _normalise(jtjv.detach())
            done = ((new - sigma).abs() <= tol * new).all()
            sigma = new
            if done:
                break
    return sigma


def singular_value_extremes(
    transform: Transform,
    x: Tensor,
    context: Tensor | None = None,
    n_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Largest and smallest singular values of ``∂f⁻¹/∂x`` per sample, by power iteration.

    ``σ_max`` is power iteration on ``JᵀJ`` with ``J = ∂f⁻¹/∂x``; ``σ_min = 1/σ_max(∂f/∂z)`` at
    ``z = f⁻¹(x)``. Only Jacobian-vector products are used, so the cost is ``O(n_iter)`` passes
    whatever the dimension. The transform must act on each sample independently (eval mode).

    Args:
        transform: the flow's transform (generative direction ``z → x``).
        x: data-side points ``(batch, *event_shape)``; the transform's dtype is used.
        context: ``(batch, context_features)`` or None.
        n_iter: the most power iterations per map.
        tol: stop when every estimate changed by less than ``tol`` (relative).
        seed: seed of the random starting vectors.

    Returns:
        ``(sigma_max, sigma_min)``, each ``(batch,)``.

    Example:
        >>> import torch, pushforward as pf
        >>> t = pf.transforms.Affine(3, scale=torch.tensor([2.0, 0.5, 1.0])).double()
        >>> hi, lo = singular_value_extremes(t, torch.randn(4, 3, dtype=torch.float64))
        >>> [round(v, 3) for v in (hi[0].item(), lo[0].item())]
        [2.0, 0.5]
    """
    generator = torch.Generator().manual_seed(int(seed))
    with _v.validation(False):
        sigma_max = _top_singular_value(
            lambda x_: transform.inverse(x_, context)[0], x, n_iter, tol, generator
        )
        with torch.no_grad():
            z = transform.inverse(x, context)[0]
        sigma_fwd = _top_singular_value(
            lambda z_: transform(z_, context)[0], z, n_iter, tol, generator
        )
    return sigma_max, 1.0 / sigma_fwd


# -- the report -------------------------------------------------------------------------------
def _parts(model: nn.Module) -> tuple[Transform, Flow | None]:
    if isinstance(model, Flow):
        return model.transform, model
    if isinstance(model, Transform):
        return model, None
    raise TypeError(
        "invertibility_report: expected a pushforward Flow or Transform, got "
        f"{type(model).__name__}"
    )


def _round_trip(
    model: nn.Module, x: Tensor, context: Tensor | None, batch_size: int
) -> tuple[Tensor, Tensor]:
    """``(f⁻¹(x), f(f⁻¹(x)))`` in chunks, with the flow's context embedding applied."""
    transform, flow = _parts(model)
    zs, xs = [], []
    with torch.no_grad(), _v.validation(False):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            cb = None if context is None else context[start : start + batch_size]
            if flow is not None:
                cb = flow.embed_context(cb, xb.shape[0])
            z, _ = transform.inverse(xb, cb)
            x2, _ = transform(z, cb)
            zs.append(z)
            xs.append(x2)
    return torch.cat(zs), torch.cat(xs)


def _relative(err: Tensor, ref: Tensor) -> Tensor:
    norms = _per_sample_norm(ref)
    floor = norms.median() if norms.numel() else norms.new_ones(())
    floor = floor.clamp_min(torch.finfo(norms.dtype).tiny)
    return err / torch.maximum(norms, floor)


def invertibility_report(
    flow: Flow | Transform,
    x: Tensor,
    context: Tensor | None = None,
    *,
    rtol: float | None = None,
    max_condition: float | None = None,
    n_conditioning: int = 32,
    n_iter: int = 20,
    tol: float = 1e-3,
    conditioning_dtype: torch.dtype = torch.float64,
    n_worst: int = 5,
    batch_size: int = 1024,
    seed: int = 0,
) -> InvertibilityReport:
    """Measure how well a flow inverts in floating point on the data ``x``, and flag failures.

    The flow is evaluated in eval mode (its training flag is restored) and in a float64 deep
    copy. ``ok`` is False, with the reason, when any of these holds:

    * the worst relative round-trip error ``‖f(f⁻¹(x)) − x‖ / ‖x‖`` in the flow's dtype exceeds
      ``rtol`` (the reason says whether the float64 copy reconstructs: rounding, or an inverse
      that is inexact even in float64);
    * the worst relative error of the latents ``f⁻¹(x)`` against the float64 copy's exceeds
      ``rtol`` (log-densities are then wrong in the flow's dtype);
    * the estimated condition number ``κ`` of ``∂f⁻¹/∂x`` exceeds ``max_condition`` somewhere:
      rounding errors of relative size ``eps`` can then grow to ``κ·eps``.

    The relative errors divide by ``max(‖x_i‖, median_j ‖x_j‖)`` so a sample near 0 is judged on
    the batch's scale.

    Args:
        flow: a ``Flow`` or a ``Transform`` (acting on each sample independently in eval mode).
        x: data-side points ``(N, *event_shape)``; cast to the flow's dtype.
        context: ``(N, context_features)`` for conditional flows.
        rtol: largest acceptable relative error; default ``sqrt(eps)`` of the flow's dtype (half
            the digits: 3.5e-4 in float32, 1.5e-8 in float64).
        max_condition: largest acceptable ``κ``; default ``1e-2 / eps`` (rounding may then grow
            to at most 1%: 8.4e4 in float32, 4.5e13 in float64).
        n_conditioning: conditioning is estimated on this many samples (drawn with ``seed``);
            0 skips it.
        n_iter: the most power iterations per singular value.
        tol: power iteration stops when every estimate moved by less than ``tol`` (relative).
        conditioning_dtype: dtype of the copy the conditioning is computed with (float64 by
            default; the flow's own dtype is several times faster on CPU for large images).
        n_worst: how many worst samples to list.
        batch_size: chunk size of the round trips.
        seed: seed of the conditioning subset and the power-iteration start vectors.

    Returns:
        An ``InvertibilityReport`` (``.reconstruction_error``, ``.ok``, ``.reason``, ``str()``).

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.Flow(pf.transforms.Affine(2, scale=3.0), pf.StandardNormal(2))
        >>> report = invertibility_report(flow, torch.randn(100, 2))
        >>> report.ok, report.reconstruction_error.shape
        (True, torch.Size([100]))
    """
    transform, _ = _parts(flow)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("invertibility_report: x must be a floating-point torch.Tensor")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError("invertibility_report: x must hold at least one sample")
    if int(batch_size) < 1:
        raise ValueError(f"invertibility_report: batch_size must be >= 1, got {batch_size}")
    if context is not None and context.shape[0] != x.shape[0]:
        raise ValueError(
            f"invertibility_report: context has {context.shape[0]} rows but x has {x.shape[0]}"
        )
    dtype = _v.dtype_of(flow)
    device = _v.device_of(flow)
    eps = torch.finfo(dtype).eps
    rtol = math.sqrt(eps) if rtol is None else float(rtol)
    max_condition = 1e-2 / eps if max_condition is None else float(max_condition)
    if not rtol > 0 or not max_condition > 0:
        raise ValueError("invertibility_report: rtol and max_condition must be positive")
    if _v.is_validating():
        _v.check_tensor(x, transform.event_shape, "invertibility_report", "x")
        transform._check_x(x.to(device=device, dtype=dtype))

    with eval_mode(flow):
        x_lo = x.detach().to(device=device, dtype=dtype)
        ctx_lo = None if context is None else context.detach().to(device=device, dtype=dtype)
        z_lo, x2_lo = _round_trip(flow, x_lo, ctx_lo, int(batch_size))
    flow64 = copy.deepcopy(flow).double().eval()
    x64 = x.detach().to(device=device, dtype=torch.float64)
    ctx64 = None if context is None else context.detach().to(device=device, dtype=torch.float64)
    z64, x2_64 = _round_trip(flow64, x64, ctx64, int(batch_size))

    err = _per_sample_norm(x2_lo - x_lo)
    err64 = _per_sample_norm(x2_64 - x64)
    rel = _relative(err.double(), x64)
    rel64 = _relative(err64, x64)
    latent = _relative(_per_sample_norm(z_lo.double() - z64), z64)
    rel_sorted = torch.nan_to_num(rel, nan=math.inf)
    q = torch.tensor([p / 100 for p in _PERCENTILES], dtype=torch.float64)
    values = torch.nan_to_num(torch.quantile(rel_sorted, q, interpolation="higher"), nan=math.inf)
    percentiles = {p: float(v) for p, v in zip(_PERCENTILES, values)}
    order = torch.argsort(rel_sorted, descending=True)[: max(0, int(n_worst))]
    worst = [(int(i), float(err[i]), float(rel_sorted[i]), float(rel64[i])) for i in order]

    n = x.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    k = min(max(0, int(n_conditioning)), n)
    index = torch.randperm(n, generator=generator)[:k].sort().values
    sigma_max = sigma_min = x64.new_zeros(0)
    if k:
        model = flow64 if conditioning_dtype == torch.float64 else (
            copy.deepcopy(flow).to(conditioning_dtype).eval()
        )
        t_c, f_c = _parts(model)
        sub_x = x64[index].to(conditioning_dtype)
        sub_ctx = None if ctx64 is None else ctx64[index].to(conditioning_dtype)
        if f_c is not None and sub_ctx is not None:
            sub_ctx = f_c.embed_context(sub_ctx, k).detach()
        sigma_max, sigma_min = singular_value_extremes(
            t_c, sub_x, sub_ctx, n_iter=n_iter, tol=tol, seed=int(seed)
        )
        sigma_max, sigma_min = sigma_max.double(), sigma_min.double()
    condition = sigma_max / sigma_min

    reasons = []
    worst_rel = float(rel_sorted.max())
    if not worst_rel <= rtol:
        i = int(order[0])
        cause = (
            f"the float64 copy reconstructs it to {float(rel64[i]):.1e}, so this is rounding "
            f"in {str(dtype).replace('torch.', '')}"
            if float(rel64[i]) <= rtol
            else f"the float64 copy fails too ({float(rel64[i]):.1e}): the inverse is inexact "
            "or wrong, not just rounded"
        )
        reasons.append(
            f"round-trip relative error {worst_rel:.1e} at sample {i} exceeds rtol {rtol:.1e} "
            f"({int((rel_sorted > rtol).sum())} of {n} samples); {cause}"
        )
    worst_latent = float(latent.max())
    if not worst_latent <= rtol:
        i = int(torch.argmax(torch.nan_to_num(latent, nan=math.inf)))
        reasons.append(
            f"latents f⁻¹(x) differ from the float64 copy's by {worst_latent:.1e} (relative) at "
            f"sample {i}, above rtol {rtol:.1e}: log p is inaccurate in this dtype"
        )
    if condition.numel():
        worst_cond = float(condition.max())
        if not worst_cond <= max_condition:
            i = int(index[int(torch.argmax(torch.nan_to_num(condition, nan=math.inf)))])
            reasons.append(
                f"condition number of ∂f⁻¹/∂x reaches {worst_cond:.1e} at sample {i} "
                f"(σ_max/σ_min), above max_condition {max_condition:.1e}: rounding errors can "
                f"grow to κ·eps = {worst_cond * eps:.1e}"
            )
    return InvertibilityReport(
        reconstruction_error=err,
        reconstruction_error_64=err64,
        relative_error=rel,
        relative_error_64=rel64,
        latent_error=latent,
        percentiles=percentiles,
        worst=worst,
        conditioning_index=index,
        sigma_max=sigma_max,
        sigma_min=sigma_min,
        condition=condition,
        dtype=dtype,
        thresholds={"rtol": rtol, "max_condition": max_condition},
        ok=not reasons,
        reason="; ".join(reasons),
    )
