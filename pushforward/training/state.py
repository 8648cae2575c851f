"""The training state (``TrainState``) and its checkpoint: everything an exact resume needs.

``training_state.safetensors`` holds the weights (``model.*``), the best weights (``best.*``),
Adam's moments, the weight average (``ema.*``) and the RNG states (one torch state per process);
its JSON metadata holds the run's fingerprint, the optimizer's groups, the schedule, the history
and the ``TrainState`` counters. A run resumed from it ends with exactly the parameters of an
uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pushforward.training import checkpoint as ckpt
from pushforward.training import distributed as ddp
from pushforward.training.averaging import WeightAverage
from pushforward.training.history import History
from pushforward.training.schedule import Schedule

__all__ = ["TrainState", "Run", "save_training_state", "load_training_state"]


@dataclasses.dataclass
class TrainState:
    """The loop's counters.

    Attributes:
        step: optimisation steps completed (skipped ones included).
        epoch: the current epoch.
        position: batches of the current epoch already taken.
        bad: skipped (non-finite) steps in a row.
        stalled: validations in a row without improvement.
        epoch_sum: the sum of the current epoch's step NLLs.
        epoch_count: the steps taken in the current epoch.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0
    bad: int = 0
    stalled: int = 0
    epoch_sum: float = 0.0
    epoch_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The counters as a JSON object (the keys a checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any], batches_per_epoch: int) -> TrainState:
        """Counters read back from a checkpoint, checked.

        Raises:
            KeyError: a counter is missing.
            ValueError: a counter is not a non-negative integer, or the position lies beyond
                the epoch.
        """
        values = {f.name: record[f.name] for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key != "epoch_sum" and (isinstance(value, bool) or not isinstance(value, int)
                                       or value < 0):
                raise ValueError(f"state {key} = {value!r}")
        if values["position"] >= batches_per_epoch:
            raise ValueError(f"position {values['position']} beyond the epoch")
        return cls(**values)


@dataclasses.dataclass
class Run:
    """What a checkpoint of a run saves and restores besides the model's own weights.

    Attributes:
        flow: the model.
        optimizer: its optimizer.
        schedule: the learning-rate schedule.
        average: the weight average (None without one).
        fingerprint: what must match to resume (seed, batch size, data size, processes).
        total_steps: the run's length.
        history: the measurements so far.
        state: the counters.
        best: the best weights so far (None before a validation).
    """

    flow: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    average: WeightAverage | None
    fingerprint: dict[str, Any]
    total_steps: int
    history: History = dataclasses.field(default_factory=History)
    state: TrainState = dataclasses.field(default_factory=TrainState)
    best: dict[str, Tensor] | None = None


def save_training_state(run: Run, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``run``'s training state (and the model checkpoint of a preset-built flow).

    Collective under DDP: every process calls it (for the RNG states); rank 0 writes.

    Args:
        run: the run.
        folder: the checkpoint folder.
        extra: extra JSON keys for the model's ``config.json``.

    Raises:
        ValueError: the weights hold NaN/inf (a diverged model is never saved).
    """
    tensors, rng_meta = ckpt.rng_state()
    if ddp.is_active():
        for r, s in enumerate(ddp.all_gather_tensor(tensors["rng.torch"])):
            tensors[f"rng.torch.rank{r}"] = s
    if not ddp.is_main():
        ddp.barrier()
        return
    model_state = ckpt.state_tensors(run.flow)  # raises on NaN weights
    tensors.update({f"model.{k}": v for k, v in model_state.items()})
    if run.best is not None:
        tensors.update({f"best.{k}": v for k, v in run.best.items()})
    opt_tensors, groups = ckpt.optimizer_state(run.optimizer)
    tensors.update(opt_tensors)
    meta = {"fingerprint": run.fingerprint, "optimizer": groups,
            "schedule": run.schedule.state(), "history": run.history.to_dict(),
            "state": run.state.to_dict(), "rng": rng_meta, "total_steps": run.total_steps}
    if run.average is not None:
        tensors.update({f"ema.{k}": v for k, v in run.average.state().items()})
        meta["ema_updates"] = run.average.updates
    ckpt.write_tensors(folder / ckpt.STATE_FILE, tensors, meta)
    if getattr(run.flow, "config", None) is not None:
        ckpt.save(run.flow, folder, extra=extra)
    ddp.barrier()


def load_training_state(run: Run, folder: Path, batches_per_epoch: int) -> bool:
    """Restore ``run`` from ``folder``'s training state, if it holds one.

    Args:
        run: the freshly built run (its model, optimizer, schedule and average are loaded in
            place; its history, state and best weights are replaced).
        folder: the checkpoint folder.
        batches_per_epoch: to check the stored position.

    Returns:
        True if a state was restored; False if the folder holds none.

    Raises:
        ValueError: the state was written by a different run (fingerprint) or is malformed.
    """
    path = folder / ckpt.STATE_FILE
    if not path.is_file():
        return False
    tensors, meta = ckpt.read_tensors(path)
    if meta.get("fingerprint") != run.fingerprint:
        raise ValueError(
            f"cannot resume from {folder}: it was trained with {meta.get('fingerprint')}, "
            f"this run has {run.fingerprint}"
        )
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    ckpt.load_state(run.flow, model_state, str(path))
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    if best:
        ckpt.load_state(copy.deepcopy(run.flow), best, str(path))
    run.best = best or None
    try:
        if run.average is not None:
            run.average.load({k[len("ema."):]: v for k, v in tensors.items()
                              if k.startswith("ema.")}, meta["ema_updates"])
        ckpt.set_optimizer_state(run.optimizer, tensors, meta["optimizer"])
        run.schedule.load(meta["schedule"])
        run.history = History.from_dict(meta["history"])
        run.state = TrainState.from_dict(meta["state"], batches_per_epoch)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: malformed training record ({error})") from None
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    per_rank_torch = tensors.get(f"rng.torch.rank{ddp.rank()}")
    if per_rank_torch is not None:
        rng["rng.torch"] = per_rank_torch
    ckpt.set_rng_state(rng, meta["rng"])
    run.history.interrupted = False
    return True
