"""The learning-rate schedule: cosine (a function of the step), plateau or constant."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["Schedule"]


class Schedule:
    """Cosine, plateau or constant learning rate, with an optional linear warm-up.

    Cosine: ``lr(s) = lr₀ (r + (1 − r) (1 + cos(π s / S)) / 2)`` with ``r = min_lr_ratio`` and
    ``S`` the total steps. Plateau: ``lr₀ · scale``, the scale multiplied by ``factor`` after
    ``patience`` stalled validations (never below ``min_lr_ratio`` or ``1e-3``). Warm-up
    multiplies by ``(s + 1) / warmup`` for ``s < warmup``.

    Args:
        kind: ``"cosine"``, ``"plateau"`` or None / ``"none"`` / ``"constant"``.
        lr: the peak learning rate ``lr₀``.
        total: the number of steps ``S``.
        warmup: warm-up steps.
        min_lr_ratio: ``r``.
        plateau_patience: stalled validations before a plateau decay.
        plateau_factor: the plateau decay factor.

    Raises:
        ValueError: an unknown ``kind``.

    Example:
        >>> Schedule("cosine", 1.0, total=10, warmup=0, min_lr_ratio=0.0,
        ...          plateau_patience=3, plateau_factor=0.5).lr(10)
        0.0
    """

    def __init__(self, kind: str | None, lr: float, total: int, warmup: int,
                 min_lr_ratio: float, plateau_patience: int, plateau_factor: float) -> None:
        if kind not in ("cosine", "plateau", None, "none", "constant"):
            raise ValueError(f"schedule must be 'cosine', 'plateau' or None, got {kind!r}")
        self.kind = None if kind in ("none", "constant") else kind
        self.base, self.total, self.warmup = lr, max(1, total), warmup
        self.min_ratio, self.patience, self.factor = min_lr_ratio, plateau_patience, plateau_factor
        self.scale = 1.0
        self.best: float | None = None
        self.bad = 0

    def lr(self, step: int) -> float:
        """The learning rate of step ``step``."""
        lr = self.base
        if self.kind == "cosine":
            progress = min(step, self.total) / self.total
            lr = lr * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi
                                                                                  * progress)))
        elif self.kind == "plateau":
            lr = lr * self.scale
        if self.warmup and step < self.warmup:
            lr = lr * (step + 1) / self.warmup
        return lr

    def validated(self, value: float) -> None:
        """Record a validation value (the plateau schedule decays after stalled ones)."""
        if self.kind != "plateau":
            return
        if self.best is None or value < self.best - 1e-4 * abs(self.best):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale = max(self.scale * self.factor, self.min_ratio or 1e-3)
                self.bad = 0

    def state(self) -> dict[str, Any]:
        """The mutable state, for a checkpoint."""
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load(self, state: dict[str, Any]) -> None:
        """Restore ``state()``."""
        self.scale, self.best, self.bad = float(state["scale"]), state["best"], int(state["bad"])
