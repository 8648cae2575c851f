"""What training measured (``History``), the divergence error and the ODE evaluation counts."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from pushforward.training._tree import attribute, submodules

__all__ = ["History", "TrainingDiverged", "function_evaluations", "record_evaluations"]


class TrainingDiverged(RuntimeError, ValueError):
    """Training produced ``max_bad_steps`` non-finite losses or gradients in a row.

    Also a ``ValueError``: it usually means the data, the learning rate or the model's scale are
    unsuitable.
    """


@dataclasses.dataclass
class History:
    """What ``fit`` measured.

    Attributes:
        train_nll: mean training NLL of each epoch (the last one may be partial).
        val_nll: validation NLL at each validation.
        val_step: the step after which each validation ran.
        step_nll: training NLL of every step taken (skipped steps excluded).
        epoch_step: the step at the end of each entry of ``train_nll``.
        lr: learning rate at the end of each epoch.
        best_val_nll: the best validation NLL (None without ``val``).
        best_step: the step after which it was measured (None without ``val``).
        steps: optimisation steps completed (skipped ones included).
        skipped_steps: steps skipped for a non-finite loss or gradient.
        stopped_early: early stopping ended training.
        interrupted: SIGINT/SIGTERM ended training (a checkpoint was saved if a folder was given).
        extra: free-form scalars (``fit_reverse_kl`` stores ``log_normalizer``, ``elbo`` there;
            ``fit`` on a continuous flow stores the ODE function evaluations: ``nfe_forward``,
            ``nfe_backward`` of the last step and their ``*_mean`` over the steps taken).
    """

    train_nll: list[float] = dataclasses.field(default_factory=list)
    val_nll: list[float] = dataclasses.field(default_factory=list)
    val_step: list[int] = dataclasses.field(default_factory=list)
    step_nll: list[float] = dataclasses.field(default_factory=list)
    epoch_step: list[int] = dataclasses.field(default_factory=list)
    lr: list[float] = dataclasses.field(default_factory=list)
    best_val_nll: float | None = None
    best_step: int | None = None
    steps: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> History:
        """Rebuild from ``to_dict()`` output."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def function_evaluations(flow: nn.Module) -> tuple[int, int] | None:
    """``(forward, backward)`` ODE field evaluations of the last solve.

    Summed over the modules of ``flow`` that count them (a CNF's ``nfe`` / ``nfe_backward``).

    Args:
        flow: the model.

    Returns:
        The two counts, or None if no module counts evaluations.
    """
    found, forward, backward = False, 0, 0
    for module in submodules(flow):
        count = attribute(module, "nfe")
        if module is not flow and isinstance(count, int) and not isinstance(count, bool):
            found = True
            forward += count
            backward += int(attribute(module, "nfe_backward") or 0)
    return (forward, backward) if found else None


def record_evaluations(flow: nn.Module, history: History) -> int | None:
    """Record a step's NFE in ``history.extra`` (the last and the running mean).

    Args:
        flow: the model just stepped.
        history: where to record.

    Returns:
        The forward NFE, or None if the flow counts none.
    """
    counts = function_evaluations(flow)
    if counts is None:
        return None
    n = int(history.extra.get("nfe_steps", 0))
    for name, value in zip(("nfe_forward", "nfe_backward"), counts):
        history.extra[name] = float(value)
        mean = history.extra.get(f"{name}_mean", 0.0)
        history.extra[f"{name}_mean"] = (mean * n + value) / (n + 1)
    history.extra["nfe_steps"] = float(n + 1)
    return counts[0]
