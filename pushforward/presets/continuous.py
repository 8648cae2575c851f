"""Continuous-flow preset: CNF (FFJORD-style, optional RNODE regularisation and augmentation)."""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._registry import register
from pushforward._validation import check_int
from pushforward.continuous.augment import AugmentedFlow
from pushforward.continuous.cnf import CNF as _CNF
from pushforward.continuous.fields import TimeMLP
from pushforward.core import Chain, Flow
from pushforward.distributions import StandardNormal

__all__ = ["CNF"]

EXACT_TRACE_MAX_FEATURES = 8


@register("cnf", accepts=("vectors", "context"))
def CNF(
    features: int,
    context: int = 0,
    *,
    transforms: int = 1,
    hidden: Sequence[int] = (256, 256, 256, 256, 256),
    activation: str = "silu",
    time: str = "gated",
    trace: str | None = None,
    noise: str = "rademacher",
    t1: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    adjoint: bool = False,
    kinetic: float = 0.0,
    jacobian: float = 0.0,
    augment: int = 0,
    q: str = "learned",
    samples: int = 1,
    steps: int | None = None,
    path: str = "cond-ot",
) -> Flow:
    """Continuous normalizing flow (FFJORD): ``transforms`` neural-ODE blocks on ``N(0, I)``.

    Each block is a ``pushforward.continuous.CNF`` whose field is a ``TimeMLP`` (gated time
    and context input, smooth activation, a small initial field: the flow starts near the
    identity). The defaults (five SiLU layers of 256) were chosen for flow matching
    (``pf.fit(flow, x, objective="flow-matching")``: one field evaluation per step, no ODE
    solve; see ``pushforward.training.FlowMatching``). Test NLL of the exact density after
    2,000 steps at fit's defaults, seed 0, for 3 / 4 / 5 layers of 256: checkerboard 3.82 /
    3.77 / 3.70 (true 3.47), two moons 1.11 / 1.04 / 1.02 (true 0.98), rings 3.27 / 3.23 / 3.23
    after only 1,500 steps (true 2.32); a concatenated time input (3.85 / 1.13 /
    3.28 with three layers) and Fourier features of time did not help. By maximum likelihood
    the former three-layer default learned a 2-D ring in 150 steps: NLL 4.1 → 1.71 nats.

    Args:
        features: the dimension ``d``.
        context: width of the context (0: unconditional); every field reads it.
        transforms: number of CNF blocks, each integrated over ``[0, t1]``.
        hidden: hidden widths of each field.
        activation: a smooth activation (``tanh``, ``softplus``, ``silu``).
        time: ``"gated"`` (concat-squash) or ``"concat"`` time input.
        trace: ``"exact"`` or ``"hutchinson"``; None: exact up to 8 dimensions (of the lifted
            space when augmenting), Hutchinson above.
        noise: Hutchinson's noise, ``"rademacher"`` or ``"gaussian"``.
        t1: integration time of each block.
        rtol: solver relative tolerance.
        atol: solver absolute tolerance.
        method: torchdiffeq solver: adaptive (``dopri5``) or fixed-grid (``rk4``, ``euler``,
            ``midpoint``) with ``steps``.
        adjoint: adjoint-method gradients (constant memory).
        kinetic: RNODE kinetic-energy weight ``λ_K`` (e.g. 0.01).
        jacobian: RNODE Jacobian-Frobenius weight ``λ_J`` (e.g. 0.01).
        augment: ``k`` extra dimensions; > 0 returns an ``AugmentedFlow`` whose ``log_prob`` is
            the importance-weighted lower bound with ``samples`` draws of ``a ~ q``.
        q: the augmentation's distribution, ``"learned"`` diagonal Gaussian or ``"fixed"``.
        samples: ``K`` importance samples per point (augmented flows only).
        steps: equal steps of a fixed-grid ``method`` over ``[0, t1]`` (None with an adaptive
            one). Any solve can also switch solver for a while:
            ``with flow.transform.solver(method="rk4", steps=20): flow.sample(n)``.
        path: the conditional path of flow matching (``pf.fit(..., objective=
            "flow-matching")``): ``"cond-ot"`` (straight lines) or ``"vp"``
            (variance-preserving).

    Returns:
        A ``Flow`` on a ``StandardNormal`` base; with ``augment > 0`` an ``AugmentedFlow``
        (``log_prob`` is then an importance-weighted lower bound).

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.CNF(2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """
    features = check_int(features, "CNF", "features")
    context = check_int(context, "CNF", "context", 0)
    transforms = check_int(transforms, "CNF", "transforms")
    augment = check_int(augment, "CNF", "augment", 0)
    width = features + augment
    if trace is None:
        trace = "exact" if width <= EXACT_TRACE_MAX_FEATURES else "hutchinson"
    blocks = [
        _CNF(
            TimeMLP(width, hidden, context, activation, time),
            features,
            trace=trace,
            noise=noise,
            t1=t1,
            rtol=rtol,
            atol=atol,
            method=method,
            adjoint=adjoint,
            kinetic=kinetic,
            jacobian=jacobian,
            augment=augment,
            context_features=context,
            steps=steps,
            path=path,
        )
        for _ in range(transforms)
    ]
    transform = blocks[0] if transforms == 1 else Chain(blocks)
    if augment:
        return AugmentedFlow(transform, StandardNormal(width), augment, q=q, samples=samples)
    return Flow(transform, StandardNormal(features))
