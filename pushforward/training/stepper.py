"""One optimisation step, written once: finite check, backward, clipping, stepping, divergence.

``fit`` (maximum likelihood, flow matching, dequantised likelihood), ``fit_reverse_kl`` and the
compiled step (``compile_train_step``) all step through ``Stepper.step``. A step whose loss or
gradient norm is not finite leaves the parameters untouched; ``max_bad_steps`` such steps in a
row raise ``TrainingDiverged``.
"""

from __future__ import annotations

import random
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward.training.history import TrainingDiverged
from pushforward.training.schedule import Schedule

__all__ = ["Stepper", "Signals", "seed_all", "average_gradients", "gradient_norm"]


def gradient_norm(params: Sequence[Tensor], clip: float | None) -> Tensor:
    """The global gradient 2-norm, clipping the gradients to ``clip`` (None: no clipping).

    Args:
        params: the parameters (those without a gradient are ignored).
        clip: the largest norm after clipping.

    Returns:
        The norm before clipping (a 0-d tensor; non-finite if any gradient is).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return torch.zeros(())
    total = torch.nn.utils.get_total_norm([p.grad for p in params])
    # ``clip_grad_norm_`` multiplies every gradient by min(1, clip / (norm + 1e-6)), a pass over
    # all of them even when the factor is 1; here only when it is below 1 (same numbers)
    if clip is not None and clip / (float(total) + 1e-6) < 1.0:
        torch.nn.utils.clip_grads_with_norm_(params, clip, total)
    return total


class Stepper:
    """Backward, clip and step an optimizer, skipping non-finite steps.

    Args:
        params: the trained parameters.
        optimizer: the optimizer over them.
        schedule: sets each step's learning rate (None: left as it is).
        clip_grad: the largest global gradient norm (None: no clipping).
        max_bad_steps: raise ``TrainingDiverged`` after this many skipped steps in a row (None:
            never).
        what: what is trained, for the divergence message (``"training"``).
        advice: the end of the divergence message.

    Attributes:
        bad: skipped steps in a row (a checkpoint keeps it to resume exactly).
        skipped: skipped steps in all.
    """

    def __init__(self, params: Sequence[Tensor], optimizer: torch.optim.Optimizer,
                 schedule: Schedule | None = None, clip_grad: float | None = None,
                 max_bad_steps: int | None = None, what: str = "training",
                 advice: str = "lower the learning rate") -> None:
        self.params = list(params)
        self.optimizer = optimizer
        self.schedule = schedule
        self.clip_grad = clip_grad
        self.max_bad_steps = max_bad_steps
        self.what, self.advice = what, advice
        self.bad = 0
        self.skipped = 0

    def step(self, loss: Tensor, step: int, finite: bool | None = None,
             synchronize: Callable[[], None] | None = None) -> bool:
        """Take one step on ``loss`` unless it or its gradient is not finite.

        Args:
            loss: the scalar to minimise.
            step: the step number (sets the learning rate; named in messages).
            finite: whether the loss is finite, when the caller already knows (e.g. agreed
                over processes); None: checked here.
            synchronize: called after ``backward`` (e.g. to average gradients over processes).

        Returns:
            True if the parameters were updated; False if the step was skipped.

        Raises:
            TrainingDiverged: the ``max_bad_steps``-th skipped step in a row.
        """
        ok = bool(torch.isfinite(loss.detach())) if finite is None else finite
        if ok:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if synchronize is not None:
                synchronize()
            ok = bool(torch.isfinite(gradient_norm(self.params, self.clip_grad)))
        if ok:
            if self.schedule is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] = self.schedule.lr(step)
            self.optimizer.step()
            self.bad = 0
            return True
        self.optimizer.zero_grad(set_to_none=True)
        self.bad += 1
        self.skipped += 1
        warnings.warn(f"step {step}: non-finite loss or gradient, step skipped ({self.bad} in a "
                      "row)", RuntimeWarning, stacklevel=3)
        if self.max_bad_steps is not None and self.bad >= self.max_bad_steps:
            raise TrainingDiverged(
                f"{self.what} diverged: {self.bad} non-finite losses/gradients in a row at step "
                f"{step}; {self.advice}"
            )
        return False


class Signals:
    """Turn SIGINT/SIGTERM into a flag while training (main thread only).

    Args:
        enabled: install the handlers (False: a no-op context).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        """Install the handlers."""
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __exit__(self, *args: object) -> None:
        """Restore the previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_all(seed: int) -> None:
    """Seed torch, NumPy and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def average_gradients(params: Sequence[Tensor], world: int) -> None:
    """Average gradients over processes (objectives that bypass DDP's forward)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)
