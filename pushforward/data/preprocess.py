"""Pre-processing records of a flow config (the layers themselves are transforms).

The layers are ``pf.transforms.Standardization``, ``LogitPreprocessing``, ``Reshape`` and
``Sigmoid``; ``flow.prepend(layers)`` puts them on a flow's data side and records them in its
config; ``unwrap_spec(config)`` rebuilds them from that record (``pushforward.specs``).
``wrap(flow, layers)`` is the older spelling of ``flow.prepend(layers)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pushforward.core import Flow, Transform, from_spec

__all__ = ["from_spec", "wrap", "unwrap_spec"]


def wrap(flow: Flow, layers: Sequence[Transform]) -> Flow:
    """``flow.prepend(layers)``: the flow with fixed pre-processing ``layers`` on its data side.

    Args:
        flow: the flow.
        layers: transforms in generative order (data side last).

    Returns:
        The wrapped flow (see ``Flow.prepend``).
    """
    return flow.prepend(layers)


def unwrap_spec(config: dict[str, Any]) -> list[Transform]:
    """The pre-processing layers recorded in a flow config (empty if none).

    Args:
        config: a flow config (``flow.config`` or a checkpoint's ``config.json``).

    Returns:
        The layers, in generative order (data side last).

    Raises:
        ValueError: the record is not a list, or one entry is unknown or malformed.
    """
    records = config.get("preprocess", [])
    if not isinstance(records, list):
        raise ValueError("config 'preprocess' must be a list")
    return [from_spec(record) for record in records]
