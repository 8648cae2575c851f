"""Checkpoint records of flows built by hand: the ``pushforward.specs`` record of the flow.

A preset-built flow is rebuilt from its preset's name and options (``flow.config``). Any other
flow — ``pf.Flow(pf.Chain([...]), base)`` composed from the public transforms, bases, conditioner
networks and vector fields — is rebuilt from the record of its construction
(``pushforward.specs.to_spec``): ``config["spec"]``. ``flow_record`` writes it and rebuilds the
flow from it once, at save time, comparing the module tree and the state-dict shapes, so a flow
that cannot be rebuilt (an unregistered module, a structure changed after construction) is
refused when it is saved, never when it is loaded. A context ``embedding`` of an unregistered
class follows the preset rule: its weights are saved, and ``load`` needs the network again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pushforward import specs
from pushforward.core import Flow

__all__ = ["flow_record", "rebuild_from_record", "EMBEDDING"]

EMBEDDING = "embedding"
"""The label of an external context embedding in a record (``{"__external__": "embedding"}``)."""
_CHECKED = "_spec_checked"  # flow attribute: the record and structure last verified


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules in ``dtype`` (as the flow was), restoring the previous default after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _structure(flow: nn.Module) -> list[list[str]]:
    """The module tree (names and classes) and state-dict entries (names and shapes)."""
    modules = [[name, type(m).__qualname__] for name, m in flow.named_modules()]
    state = [[k, str(tuple(v.shape))] for k, v in flow.state_dict().items()]
    return modules + state


def flow_record(flow: Flow, dtype: torch.dtype) -> dict[str, Any]:
    """The config entries that rebuild a hand-built ``flow``: ``{"spec": ..., ["embedding"]}``.

    Args:
        flow: a flow made of ``pushforward.specs.serializable`` classes.
        dtype: the flow's floating dtype (modules are rebuilt in it).

    Returns:
        ``{"spec": record}``, plus ``"embedding": class name`` when the context embedding is
        not registered (``load`` then needs it again).

    Raises:
        ValueError: a module of the flow cannot be rebuilt from a record (the message names its
            place, its class and the fix), or the rebuilt flow differs from ``flow``.
    """
    embedding = getattr(flow, "embedding", None)
    external = {}
    if embedding is not None and not specs.is_serializable(embedding):
        external[id(embedding)] = EMBEDDING
    try:
        record = specs.to_spec(flow, external=external, where=type(flow).__name__)
    except ValueError as error:
        raise ValueError(f"cannot save this flow: {error}") from None
    entries: dict[str, Any] = {"spec": record}
    if external:
        entries["embedding"] = type(embedding).__name__
    structure = _structure(flow)
    key = json.dumps([record, structure, str(dtype)], sort_keys=True)
    if flow.__dict__.get(_CHECKED) == key:
        return entries
    with torch.random.fork_rng(devices=[]):  # rebuilding must not move the caller's RNG
        rebuilt = rebuild_from_record(json.loads(json.dumps(record)), dtype,
                                      embedding if external else None)
    again = _structure(rebuilt)
    if again != structure:
        first = next((a, b) for a, b in zip(structure + [["(none)"]], again + [["(none)"]])
                     if a != b)
        raise ValueError(
            f"cannot save this {type(flow).__name__}: it was changed after it was built (it has "
            f"{' '.join(first[0])} where, rebuilt from its constructors' arguments, it has "
            f"{' '.join(first[1])}); build it in its final form"
        )
    flow.__dict__[_CHECKED] = key
    return entries


def rebuild_from_record(record: dict[str, Any], dtype: torch.dtype,
                        embedding: nn.Module | None = None) -> Flow:
    """Build the (untrained) flow a ``flow_record`` describes, in ``dtype``.

    Args:
        record: the ``"spec"`` entry of a checkpoint config.
        dtype: the floating dtype to build in.
        embedding: the context embedding network, when the record names an external one.

    Returns:
        The flow.

    Raises:
        ValueError: the record does not describe a flow, or is malformed.
    """
    external = {} if embedding is None else {EMBEDDING: embedding}
    with _default_dtype(dtype):
        flow = specs.from_spec(record, external)
    if not isinstance(flow, Flow):
        raise ValueError(f"the checkpoint's spec describes a {type(flow).__name__}, not a Flow")
    return flow.to(dtype)
