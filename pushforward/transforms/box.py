"""Bounded support: wrap a flow so its samples and density live in a box ``[low, high]``.

``bounded(flow, low, high)`` appends ``Sigmoid(low, high)`` on the data side: the wrapped flow
samples ``x = l + (h − l) σ(f(z))`` and its density is
``log p(x) = log p_f(logit((x − l)/(h − l))) − Σ [log(h − l) + log u + log(1 − u)]`` with
``u = (x − l)/(h − l)`` — exact, normalised on the box, and zero outside it: ``log_prob`` is
``−inf`` there, while ``Sigmoid.inverse`` of such a point raises ``InputOutsideDomain`` (with
validation on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pushforward import _validation as _v
from pushforward.core import Chain, Flow, Transform
from pushforward.transforms.elementwise import Sigmoid

__all__ = ["bounded", "box_bounds"]

Bound = float | Sequence[float] | Tensor


def box_bounds(data: Tensor, margin: float = 0.05) -> tuple[list[float], list[float]]:
    """Per-feature bounds of ``data`` ``(N, d)``, widened by ``margin`` × range on each side.

    A margin keeps the extreme training points away from the box edge, where the logit is
    infinite; a feature with zero range gets a unit-wide box around its value.

    Args:
        data: the points, ``(N, d)``.
        margin: the fraction of each feature's range added on both sides.

    Returns:
        ``(low, high)``, two lists of ``d`` floats.

    Raises:
        ValueError: ``data`` is not ``(N, d)`` with ``N ≥ 1`` finite rows, or ``margin < 0``.
    """
    if not isinstance(data, Tensor) or data.dim() != 2 or data.shape[0] < 1:
        raise ValueError("box_bounds: data must be a tensor of shape (N, d) with N >= 1")
    if not bool(torch.isfinite(data).all()):
        raise ValueError("box_bounds: data contains NaN or infinite values")
    if not margin >= 0:
        raise ValueError(f"box_bounds: margin must be >= 0, got {margin}")
    data = data.double()
    low, high = data.min(0).values, data.max(0).values
    flat = high <= low
    pad = torch.where(flat, torch.full_like(high, 0.5), margin * (high - low))
    return (low - pad).tolist(), (high + pad).tolist()


def bounded(model: Flow | Transform, low: Bound, high: Bound) -> Flow | Transform:
    """Restrict a flow (or transform) to the box ``[low, high]`` by a final ``Sigmoid``.

    Args:
        model: a ``Flow`` (a new ``Flow`` sharing its base, embedding and parameters is returned,
            with ``"preprocess"`` added to its config so a checkpoint rebuilds it) or a
            ``Transform`` (returns ``Chain([model, Sigmoid(low, high)])``).
        low: lower bounds, a number or one per feature.
        high: upper bounds, ``> low``.

    Returns:
        The bounded flow or transform.

    Raises:
        ValueError: bounds not finite, or ``high ≤ low`` somewhere.
        TypeError: ``model`` is neither a ``Flow`` nor a ``Transform``.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.transforms.bounded(pf.flows.MAF(2, transforms=1), 0.0, [1.0, 2.0])
        >>> x = flow.sample(100)
        >>> bool(((x > 0) & (x < torch.tensor([1.0, 2.0]))).all())
        True
    """
    if isinstance(model, Flow):
        shape = model.event_shape
    elif isinstance(model, Transform):
        shape = model.event_shape
    else:
        raise TypeError(f"bounded: expected a Flow or a Transform, got {type(model).__name__}")
    low_t, high_t = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(high,
                                                                               dtype=torch.float64)
    if shape is not None and low_t.dim() and low_t.shape != torch.Size(shape[-1:]):
        raise ValueError(f"bounded: {low_t.numel()} lower bounds for event shape {shape}")
    if shape is not None and high_t.dim() and high_t.shape != torch.Size(shape[-1:]):
        raise ValueError(f"bounded: {high_t.numel()} upper bounds for event shape {shape}")
    box = Sigmoid(low_t, high_t, shape)
    if isinstance(model, Transform):
        return Chain([model, box])
    return model.prepend([box]).to(_v.dtype_of(model))
