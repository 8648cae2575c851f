"""The generic transform test kit: ``check_transform`` verifies the Transform contract."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor

from pushforward.core import Transform

__all__ = ["check_transform", "TransformCheckError"]


class TransformCheckError(AssertionError, ValueError):
    """A transform broke its contract; the message names the property and the discrepancy."""


def _max_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def _expect(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise TransformCheckError(f"{name}: {message}")


def _close(a: Tensor, b: Tensor, atol: float, rtol: float) -> bool:
    return bool(torch.allclose(a, b, atol=atol, rtol=rtol))


def _jacobian_ladj(t: Transform, z: Tensor, context: Tensor | None) -> Tensor:
    """``log|det ∂f/∂z|`` per sample from the autograd Jacobian (flattening event shapes)."""
    out = []
    for i in range(z.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def f(zi: Tensor, ctx: Tensor | None = ctx) -> Tensor:
            return t(zi.unsqueeze(0), ctx)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, z[i])
        jac = jac.reshape(jac.shape[0], -1)
        if jac.shape[0] != jac.shape[1]:
            raise TransformCheckError(
                f"jacobian: not square ({tuple(jac.shape)}); a dimension-changing map has no "
                "Euclidean log-determinant (use manifold=...)"
            )
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out) if out else z.new_zeros(0)


def _same_draws(call: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """``call()`` with the global RNG at a fixed state (restored after).

    Stochastic transforms (Hutchinson, Russian roulette) then draw the same noise on every call.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return call()


def _check_context_ignored(t: Transform, x: Tensor, z: Tensor) -> float:
    """Check that an unconditional transform ignores a context, in both directions.

    Given a random context it returns exactly what it returns without one (the contract:
    ``Chain`` passes contexts blindly).
    """
    width = 3
    noise = torch.randn(x.shape[0], width, generator=torch.Generator().manual_seed(1),
                        dtype=x.dtype).to(x.device)  # drawn on the host: the same on any device
    worst = 0.0
    for name, method, value in (("forward", t.forward, z), ("inverse", t.inverse, x)):
        try:
            with torch.no_grad():
                got = _same_draws(lambda m=method, v=value: m(v, noise))
        except Exception as err:  # noqa: BLE001 - any refusal breaks the contract
            raise TransformCheckError(
                f"context ignored: the unconditional {type(t).__name__}.{name} refused a "
                f"context of width {width}: {type(err).__name__}: {err}"
            ) from err
        with torch.no_grad():
            plain = _same_draws(lambda m=method, v=value: m(v, None))
        for a, b, what in ((got[0], plain[0], "output"), (got[1], plain[1], "ladj")):
            same = a.shape == b.shape and bool(torch.equal(a, b))
            error = _max_error(a, b) if a.shape == b.shape else float("inf")
            worst = max(worst, error)
            _expect(same, "context ignored",
                    f"{type(t).__name__}.{name}: the {what} with a random context differs "
                    f"from the {what} without one by {error:.3e} (an unconditional "
                    "transform must ignore its context)")
    return worst


def _check_torch_func(
    t: Transform, x: Tensor, z: Tensor, context: Tensor | None, atol: float, rtol: float
) -> float:
    """Check forward and inverse inside ``torch.func.jacrev`` of a single sample.

    They must give the autograd Jacobian, unless a module of ``t`` declares
    ``supports_torch_func = False``; then the call must raise ``NotImplementedError`` (a clear
    refusal, not a functorch crash).
    """
    blockers = [type(m).__name__ for m in t.modules()
                if getattr(m, "supports_torch_func", True) is False]
    c0 = None if context is None else context[:1]
    worst = 0.0
    for name, method, value in (("forward", t.forward, z), ("inverse", t.inverse, x)):

        def one(s: Tensor, method: Callable = method) -> tuple[Tensor, Tensor]:
            y, ladj = method(s[None], c0)
            return y[0], ladj[0]

        try:
            jac, jac_ladj = _same_draws(lambda v=value[0], f=one: torch.func.jacrev(f)(v))
        except NotImplementedError as err:
            _expect(bool(blockers), "torch.func",
                    f"{type(t).__name__}.{name} raised NotImplementedError inside "
                    f"torch.func.jacrev ({err}) but declares supports_torch_func = True: "
                    "make it work, or declare it (class attribute or property) and say why in "
                    "the docstring")
            continue
        except Exception as err:  # noqa: BLE001 - any crash breaks the contract
            raise TransformCheckError(
                f"torch.func: {type(t).__name__}.{name} fails inside torch.func.jacrev of a "
                f"single sample: {type(err).__name__}: {err} (make it work, or declare "
                "supports_torch_func = False and say why in the docstring)"
            ) from err
        _expect(not blockers, "torch.func",
                f"{type(t).__name__}.{name} ran inside torch.func.jacrev although {blockers} "
                "declare supports_torch_func = False")
        with torch.enable_grad():
            reference = _same_draws(lambda v=value[0], f=one: torch.autograd.functional.jacobian(
                lambda s: f(s)[0], v))
        worst = max(worst, _max_error(jac, reference))
        _expect(jac.shape == reference.shape and _close(jac, reference, atol, rtol),
                "torch.func", f"{type(t).__name__}.{name}: the torch.func.jacrev Jacobian "
                f"differs from the autograd one by {_max_error(jac, reference):.3e}")
        _expect(bool(torch.isfinite(jac_ladj).all()), "torch.func",
                f"{type(t).__name__}.{name}: the jacrev of ladj is not finite")
    return worst


def check_transform(
    t: Transform,
    x: Tensor,
    context: Tensor | None = None,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    ladj_reference: Callable[[Transform, Tensor, Tensor | None], Tensor] | None = None,
    gradients: bool = True,
) -> dict[str, float]:
    """Check that ``t`` honours the Transform contract at the data points ``x``.

    Runs on a float64 copy of ``t`` in eval mode (the original is untouched) and checks:
    ``forward(inverse(x)) ≈ x``; ``inverse(forward(z)) ≈ z``; ``push(z)`` is forward's ``x``;
    ``ladj`` has shape ``(batch,)``;
    the inverse ``ladj`` is minus the forward ``ladj`` at the image; the forward ``ladj`` equals
    ``log|det|`` of the autograd Jacobian per sample (skipped when ``t.exact_ladj`` is False);
    every parameter gets a gradient; with a context, the output depends on it; an
    unconditional transform (``context_features == 0``) given a random context returns exactly
    what it returns without one; forward and inverse run inside ``torch.func.jacrev`` of one
    sample and match the autograd Jacobian (or, where a module declares
    ``supports_torch_func = False``, refuse with ``NotImplementedError``).

    Args:
        t: the transform under test.
        x: points on the data side, ``(batch, *event_shape)``.
        context: ``(batch, context_features)`` for conditional transforms.
        atol: absolute tolerance of every comparison.
        rtol: relative tolerance of every comparison.
        ladj_reference: replaces the autograd ``log|det|`` (e.g. a manifold's log volume ratio);
            called as ``ladj_reference(t, z, context)`` on the float64 copy.
        gradients: also require that every parameter receives a gradient.

    Returns:
        The largest discrepancy found for each property checked.

    Raises:
        TransformCheckError: a property fails; the message names it and the size of the error.

    Example:
        >>> import torch, pushforward as pf
        >>> errors = pf.diagnostics.check_transform(pf.transforms.Affine(3), torch.randn(4, 3))
        >>> errors["jacobian"] < 1e-9
        True
    """
    t64 = copy.deepcopy(t).double().eval()
    x = x.detach().double()
    context = None if context is None else context.detach().double()
    report: dict[str, float] = {}

    z, ladj_inv = t64.inverse(x, context)
    _expect(z.shape[0] == x.shape[0], "shape", f"inverse kept batch {z.shape[0]} of {x.shape[0]}")
    _expect(tuple(ladj_inv.shape) == (x.shape[0],), "ladj shape",
            f"inverse ladj has shape {tuple(ladj_inv.shape)}, expected ({x.shape[0]},)")
    x2, ladj = t64(z, context)
    _expect(tuple(ladj.shape) == (x.shape[0],), "ladj shape",
            f"forward ladj has shape {tuple(ladj.shape)}, expected ({x.shape[0]},)")
    _expect(x2.shape == x.shape, "shape", f"forward(inverse(x)) has shape {tuple(x2.shape)}, "
            f"expected {tuple(x.shape)}")
    report["forward(inverse(x))"] = _max_error(x2, x)
    _expect(_close(x2, x, atol, rtol), "forward(inverse(x)) = x",
            f"max error {report['forward(inverse(x))']:.3e} > atol {atol:g}")
    pushed = t64.push(z, context)
    report["push(z) = forward(z)"] = _max_error(pushed, x2)
    _expect(pushed.shape == x2.shape and _close(pushed, x2, atol, rtol), "push(z) = forward(z)",
            f"push gave shape {tuple(pushed.shape)}, max error "
            f"{report['push(z) = forward(z)']:.3e} from forward's x")
    z2, _ = t64.inverse(x2, context)
    report["inverse(forward(z))"] = _max_error(z2, z)
    _expect(_close(z2, z, atol, rtol), "inverse(forward(z)) = z",
            f"max error {report['inverse(forward(z))']:.3e} > atol {atol:g}")

    if t64.exact_ladj:
        report["ladj_inv = -ladj"] = _max_error(ladj_inv, -ladj)
        _expect(_close(ladj_inv, -ladj, atol, rtol), "inverse ladj = -forward ladj",
                f"max error {report['ladj_inv = -ladj']:.3e}")
        with torch.enable_grad():
            reference = (ladj_reference or _jacobian_ladj)(t64, z, context)
        report["jacobian"] = _max_error(ladj, reference)
        _expect(_close(ladj, reference, atol, rtol), "ladj = log|det J| (autograd)",
                f"max error {report['jacobian']:.3e} (ladj {ladj.tolist()[:4]} vs "
                f"autograd {reference.tolist()[:4]})")

    if not t64.context_features:
        report["context ignored"] = _check_context_ignored(t64, x, z)
    if x.shape[0]:
        report["torch.func"] = _check_torch_func(t64, x, z, context, atol, rtol)

    if context is not None and t64.context_features:
        generator = torch.Generator().manual_seed(0)
        other = context + torch.randn(context.shape, generator=generator,
                                      dtype=context.dtype).to(context.device)
        x3, ladj3 = t64(z, other)
        change = max(_max_error(x3, x2), _max_error(ladj3, ladj))
        report["context effect"] = change
        _expect(change > atol, "context",
                f"output changed by only {change:.3e} when the context changed: the context "
                "is ignored (or zero-initialised layers hide it: perturb parameters first)")

    if gradients:
        params = [(n, p) for n, p in t64.named_parameters() if p.requires_grad]
        if params:
            t64.zero_grad()
            z_g, ladj_g = t64.inverse(x, context)
            (z_g.sum() + ladj_g.sum()).backward()
            missing = [n for n, p in params if p.grad is None]
            _expect(not missing, "gradients", f"parameters get no gradient: {missing}")
    return report
