"""Reverse-KL training (``fit_reverse_kl``): fit a flow to an unnormalised density by sampling."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from pushforward import _validation as _v
from pushforward.core import Flow
from pushforward.training.history import History
from pushforward.training.losses import ReverseKL
from pushforward.training.schedule import Schedule
from pushforward.training.stepper import Stepper, seed_all

__all__ = ["fit_reverse_kl", "importance_estimates"]


def fit_reverse_kl(
    flow: Flow,
    log_density: Callable[[Tensor], Tensor],
    *,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    schedule: str | None = "cosine",
    clip_grad: float | None = 5.0,
    seed: int = 0,
    progress: bool = True,
    max_bad_steps: int = 10,
    estimate_samples: int = 8192,
) -> History:
    """Fit ``flow`` to an unnormalised density ``p̃`` by minimising ``KL(q ‖ p)``.

    With ``x, log q(x) = flow.rsample_and_log_prob(n)`` the loss is the negative ELBO
    ``E_q[log q(x) − log p̃(x)] = KL(q ‖ p) − log Z``, ``Z = ∫ p̃``. After training,
    ``history.extra`` holds ``elbo`` (a lower bound of ``log Z``), ``log_normalizer``
    (the importance-sampling estimate ``log mean exp(log p̃ − log q)``) and ``kl`` (their gap,
    an estimate of ``KL(q ‖ p)`` that tends to 0 as ``q → p``), from ``estimate_samples`` draws.

    Args:
        flow: the flow to train (in place).
        log_density: maps ``x (n, *event)`` to ``log p̃(x) (n,)``, differentiable in ``x``.
        steps: optimisation steps.
        batch_size: samples drawn from the flow per step.
        lr: Adam's (peak) learning rate.
        schedule: ``"cosine"`` or None (constant), as in ``fit``.
        clip_grad: maximum global gradient norm (None: no clipping).
        seed: seeds torch and the draws.
        progress: show a tqdm bar with the live loss.
        max_bad_steps: raise ``TrainingDiverged`` after this many non-finite steps in a row.
        estimate_samples: draws for the final estimates.

    Returns:
        The ``History``; ``step_nll`` holds the per-step negative ELBO.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size),
                        ("max_bad_steps", max_bad_steps), ("estimate_samples", estimate_samples)):
        _v.check_int(value, "fit_reverse_kl", name, type_error=False)
    if not callable(log_density):
        raise TypeError("fit_reverse_kl: log_density must be callable")
    seed_all(int(seed))
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit_reverse_kl: the flow has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr)
    stepper = Stepper(params, optimizer, Schedule(schedule, lr, steps, 0, 0.0, 3, 0.5), clip_grad,
                      max_bad_steps, what="reverse-KL training",
                      advice=f"lower the learning rate (lr={lr:g})")
    objective = ReverseKL(log_density)
    history = History()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="reverse KL", unit="step", dynamic_ncols=True)
    flow.train()
    try:
        for step in range(steps):
            loss = objective.loss(flow, batch_size)
            if stepper.step(loss, step):
                history.step_nll.append(float(loss.detach()))
            history.skipped_steps = stepper.skipped
            history.steps = step + 1
            if bar is not None:
                bar.update(1)
                if history.step_nll:
                    bar.set_postfix({"loss": f"{history.step_nll[-1]:.4f}"}, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        flow.eval()
    history.extra.update(importance_estimates(flow, log_density, estimate_samples))
    if history.step_nll:
        history.train_nll.append(float(np.mean(history.step_nll[-max(1, steps // 10):])))
        history.epoch_step.append(history.steps)
    return history


@torch.no_grad()
def importance_estimates(flow: Flow, log_density: Callable[[Tensor], Tensor],
                         samples: int) -> dict[str, float]:
    """``elbo``, ``log_normalizer`` and ``kl`` from ``samples`` draws of the flow.

    With weights ``w = log p̃(x) − log q(x)``, ``x ~ q``: ``elbo = mean w`` (a lower bound of
    ``log Z``), ``log_normalizer = log mean exp w`` and ``kl`` their gap (non-finite weights are
    dropped).

    Args:
        flow: the trained flow ``q``.
        log_density: ``log p̃``.
        samples: the number of draws.

    Returns:
        The three estimates.

    Raises:
        ValueError: ``log p̃`` is not finite on any draw.
    """
    weights = []
    for start in range(0, samples, 4096):
        n = min(4096, samples - start)
        x, log_q = flow.sample_and_log_prob(n)
        weights.append((log_density(x) - log_q).double())
    w = torch.cat(weights)
    w = w[torch.isfinite(w)]
    if w.numel() == 0:
        raise ValueError("fit_reverse_kl: log_density is not finite on any of the flow's "
                         "samples, so log Z cannot be estimated")
    elbo = float(w.mean())
    log_z = float(torch.logsumexp(w, 0) - math.log(w.numel()))
    return {"elbo": elbo, "log_normalizer": log_z, "kl": log_z - elbo}
