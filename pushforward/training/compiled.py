"""Optional ``torch.compile`` paths for ``log_prob`` and the maximum-likelihood training step.

The eager path stays the default and needs no compiler; these helpers are opt-in. Input checks
(shape, NaN, domain) run eagerly before the compiled call, and validation is switched off inside
it, so the compiled graph holds no Python-side synchronisation. The compiled functions compute
exactly what the eager ones do (same operations, fused), so they agree to float round-off.

``torch.compile``'s default backend (Inductor) needs a C compiler on CPU; ``backend="eager"``
(graph capture only) or ``"aot_eager"`` need none and are useful to check that a flow traces.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pushforward import _validation as _v
from pushforward.core import Flow
from pushforward.training.stepper import Stepper

__all__ = ["compile_log_prob", "compile_train_step", "compiler_available"]


def compiler_available() -> bool:
    """Whether the default Inductor backend can compile on this machine (a C compiler exists).

    Returns:
        True when a C compiler for Inductor is found; the compiled tests skip otherwise.
    """
    import shutil

    if not hasattr(torch, "compile"):
        return False
    return any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++"))


def _checked(flow: Flow, x: Tensor, context: Tensor | None) -> None:
    if _v.is_validating():
        _v.check_tensor(x, flow.event_shape, "Flow.log_prob", "x")
        flow.transform._check_x(x)
        _v.check_context(context, flow.context_features, x.shape[0], "Flow")


def compile_log_prob(flow: Flow, **options: Any) -> Callable[..., Tensor]:
    """A compiled ``flow.log_prob``: ``fn(x, context=None) -> (batch,)``.

    Args:
        flow: the flow; its parameters are read at every call (training it keeps the compiled
            function valid).
        **options: passed to ``torch.compile`` (``mode=``, ``backend=``, ``dynamic=``...).

    Returns:
        A function with ``flow.log_prob``'s signature and results (to round-off).

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.MAF(2, transforms=1, hidden=[8])
        >>> log_prob = compile_log_prob(flow, backend="eager")
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(log_prob(x), flow.log_prob(x))
        True
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"compile_log_prob: expected a Flow, got {type(flow).__name__}")

    def log_prob(x: Tensor, context: Tensor | None) -> Tensor:
        return flow.log_prob(x, context)

    compiled = torch.compile(log_prob, **options)

    def call(x: Tensor, context: Tensor | None = None) -> Tensor:
        _checked(flow, x, context)
        with _v.validation(False):
            return compiled(x, context)

    return call


def compile_train_step(
    flow: Flow,
    optimizer: torch.optim.Optimizer,
    clip_grad: float | None = None,
    **options: Any,
) -> Callable[..., float]:
    """A maximum-likelihood training step whose loss and gradient are compiled.

    ``step(x, context=None)`` computes ``−mean log p(x)`` and its gradient with the compiled
    graph (forward and backward, through AOTAutograd), clips the gradient norm to ``clip_grad``
    (if given), applies ``optimizer.step()`` eagerly and returns the loss. A step whose loss or
    gradient is not finite is skipped (the parameters are left as they were) and returns NaN.

    Args:
        flow: the flow to train.
        optimizer: an optimizer over ``flow``'s parameters.
        clip_grad: the largest gradient norm (None: no clipping).
        **options: passed to ``torch.compile``.

    Returns:
        ``step(x, context=None) -> float``.
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"compile_train_step: expected a Flow, got {type(flow).__name__}")
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"compile_train_step: clip_grad must be positive, got {clip_grad}")

    def loss_fn(x: Tensor, context: Tensor | None) -> Tensor:
        return -flow.log_prob(x, context).mean()

    compiled = torch.compile(loss_fn, **options)
    params = [p for p in flow.parameters() if p.requires_grad]

    stepper = Stepper(params, optimizer, clip_grad=clip_grad)

    def step(x: Tensor, context: Tensor | None = None) -> float:
        _checked(flow, x, context)
        with _v.validation(False):
            loss = compiled(x, context)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a skipped step returns NaN
            taken = stepper.step(loss, 0)
        return float(loss.detach()) if taken else float("nan")

    return step
