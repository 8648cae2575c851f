"""Checkpoints without pickle: ``safetensors`` for tensors, JSON for everything else.

``save(flow, dir)`` writes ``model.safetensors`` (weights, plus the flow config and a SHA-256 of
the tensors in its metadata) and ``config.json`` (the same config, readable). ``load(dir)``
rebuilds a preset-built flow with ``pushforward.flows.build(config["flow"],
**config["options"])`` and re-adds recorded pre-processing layers; a flow built by hand from its
``pushforward.specs`` record, ``config["spec"]`` (``training.records``). Then it loads the
weights. Every file is written atomically (a temp
file in the same folder, ``fsync``, ``os.replace``), so a crash mid-write leaves the previous file.
Loading never unpickles; a corrupt, truncated, tampered, wrong-shape or wrong-config checkpoint
raises a one-line ``ValueError``.

The training state for exact resume (optimiser moments, schedule, step, data position, RNG states
of torch / numpy / random, best-so-far weights) is one more self-verifying safetensors file,
``training_state.safetensors``, with its scalars as JSON in the metadata.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward._registry import build, config_of
from pushforward.core import Flow, from_spec
from pushforward.training.records import flow_record, rebuild_from_record
from pushforward.training.tensorfile import (
    FORMAT,
    VERSION,
    atomic_write,
    read_tensors,
    write_tensors,
)

__all__ = [
    "save",
    "load",
    "load_checkpoint",
    "read_config",
    "write_tensors",
    "read_tensors",
    "atomic_write",
    "MODEL_FILE",
    "CONFIG_FILE",
    "STATE_FILE",
]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "training_state.safetensors"
_MAX_CONFIG_BYTES = 16 * 2**20
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


# -- the model ---------------------------------------------------------------------------------
def _model_config(flow: Flow, extra: dict[str, Any] | None) -> dict[str, Any]:
    dtype = _v.dtype_of(flow)
    if isinstance(getattr(flow, "config", None), dict):  # preset-built: its name and options
        record = config_of(flow)
        if getattr(flow, "embedding", None) is not None:
            record = {**record, "embedding": type(flow.embedding).__name__}  # weights in state
    else:  # built by hand: the record of its construction (pushforward.specs)
        record = flow_record(flow, dtype)
    config = {"format": FORMAT, "version": VERSION, **(extra or {}), **record,
              "dtype": str(dtype).replace("torch.", "")}
    try:
        text = json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the checkpoint config is not JSON-serialisable: {error}") from None
    if len(text) > _MAX_CONFIG_BYTES // 2:  # indented, it must stay under the reading limit
        raise ValueError(f"the checkpoint config would take {len(text)} bytes (more than "
                         f"{_MAX_CONFIG_BYTES // 2}): pass large initial tensors as weights")
    return config


def state_tensors(flow: Flow) -> dict[str, Tensor]:
    """The flow's state dict as tensors, refusing NaN/inf weights (never save a diverged model).

    Raises:
        ValueError: a floating tensor holds NaN or infinite values.
    """
    state = {k: v for k, v in flow.state_dict().items() if isinstance(v, Tensor)}
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"refusing to save: {name} holds NaN/inf values (the model diverged)"
            )
    return state


def save(flow: Flow, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Save a flow into the folder ``path`` (created if needed).

    Writes ``model.safetensors`` then ``config.json``, each atomically. ``extra`` adds JSON keys to
    the config (the CLI records its dataset and arguments there). A preset-built flow is
    recorded by its preset's name and options; any other flow by the record of its
    construction (``pushforward.specs``: every public transform, base distribution,
    conditioner network and vector field records its constructor's arguments), checked at
    save time by rebuilding it once.

    Args:
        flow: a flow built by a registered preset (``flow.config`` records how to rebuild it),
            possibly wrapped with pre-processing layers (``flow.prepend``), or composed by
            hand, ``pf.Flow(pf.Chain([...]), base)``, from ``serializable`` classes. A context
            ``embedding`` network of an unregistered class is saved with its weights; its
            architecture is code, so ``load`` needs it again (``pf.load(path, embedding=net)``).
        path: the output folder.
        extra: extra JSON keys for ``config.json``.

    Returns:
        The folder, as a ``Path``.

    Raises:
        ValueError: a module of a hand-built flow cannot be rebuilt from a record (an
            unregistered class: the message names it; register it with
            ``@pushforward.specs.serializable``), its config is not JSON, or its weights hold
            NaN/inf (a diverged model is never written over a good one).

    Example:
        >>> import tempfile, torch, pushforward as pf
        >>> T = pf.transforms
        >>> flow = pf.Flow(pf.Chain([T.MaskedAutoregressive(2, hidden=(8,)), T.Reverse(2)]),
        ...                pf.StandardNormal(2))
        >>> again = pf.load(pf.save(flow, tempfile.mkdtemp()))
        >>> x = torch.randn(3, 2)
        >>> torch.allclose(again.log_prob(x), flow.eval().log_prob(x))
        True
    """
    folder = Path(path)
    config = _model_config(flow, extra)
    write_tensors(folder / MODEL_FILE, state_tensors(flow), config)
    atomic_write(folder / CONFIG_FILE, (json.dumps(config, indent=2, sort_keys=True,
                                                   allow_nan=False) + "\n").encode())
    return folder


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder, checked for shape (not for weights).

    Raises:
        FileNotFoundError: no such folder or no config.json in it.
        ValueError: malformed JSON or missing keys.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint folder {folder}")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_FILE} (not a checkpoint folder)")
    if file.stat().st_size > _MAX_CONFIG_BYTES:
        raise ValueError(f"{file} is too large to be a checkpoint config")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} must hold a JSON object")
    if config.get("format") != FORMAT:
        raise ValueError(f"{file} is not a pushforward checkpoint config")
    if "spec" in config:
        if not isinstance(config["spec"], dict) or "flow" in config:
            raise ValueError(f"{file}: 'spec' must be an object (and comes without 'flow')")
    elif not isinstance(config.get("flow"), str) or not isinstance(config.get("options"), dict):
        raise ValueError(f"{file} needs a 'flow' name and an 'options' object, or a 'spec'")
    if config.get("dtype", "float32") not in _DTYPES:
        raise ValueError(f"{file}: unknown dtype {config.get('dtype')!r}")
    return config


def rebuild(config: dict[str, Any], embedding: nn.Module | None = None) -> Flow:
    """Build the (untrained) flow a config describes, pre-processing layers included.

    Args:
        config: a checkpoint config (``read_config``).
        embedding: the context embedding network, when the config records one.

    Returns:
        The flow, in the config's dtype.

    Raises:
        ValueError: the config cannot rebuild a flow, or ``embedding`` does not match the config.
    """
    saved_with = config.get("embedding")
    if saved_with is not None and embedding is None:
        raise ValueError(
            f"this checkpoint was saved with a context embedding network ({saved_with}); its "
            "architecture is code, not data: pass a network of the same architecture, "
            "pf.load(path, embedding=net), and its saved weights are loaded into it"
        )
    if saved_with is None and embedding is not None:
        raise ValueError("embedding= given, but this checkpoint was saved without one")
    dtype = _DTYPES[config.get("dtype", "float32")]
    if "spec" in config:  # a flow built by hand
        return rebuild_from_record(config["spec"], dtype, embedding)
    options = dict(config["options"])
    if embedding is not None:
        options["embedding"] = embedding
    try:
        flow = build(config["flow"], **options)
    except Exception as error:  # a preset may raise anything on bad options
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"config cannot rebuild flow {config['flow']!r}: {reason}") from None
    records = config.get("preprocess", [])
    if not isinstance(records, list):
        raise ValueError("config 'preprocess' must be a list")
    flow = flow.prepend([from_spec(record) for record in records])
    return flow.to(dtype)


def load_state(flow: Flow, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` into ``flow`` strictly, with one-line errors for any mismatch."""
    expected = flow.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = (f"missing {missing[:3]}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {unexpected[:3]}" if unexpected else "")
        raise ValueError(f"{source} does not match the model: {what}")
    for key, value in state.items():
        target = expected[key]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{source}: {key} has shape {tuple(value.shape)}, the model "
                             f"needs {tuple(target.shape)}")
        if value.is_floating_point() != target.is_floating_point():
            raise ValueError(f"{source}: {key} has dtype {value.dtype}, expected {target.dtype}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{source}: {key} holds NaN/inf values")
    flow.load_state_dict(state, strict=True)


def load_checkpoint(
    path: str | os.PathLike, embedding: nn.Module | None = None
) -> tuple[Flow, dict[str, Any]]:
    """``load`` that also returns the checkpoint's config (with the CLI's extra keys).

    Args:
        path: a folder written by ``save``.
        embedding: the context embedding network, for a flow saved with one.

    Returns:
        ``(flow, config)``: the flow as ``load`` returns it, and the parsed ``config.json``.

    Raises:
        FileNotFoundError: the folder or its files are missing.
        ValueError: corrupt, truncated, tampered, wrong-shape or wrong-config checkpoint.
    """
    folder = Path(path)
    config = read_config(folder)
    tensors, stored = read_tensors(folder / MODEL_FILE)
    if stored != config:
        raise ValueError(
            f"{folder / CONFIG_FILE} does not match the config stored in {MODEL_FILE} "
            "(edited or from another run)"
        )
    flow = rebuild(config, embedding)
    load_state(flow, tensors, str(folder / MODEL_FILE))
    flow.eval()
    if "flow" in config:  # preset-built: saving it again uses the preset's record
        flow.config = {k: config[k] for k in ("flow", "options", "preprocess") if k in config}
    return flow, config


def load(path: str | os.PathLike, embedding: nn.Module | None = None) -> Flow:
    """Load a flow saved by ``save`` (never unpickles), in eval mode.

    Args:
        path: a folder written by ``save`` (or by ``pushforward train``).
        embedding: for a flow saved with a context embedding network, a network of the same
            architecture (its weights come from the checkpoint).

    Returns:
        The rebuilt flow with its weights, in eval mode.

    Raises:
        FileNotFoundError: the folder or its files are missing.
        ValueError: corrupt, truncated, tampered, wrong-shape or wrong-config checkpoint.

    Example:
        >>> import tempfile, torch, pushforward as pf
        >>> flow = pf.flows.MAF(2, transforms=1, hidden=(8,))
        >>> folder = pf.save(flow, tempfile.mkdtemp())
        >>> x = torch.randn(3, 2)
        >>> torch.equal(pf.load(folder).log_prob(x), flow.eval().log_prob(x))
        True
    """
    return load_checkpoint(path, embedding)[0]


# -- RNG and optimiser state (used by fit) -------------------------------------------------------
def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The states of torch's, numpy's and Python's global generators, as tensors + JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    try:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
        cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([tensors[k].to(torch.uint8) for k in cuda])
        kind, pos, has_gauss, cached = meta["numpy"]
        keys = tensors["rng.numpy"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
        version, gauss = meta["python"]
        internal = tuple(int(v) for v in tensors["rng.python"].tolist())
        random.setstate((int(version), internal, gauss))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"training state: malformed RNG record ({error})") from None


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
    """An optimiser's state as tensors (``optim.<param>.<name>``) + JSON param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    groups = []
    for group in state["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()})
    return tensors, groups


def set_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                        groups: list) -> None:
    """Restore what ``optimizer_state`` returned (shapes are checked)."""
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    try:
        fixed = []
        for group in groups:
            fixed.append({k: (tuple(v) if k == "betas" else v) for k, v in group.items()})
        current = optimizer.state_dict()["param_groups"]
        if [len(g["params"]) for g in fixed] != [len(g["params"]) for g in current]:
            raise ValueError("parameter groups differ from the model's")
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for index, entry in state.items():
            for name in ("exp_avg", "exp_avg_sq"):
                if name in entry and entry[name].shape != params[index].shape:
                    raise ValueError(f"optimiser {name} of parameter {index} has shape "
                                     f"{tuple(entry[name].shape)}, expected "
                                     f"{tuple(params[index].shape)}")
        optimizer.load_state_dict({"state": state, "param_groups": fixed})
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"training state: optimiser record does not fit ({error})") from None
