"""Maximum-likelihood training (``fit``) and reverse-KL training (``fit_reverse_kl``).

This package is the only place that knows optimisers. ``fit`` minimises the mean negative
log-likelihood (plus any ``regularization()`` a module of the flow exposes, e.g. a CNF's RNODE
penalty) with Adam, a cosine or plateau learning-rate schedule and gradient clipping; it validates
every ``val_every`` steps, stops early after ``patience`` validations without improvement and
restores the best weights. A non-finite loss or gradient skips the step with a warning and raises
``TrainingDiverged`` after ``max_bad_steps`` in a row; parameters are never updated from a bad
step, and a checkpoint is never written from non-finite weights.

Determinism and exact resume: ``fit`` seeds torch, numpy and ``random`` with ``seed``; the data
order of epoch ``e`` is a ``DistributedSampler`` permutation seeded by ``(seed, e)``; a checkpoint
holds the weights, Adam's moments, the schedule, the step and position in the epoch, the RNG states
and the best weights, so a killed run resumed with ``resume=True`` ends with exactly the parameters
of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import random
import signal
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, TensorDataset
from torch.utils.data._utils.collate import default_collate

from pushforward._validation import NonFiniteResult, validation
from pushforward.core import Flow
from pushforward.training import checkpoint as ckpt
from pushforward.training import distributed as ddp
from pushforward.training.averaging import WeightAverage
from pushforward.training.objectives import Objective, make_objective, regularization

__all__ = ["fit", "fit_reverse_kl", "History", "TrainingDiverged", "regularization",
           "function_evaluations"]


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
        best_val_nll, best_step: the best validation and when (None without ``val``).
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
    """``(forward, backward)`` ODE field evaluations of the last solve, summed over the modules
    of ``flow`` that count them (a CNF's ``nfe`` / ``nfe_backward``); None if none does."""
    found, forward, backward = False, 0, 0
    for module in flow.modules():
        count = getattr(module, "nfe", None)
        if module is not flow and isinstance(count, int) and not isinstance(count, bool):
            found = True
            forward += count
            backward += int(getattr(module, "nfe_backward", 0))
    return (forward, backward) if found else None


def _log_evaluations(flow: nn.Module, history: History) -> int | None:
    """Record a step's NFE in ``history.extra`` (last and running mean); return the forward NFE."""
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


# -- data ----------------------------------------------------------------------------------------
def _as_tensors(data: Any, dtype: torch.dtype) -> Any:
    """Array-likes (NumPy arrays, nested lists) as tensors of the flow's ``dtype``.

    Tensors and Datasets pass through unchanged; a tuple ``(x, context)`` (or a list of two
    arrays) converts each half. So ``pf.fit(flow, pf.data.toy("moons", 1000))`` works as is.
    """
    if data is None or isinstance(data, (Tensor, Dataset)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(
        isinstance(d, (Tensor, np.ndarray)) for d in data
    ):
        return tuple(_as_tensors(d, dtype) for d in data)
    if isinstance(data, np.ndarray) or isinstance(data, (list, tuple)):
        array = np.asarray(data)
        if array.dtype.kind in "biuf":
            return torch.as_tensor(array, dtype=dtype)
    return data


class _Source:
    """Uniform batch access to a tensor, an ``(x, context)`` pair or a Dataset."""

    def __init__(self, data: Any, name: str, discrete: bool = False) -> None:
        self.context: Tensor | None = None
        self.dataset: Dataset | None = None
        self.tensor: Tensor | None = None
        if isinstance(data, Tensor):
            self.tensor = data
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(
            isinstance(t, Tensor) for t in data
        ):
            self.tensor, self.context = data
            if self.context.dim() != 2 or self.context.shape[0] != self.tensor.shape[0]:
                raise ValueError(
                    f"fit: {name} context must be (N, C) with N = {self.tensor.shape[0]}, got "
                    f"{tuple(self.context.shape)}"
                )
        elif isinstance(data, Dataset) and hasattr(data, "__len__"):
            self.dataset = data
        else:
            raise TypeError(
                f"fit: {name} must be a tensor, an (x, context) pair of tensors or a sized "
                f"Dataset, got {type(data).__name__}"
            )
        if self.tensor is not None:
            if discrete and not self.tensor.is_floating_point() and self.tensor.dtype not in (
                    torch.bool, torch.complex64, torch.complex128):
                # An integer discrete flow (IDF) trains on the raw integers, not dequantised.
                self.tensor = self.tensor.to(torch.get_default_dtype())
            if not self.tensor.is_floating_point():
                raise TypeError(f"fit: {name} must be a floating-point tensor, got "
                                f"{self.tensor.dtype}")
            if self.tensor.dim() < 2:
                raise ValueError(f"fit: {name} must be shaped (N, *event), got "
                                 f"{tuple(self.tensor.shape)}")
            if not torch.isfinite(self.tensor).all():
                raise ValueError(f"fit: {name} contains NaN or infinite values")
            if self.context is not None and not (
                self.context.is_floating_point() and torch.isfinite(self.context).all()
            ):
                raise ValueError(f"fit: {name} context must be finite floating-point values")
        if len(self) == 0:
            raise ValueError(f"fit: {name} is empty")

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else self.tensor.shape[0]

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.tensor is not None:
            ctx = None if self.context is None else self.context[index]
            return self.tensor[index], ctx
        ds = self.dataset
        if isinstance(ds, TensorDataset) or getattr(ds, "batch_indexing", False) or type(
            ds
        ).__name__ == "DequantizedImages":
            item = ds[index]
        else:
            item = default_collate([ds[int(i)] for i in index])
        if isinstance(item, (tuple, list)):
            if len(item) == 1:
                return item[0], None
            if len(item) == 2:
                return item[0], item[1]
            raise ValueError("fit: dataset items must be x or (x, context)")
        return item, None


def _to(x: Tensor, like: Tensor | None) -> Tensor:
    if like is None:
        return x
    if x.is_floating_point():
        return x.to(device=like.device, dtype=like.dtype)
    return x.to(device=like.device)


def _anchor(flow: nn.Module) -> Tensor | None:
    return next((t for t in (*flow.parameters(), *flow.buffers()) if t.is_floating_point()),
                None)


@torch.no_grad()
def _evaluate(flow: Flow, source: _Source, batch_size: int) -> float:
    was_training = flow.training
    flow.eval()
    like = _anchor(flow)
    total, count = 0.0, 0
    try:
        for start in range(0, len(source), batch_size):
            index = torch.arange(start, min(start + batch_size, len(source)))
            x, ctx = source.batch(index)
            x, ctx = _to(x, like), None if ctx is None else _to(ctx, like)
            total += float(-flow.log_prob(x, ctx).double().sum())
            count += x.shape[0]
    finally:
        flow.train(was_training)
    return total / count


# -- learning-rate schedule -------------------------------------------------------------------
class _Schedule:
    """Cosine (a function of the step), plateau (halve after stalled validations) or constant."""

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
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad = float(state["scale"]), state["best"], int(state["bad"])


class _Signals:
    """Turn SIGINT/SIGTERM into a flag while training (main thread only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum

    def __exit__(self, *args: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _check_positive(name: str, value: Any, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"fit: {name} must be a positive integer, got {value!r}")


def _average_gradients(params: list[Tensor], world: int) -> None:
    """Average gradients over processes (objectives that bypass DDP's forward)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def _clone_state(flow: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


# -- fit ----------------------------------------------------------------------------------------
def fit(
    flow: Flow,
    train: Tensor | tuple[Tensor, Tensor] | Dataset,
    val: Tensor | tuple[Tensor, Tensor] | Dataset | None = None,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int = 256,
    lr: float | None = None,
    schedule: str | None = "cosine",
    warmup: int = 0,
    min_lr_ratio: float = 0.0,
    weight_decay: float = 0.0,
    clip_grad: float | None = 5.0,
    val_every: int | None = None,
    val_batch_size: int = 2048,
    patience: int | None = None,
    restore_best: bool = True,
    plateau_patience: int = 3,
    plateau_factor: float = 0.5,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
    max_bad_steps: int = 10,
    handle_signals: bool = True,
    callback: Callable[[int, float], None] | None = None,
    objective: str | Objective = "mle",
    coupling: str | None = None,
    ema: float | None = None,
) -> History:
    """Fit ``flow`` to data by maximum likelihood.

    Args:
        flow: the flow (trained in place; under ``torchrun`` it is wrapped in DDP internally).
        train: a tensor ``(N, *event)``, a pair ``(x, context)`` or a sized Dataset whose items
            are ``x`` or ``(x, context)``. NumPy arrays (e.g. from ``pf.data.toy``) and nested
            lists are accepted and converted to the flow's dtype.
        val: validation data of the same kind (enables best-model restore and early stopping).
        epochs: passes over ``train``; or give ``steps`` (default 1,000 steps if neither).
        steps: optimisation steps in total.
        batch_size: batch size per process.
        lr: Adam's (peak) learning rate; None: the objective's default (1e-3 for maximum
            likelihood, 3e-3 for flow matching).
        schedule: ``"cosine"`` (decay to ``min_lr_ratio · lr`` at the last step), ``"plateau"``
            (multiply by ``plateau_factor`` after ``plateau_patience`` stalled validations) or
            None (constant).
        warmup: linear warm-up steps.
        weight_decay: Adam's L2 penalty.
        clip_grad: maximum global gradient norm (None: no clipping).
        val_every: validate every this many steps (default: once per epoch) and at the end.
        val_batch_size: batch size of the validation pass.
        patience: stop after this many validations without improvement (None: never).
        restore_best: with ``val``, end with the weights of the best validation.
        seed: seeds torch, numpy, ``random`` and the data order.
        checkpoint_dir: folder for ``training_state.safetensors``, ``model.safetensors`` and
            ``config.json`` (the last two need a preset-built flow).
        checkpoint_every: checkpoint every this many steps (default: at each validation).
        checkpoint_extra: extra JSON keys for ``config.json``.
        resume: continue from ``checkpoint_dir``'s training state if there is one.
        progress: show a tqdm bar with the live NLL (rank 0 only).
        max_bad_steps: raise ``TrainingDiverged`` after this many non-finite steps in a row.
        handle_signals: on SIGINT/SIGTERM finish the step, checkpoint and return with
            ``history.interrupted`` set.
        callback: called as ``callback(step, nll)`` after every step taken.
        objective: ``"mle"`` (maximum likelihood, the default), ``"flow-matching"``
            (simulation-free regression of a continuous flow's field, see
            ``pushforward.training.objectives.FlowMatching``; the flow's transform must be one
            ``CNF`` or ``SphereCNF``) or an ``Objective`` instance. Under flow matching the
            per-step values in the history are the regression loss, while validation (every
            ``val_every`` steps, by default every epoch but at most 20 times a run) measures
            the exact NLL, so early stopping and best-model restore work as with MLE.
        coupling: flow matching's pairing of noise and data: ``"ot"`` (exact minibatch
            optimal transport), ``"independent"``; None: OT for unconditional flows,
            independent with a context.
        ema: decay of an exponential moving average of the weights (``0``: none), used for
            validation, for the best-model restore and for the final weights; None: the
            objective's default (none for maximum likelihood, 0.995 for flow matching).

    Returns:
        The ``History`` (per-epoch and per-step train NLL, val NLL).

    Raises:
        TrainingDiverged: ``max_bad_steps`` consecutive non-finite losses or gradients.
        ValueError / TypeError: bad arguments or data; an unusable checkpoint to resume from.
    """
    if not isinstance(flow, nn.Module):
        raise TypeError(f"fit: flow must be a pushforward Flow, got {type(flow).__name__}")
    for name, value in (("epochs", epochs), ("steps", steps), ("batch_size", batch_size),
                        ("val_every", val_every), ("patience", patience),
                        ("checkpoint_every", checkpoint_every), ("max_bad_steps", max_bad_steps),
                        ("val_batch_size", val_batch_size)):
        _check_positive(name, value)
    if epochs is not None and steps is not None:
        raise ValueError("fit: give epochs or steps, not both")
    objective = make_objective(objective, coupling)
    if lr is None:
        lr = objective.default_lr
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"fit: lr must be a positive number, got {lr!r}")
    if clip_grad is not None and not (math.isfinite(clip_grad) and clip_grad > 0):
        raise ValueError(f"fit: clip_grad must be positive or None, got {clip_grad!r}")
    if resume and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs a checkpoint_dir")
    objective.check(flow)
    decay = objective.default_ema if ema is None else float(ema)
    if not (0.0 <= decay < 1.0):
        raise ValueError(f"fit: ema must be a decay in [0, 1), got {ema!r}")

    like = _anchor(flow)
    dtype = torch.get_default_dtype() if like is None else like.dtype
    train, val = _as_tensors(train, dtype), _as_tensors(val, dtype)
    discrete = bool(getattr(flow, "discrete", False))
    source = _Source(train, "train", discrete)
    val_source = None if val is None else _Source(val, "val", discrete)
    event = getattr(flow, "event_shape", None)
    for src, name in ((source, "train"), (val_source, "val")):
        if src is not None and src.tensor is not None and event is not None and tuple(
                src.tensor.shape[1:]) != tuple(event):
            raise ValueError(f"fit: {name} samples have shape {tuple(src.tensor.shape[1:])}, "
                             f"the flow models {tuple(event)}")
    if checkpoint_dir is not None and Path(checkpoint_dir).exists() and not Path(
            checkpoint_dir).is_dir():
        raise ValueError(f"fit: checkpoint_dir {checkpoint_dir} exists and is not a folder")
    world, rank = ddp.world_size(), ddp.rank()
    sampler = DistributedSampler(range(len(source)), num_replicas=world, rank=rank,
                                 shuffle=True, seed=int(seed), drop_last=False)
    per_rank = len(sampler)
    batches_per_epoch = max(1, per_rank // batch_size)
    if steps is None:
        steps = 1000 if epochs is None else epochs * batches_per_epoch
    if val_every is None and not objective.uses_model_forward:
        # simulation-free steps are cheap next to an exact-likelihood validation pass
        val_every = max(batches_per_epoch, -(-steps // 20))
    val_every = val_every or batches_per_epoch
    checkpoint_every = checkpoint_every or val_every
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)

    model: nn.Module = flow
    if ddp.is_active():
        flow.to(ddp.device())
        model = nn.parallel.DistributedDataParallel(
            flow, device_ids=[ddp.device().index] if ddp.device().type == "cuda" else None
        )
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit: the flow has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    average = WeightAverage(flow, decay) if decay > 0 else None
    sched = _Schedule(schedule, lr, steps, warmup, min_lr_ratio, plateau_patience,
                      plateau_factor)
    history = History()
    state = {"step": 0, "epoch": 0, "position": 0, "bad": 0, "stalled": 0, "epoch_sum": 0.0,
             "epoch_count": 0}
    best_state: dict[str, Tensor] | None = None
    fingerprint = {"seed": int(seed), "batch_size": int(batch_size), "n_train": len(source),
                   "world_size": world}

    resumed = False
    if resume and folder is not None and (folder / ckpt.STATE_FILE).is_file():
        tensors, meta = ckpt.read_tensors(folder / ckpt.STATE_FILE)
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"cannot resume from {folder}: it was trained with {meta.get('fingerprint')}, "
                f"this run has {fingerprint}"
            )
        model_state = {k[len("model."):]: v for k, v in tensors.items()
                       if k.startswith("model.")}
        ckpt.load_state(flow, model_state, str(folder / ckpt.STATE_FILE))
        best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
        if best:
            ckpt.load_state(copy.deepcopy(flow), best, str(folder / ckpt.STATE_FILE))
        best_state = best or None
        try:
            if average is not None:
                average.load({k[len("ema."):]: v for k, v in tensors.items()
                              if k.startswith("ema.")}, meta["ema_updates"])
            ckpt.set_optimizer_state(optimizer, tensors, meta["optimizer"])
            sched.load(meta["schedule"])
            history = History.from_dict(meta["history"])
            state = {k: meta["state"][k] for k in state}
            for key in ("step", "epoch", "position", "bad", "stalled", "epoch_count"):
                if isinstance(state[key], bool) or not isinstance(state[key], int) or \
                        state[key] < 0:
                    raise ValueError(f"state {key} = {state[key]!r}")
            if state["position"] >= batches_per_epoch:
                raise ValueError(f"position {state['position']} beyond the epoch")
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{folder / ckpt.STATE_FILE}: malformed training record "
                             f"({error})") from None
        rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
        per_rank_torch = tensors.get(f"rng.torch.rank{rank}")
        if per_rank_torch is not None:
            rng["rng.torch"] = per_rank_torch
        ckpt.set_rng_state(rng, meta["rng"])
        history.interrupted = False
        resumed = True
    if not resumed:
        _seed_all(int(seed) + 1_000_003 * rank)

    like = _anchor(flow)
    main = ddp.is_main()

    def save_checkpoint() -> None:
        if folder is None:
            return
        tensors, rng_meta = ckpt.rng_state()
        if ddp.is_active():
            for r, s in enumerate(ddp.all_gather_tensor(tensors["rng.torch"])):
                tensors[f"rng.torch.rank{r}"] = s
        if not main:
            ddp.barrier()
            return
        model_state = ckpt._state(flow)  # raises on NaN weights: never save a diverged model
        tensors.update({f"model.{k}": v for k, v in model_state.items()})
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        opt_tensors, groups = ckpt.optimizer_state(optimizer)
        tensors.update(opt_tensors)
        meta = {"fingerprint": fingerprint, "optimizer": groups, "schedule": sched.state(),
                "history": history.to_dict(), "state": state, "rng": rng_meta,
                "total_steps": steps}
        if average is not None:
            tensors.update({f"ema.{k}": v for k, v in average.state().items()})
            meta["ema_updates"] = average.updates
        ckpt.write_tensors(folder / ckpt.STATE_FILE, tensors, meta)
        if getattr(flow, "config", None) is not None:
            ckpt.save(flow, folder, extra=checkpoint_extra)
        ddp.barrier()

    def validate() -> bool:
        """Validate; return True if training should stop early."""
        nonlocal best_state
        with contextlib.nullcontext() if average is None else average.applied():
            value = _evaluate(flow, val_source, val_batch_size)
            value = ddp.broadcast_float(value)
            improved = history.best_val_nll is None or value < history.best_val_nll
            if improved:
                best_state = _clone_state(flow)
        history.val_nll.append(value)
        history.val_step.append(state["step"])
        sched.validated(value)
        if improved:
            history.best_val_nll, history.best_step = value, state["step"]
            state["stalled"] = 0
        else:
            state["stalled"] += 1
        return patience is not None and state["stalled"] >= patience

    def close_epoch() -> None:
        if state["epoch_count"]:
            history.train_nll.append(state["epoch_sum"] / state["epoch_count"])
            history.epoch_step.append(state["step"])
            history.lr.append(optimizer.param_groups[0]["lr"])
        state["epoch_sum"], state["epoch_count"] = 0.0, 0

    bar = None
    if progress and main and state["step"] < steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=state["step"], desc="train", unit="step",
                   dynamic_ncols=True, leave=True)
    smoothed = None
    order: list[int] | None = None
    order_epoch = -1
    flow.train()
    try:
        with _Signals(handle_signals) as signals:
            while state["step"] < steps and not history.stopped_early:
                if order_epoch != state["epoch"]:
                    sampler.set_epoch(state["epoch"])
                    order = list(sampler)
                    order_epoch = state["epoch"]
                assert order is not None
                start = state["position"] * batch_size
                index = torch.tensor(order[start:start + batch_size], dtype=torch.long)
                if per_rank < batch_size:
                    index = torch.tensor(order, dtype=torch.long)
                x, ctx = source.batch(index)
                x, ctx = _to(x, like), None if ctx is None else _to(ctx, like)

                try:
                    loss, nll = objective.loss(flow, model, x, ctx)
                except NonFiniteResult:
                    # A NaN log-density (validation on): skipped below like a NaN loss.
                    nll = torch.full((), math.nan, dtype=x.dtype, device=x.device)
                    loss = nll
                flags = torch.stack([nll.detach().double(),
                                     (~torch.isfinite(loss.detach())).double(),
                                     torch.tensor(float(signals.received is not None),
                                                  dtype=torch.float64)])
                flags = ddp.all_reduce_sum(flags)
                finite = bool(flags[1] == 0)
                if finite:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if ddp.is_active() and not objective.uses_model_forward:
                        _average_gradients(params, world)
                    norm = torch.nn.utils.clip_grad_norm_(
                        params, clip_grad if clip_grad is not None else float("inf")
                    )
                    finite = bool(torch.isfinite(norm))
                if finite:
                    for group in optimizer.param_groups:
                        group["lr"] = sched.lr(state["step"])
                    optimizer.step()
                    if average is not None:
                        average.update()
                    if objective.uses_model_forward:
                        _log_evaluations(flow, history)
                    value = float(flags[0]) / world
                    history.step_nll.append(value)
                    state["epoch_sum"] += value
                    state["epoch_count"] += 1
                    state["bad"] = 0
                    smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
                    if callback is not None:
                        callback(state["step"], value)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    state["bad"] += 1
                    history.skipped_steps += 1
                    warnings.warn(
                        f"step {state['step']}: non-finite loss or gradient, step skipped "
                        f"({state['bad']} in a row)", RuntimeWarning, stacklevel=2)
                    if state["bad"] >= max_bad_steps:
                        raise TrainingDiverged(
                            f"training diverged: {state['bad']} non-finite losses/gradients in "
                            f"a row at step {state['step']}; lower the learning rate "
                            f"(lr={lr:g}), clip gradients harder or use float64"
                        )
                state["step"] += 1
                history.steps = state["step"]
                state["position"] += 1
                if state["position"] >= batches_per_epoch:
                    state["position"] = 0
                    state["epoch"] += 1
                    close_epoch()
                if bar is not None:
                    bar.update(1)
                    post = {"nll": f"{smoothed:.4f}" if smoothed is not None else "nan"}
                    if history.val_nll:
                        post["val"] = f"{history.val_nll[-1]:.4f}"
                    if "nfe_forward" in history.extra:
                        post["nfe"] = f"{history.extra['nfe_forward']:.0f}"
                    bar.set_postfix(post, refresh=False)
                last = state["step"] >= steps
                if val_source is not None and (state["step"] % val_every == 0 or last):
                    if validate():
                        history.stopped_early = True
                if state["step"] % checkpoint_every == 0 and not last and not state["bad"]:
                    save_checkpoint()  # never in the middle of a run of non-finite steps
                if bool(flags[2] > 0) and not last and not history.stopped_early:
                    history.interrupted = True
                    save_checkpoint()
                    return history
            close_epoch()
            if val_source is not None and restore_best and best_state is not None:
                flow.load_state_dict(best_state)
            elif average is not None:
                average.copy_to_module()
            save_checkpoint()
    finally:
        if bar is not None:
            bar.close()
        flow.eval()
    return history


# -- reverse KL ---------------------------------------------------------------------------------
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
        _check_positive(name, value, allow_none=False)
    if not callable(log_density):
        raise TypeError("fit_reverse_kl: log_density must be callable")
    _seed_all(int(seed))
    params = [p for p in flow.parameters() if p.requires_grad]
    if not params:
        raise ValueError("fit_reverse_kl: the flow has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr)
    sched = _Schedule(schedule, lr, steps, 0, 0.0, 3, 0.5)
    history = History()
    bad = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="reverse KL", unit="step", dynamic_ncols=True)
    flow.train()
    try:
        for step in range(steps):
            with validation(False):  # a non-finite draw is skipped below, not raised
                x, log_q = flow.rsample_and_log_prob(batch_size)
            log_p = log_density(x)
            if not isinstance(log_p, Tensor) or log_p.shape != log_q.shape:
                raise ValueError(
                    f"fit_reverse_kl: log_density must return a tensor of shape "
                    f"{tuple(log_q.shape)}, got {getattr(log_p, 'shape', type(log_p))}"
                )
            loss = (log_q - log_p).mean()
            extra = regularization(flow)
            if extra is not None:
                loss = loss + extra
            finite = bool(torch.isfinite(loss))
            if finite:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    params, clip_grad if clip_grad is not None else float("inf"))
                finite = bool(torch.isfinite(norm))
            if finite:
                for group in optimizer.param_groups:
                    group["lr"] = sched.lr(step)
                optimizer.step()
                history.step_nll.append(float(loss.detach()))
                bad = 0
            else:
                optimizer.zero_grad(set_to_none=True)
                bad += 1
                history.skipped_steps += 1
                warnings.warn(f"step {step}: non-finite loss or gradient, step skipped",
                              RuntimeWarning, stacklevel=2)
                if bad >= max_bad_steps:
                    raise TrainingDiverged(
                        f"reverse-KL training diverged: {bad} non-finite steps in a row at "
                        f"step {step}; lower the learning rate (lr={lr:g})"
                    )
            history.steps = step + 1
            if bar is not None:
                bar.update(1)
                if history.step_nll:
                    bar.set_postfix({"loss": f"{history.step_nll[-1]:.4f}"}, refresh=False)
    finally:
        if bar is not None:
            bar.close()
        flow.eval()
    with torch.no_grad():
        weights = []
        for start in range(0, estimate_samples, 4096):
            n = min(4096, estimate_samples - start)
            x, log_q = flow.sample_and_log_prob(n)
            weights.append((log_density(x) - log_q).double())
        w = torch.cat(weights)
        w = w[torch.isfinite(w)]
        if w.numel() == 0:
            raise ValueError("fit_reverse_kl: log_density is not finite on any of the flow's "
                             "samples, so log Z cannot be estimated")
        elbo = float(w.mean())
        log_z = float(torch.logsumexp(w, 0) - math.log(w.numel()))
    history.extra.update({"elbo": elbo, "log_normalizer": log_z, "kl": log_z - elbo})
    if history.step_nll:
        history.train_nll.append(float(np.mean(history.step_nll[-max(1, steps // 10):])))
        history.epoch_step.append(history.steps)
    return history
