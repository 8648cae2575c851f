"""Evaluating a model without training it: eval mode, and the batched negative log-likelihood.

The one implementation of each: ``fit``'s validation, the CLI's test NLL and the OOD
diagnostics all call ``negative_log_likelihood`` (or ``batched_negative_log_likelihood`` for
batches drawn from a dataset), and every "switch to eval mode, then restore" is ``eval_mode``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Flow

__all__ = ["eval_mode", "negative_log_likelihood", "batched_negative_log_likelihood",
           "to_module"]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block, then restore its training flag.

    Args:
        module: the module.

    Yields:
        The module, in eval mode.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> with eval_mode(net):
        ...     net.training
        False
        >>> net.training
        True
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def to_module(x: Tensor, module: nn.Module) -> Tensor:
    """``x`` on the module's device, and in its floating dtype if ``x`` is floating point.

    Args:
        x: a tensor (integer tensors keep their dtype).
        module: the module whose first floating parameter or buffer sets dtype and device.

    Returns:
        The moved tensor.
    """
    device = _v.device_of(module)
    if x.is_floating_point():
        return x.to(device=device, dtype=_v.dtype_of(module))
    return x.to(device=device)


def batched_negative_log_likelihood(
    flow: Flow, batches: Iterable[tuple[Tensor, Tensor | None]]
) -> Tensor:
    """``−log p(x | c)`` of every point of ``batches``, without gradients, in eval mode.

    Args:
        flow: the model.
        batches: ``(x, context)`` pairs (``context`` None for an unconditional flow), moved to
            the flow's dtype and device.

    Returns:
        ``(N,)`` in the flow's dtype, the batches concatenated.
    """
    out = []
    with eval_mode(flow), torch.no_grad():
        for x, context in batches:
            x = to_module(x.detach(), flow)
            context = None if context is None else to_module(context.detach(), flow)
            out.append(-flow.log_prob(x, context))
    if not out:
        return torch.zeros(0, dtype=_v.dtype_of(flow), device=_v.device_of(flow))
    return torch.cat(out)


def negative_log_likelihood(
    flow: Flow, x: Tensor, context: Tensor | None = None, batch_size: int = 1024
) -> Tensor:
    """``−log p(x)`` per sample, in chunks of ``batch_size``, without gradients, in eval mode.

    Args:
        flow: the model.
        x: data ``(N, *event)``.
        context: ``(N, context_features)`` for a conditional flow.
        batch_size: points per chunk.

    Returns:
        ``(N,)`` in the flow's dtype (on its device).

    Raises:
        TypeError: ``flow`` is not a ``Flow`` or ``x`` not a tensor.
        ValueError: ``batch_size < 1``.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.Flow(pf.transforms.Affine(2), pf.StandardNormal(2))
        >>> negative_log_likelihood(flow, torch.zeros(5, 2), batch_size=2).shape
        torch.Size([5])
    """
    if not isinstance(flow, Flow):
        raise TypeError(f"negative_log_likelihood: expected a pushforward Flow, got "
                        f"{type(flow).__name__}")
    if not isinstance(x, Tensor):
        raise TypeError(f"negative_log_likelihood: x must be a torch.Tensor, got {type(x)}")
    size = _v.check_int(batch_size, "negative_log_likelihood", "batch_size",
                        type_error=False)
    batches = (
        (x[start : start + size], None if context is None else context[start : start + size])
        for start in range(0, x.shape[0], size)
    )
    return batched_negative_log_likelihood(flow, batches)
