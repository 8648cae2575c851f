"""Dequantisation bounds for discrete data: uniform and variational (Flow++).

Discrete data ``k ∈ {0, …, K−1}^D`` (pixel levels) is modelled by a continuous density ``p`` on
``y = (k + u)/K ∈ [0, 1]^D``. For any noise distribution ``q(u | k)`` on the unit cube,

    log P(k) = log ∫ p((k + u)/K) K^{−D} du ≥ E_q[log p((k + u)/K) − log q(u | k)] − D log K,

with equality when ``q(u | k) ∝ p((k + u)/K)``. Uniform dequantisation takes ``q = U(0, 1)^D``
(``log q = 0``); variational dequantisation (Ho et al. 2019) learns ``q`` — here a conditional
flow squashed onto the cube by a sigmoid — jointly with ``p`` by maximising the same bound.
With ``samples > 1`` the importance-weighted bound ``log mean_s exp(…)`` is used, which
tightens towards ``log P(k)`` as ``samples`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Flow

__all__ = ["VariationalDequantization", "dequantized_log_prob"]


def _as_levels(k: Tensor, levels: int) -> Tensor:
    if not isinstance(k, Tensor):
        raise TypeError(f"expected a tensor of integer levels, got {type(k).__name__}")
    if k.is_floating_point() and not torch.equal(k, k.round()):
        raise ValueError("discrete data must hold integer levels")
    if k.numel() and (int(k.min()) < 0 or int(k.max()) >= levels):
        raise ValueError(f"discrete data must lie in [0, {levels - 1}]")
    return k


class VariationalDequantization(nn.Module):
    """A learned dequantisation noise ``q(u | k)`` on ``[0, 1)^D`` (Flow++).

    ``u = σ(h(ε; k))`` with ``ε ~ N(0, I)`` and ``h`` a conditional affine-coupling flow (a
    RealNVP) whose context is the rescaled discrete sample ``2k/(K − 1) − 1``; ``log q(u | k)``
    comes from the same forward pass (change of variables through ``h`` and the sigmoid).

    Args:
        shape: the event shape of one discrete sample (``(C, H, W)`` or ``features``).
        levels: the number of levels ``K``.
        transforms: couplings in ``h``.
        hidden: hidden widths of ``h``'s conditioners.
        flow: a custom conditional flow on ``ℝ^D`` with ``context = D`` (replaces the default
            RealNVP; the sigmoid is still appended).

    References:
        Flow++: Improving Flow-Based Generative Models with Variational Dequantization and
        Architecture Design, Ho, Chen, Srinivas, Duan & Abbeel, 2019, arXiv:1902.00275.

    Example:
        >>> import torch
        >>> q = VariationalDequantization((1, 2, 2), levels=4, transforms=2, hidden=[8])
        >>> u, log_q = q.sample(torch.randint(0, 4, (3, 1, 2, 2)))
        >>> u.shape, log_q.shape, bool(((u > 0) & (u < 1)).all())
        (torch.Size([3, 1, 2, 2]), torch.Size([3]), True)
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        levels: int,
        transforms: int = 4,
        hidden: Sequence[int] = (128, 128),
        flow: Flow | None = None,
    ) -> None:
        super().__init__()
        from pushforward.presets.coupling import RealNVP
        from pushforward.transforms.box import bounded

        self.shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        self.levels = int(levels)
        if self.levels < 2:
            raise ValueError(f"VariationalDequantization: levels must be >= 2, got {levels}")
        dims = math.prod(self.shape)
        if flow is None:
            # starts as uniform dequantisation (every coupling the identity)
            flow = RealNVP(dims, context=dims, transforms=transforms, hidden=list(hidden),
                                 identity_init=True)
        if flow.context_features != dims or tuple(flow.event_shape) != (dims,):
            raise ValueError(f"VariationalDequantization: the flow must act on {dims} features "
                             f"with a context of {dims}")
        self.flow = bounded(flow, 0.0, 1.0)

    def sample(self, k: Tensor, samples: int = 1) -> tuple[Tensor, Tensor]:
        """Noise ``u ~ q(· | k)`` (reparametrised) and ``log q(u | k)``.

        Returns:
            ``u`` of shape ``(batch, *shape)`` and ``log q`` ``(batch,)``; with ``samples > 1``,
            ``(samples, batch, *shape)`` and ``(samples, batch)``.
        """
        k = _as_levels(k, self.levels)
        batch = k.shape[0]
        dtype = _v.dtype_of(self)
        context = (2 * k.to(dtype) / (self.levels - 1) - 1).reshape(batch, -1)
        u, log_q = self.flow.rsample_and_log_prob(samples, context)
        u = u.reshape(samples, batch, *self.shape)
        return (u[0], log_q[0]) if samples == 1 else (u, log_q)


def dequantized_log_prob(
    flow: Flow,
    k: Tensor,
    levels: int,
    dequantizer: VariationalDequantization | None = None,
    samples: int = 1,
) -> Tensor:
    """A lower bound on ``log P(k)`` (nats per sample) under uniform or variational noise.

    ``log mean_s exp[log p((k + u_s)/K) − log q(u_s | k)] − D log K`` with ``u_s ~ q``
    (``q`` uniform when ``dequantizer`` is None). With ``samples = 1`` it is the usual
    dequantisation bound (its negative divided by ``D ln 2`` is the reported bits/dim); more
    samples give the tighter importance-weighted bound. Differentiable in ``flow`` and ``q``.

    Args:
        flow: the continuous model of ``y = (k + u)/K ∈ [0, 1]^D`` (event shape of ``k``).
        k: discrete samples ``(batch, *shape)`` with integer levels in ``[0, K)``.
        levels: ``K``.
        dequantizer: the learned ``q(u | k)``; None for uniform noise.
        samples: noise draws per data point.

    Returns:
        ``(batch,)`` lower bounds on ``log P(k)``.
    """
    samples = _v.check_int(samples, "dequantized_log_prob", "samples", type_error=False)
    k = _as_levels(k, int(levels))
    batch, shape = k.shape[0], tuple(k.shape[1:])
    dims = math.prod(shape)
    dtype = _v.dtype_of(flow)
    kf = k.to(dtype)
    if dequantizer is None:
        u = torch.rand(samples, *k.shape, dtype=dtype, device=k.device)
        log_q = u.new_zeros(samples, batch)
    else:
        u, log_q = dequantizer.sample(k, samples)
        u, log_q = u.reshape(samples, *k.shape), log_q.reshape(samples, batch)
    y = ((kf + u) / levels).reshape(samples * batch, *shape)
    log_p = flow.log_prob(y).reshape(samples, batch)
    bound = torch.logsumexp(log_p - log_q, dim=0) - math.log(samples)
    return bound - dims * math.log(levels)
