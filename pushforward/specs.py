"""One serialisation mechanism for transforms: a registry of JSON specs keyed by class.

A transform class that can be rebuilt from plain JSON registers under a name with
``@serializable("name")`` and implements ``spec()`` (its record: ``"type"`` and its
constructor's arguments, a JSON object) and, when the record is not simply its keyword
arguments, a ``from_spec`` classmethod. ``to_spec(t)`` writes ``{"type": name, **t.spec()}``;
``from_spec(record)`` rebuilds the layer. Checkpoints use it for the pre-processing layers of
any flow (``Flow.prepend``). This module is part of the core layer: it imports nothing of
pushforward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["serializable", "to_spec", "from_spec", "spec_names", "spec_name"]

T = TypeVar("T", bound=type)
_CLASSES: dict[str, type] = {}
_NAMES: dict[type, str] = {}


def serializable(name: str, *aliases: str) -> Callable[[T], T]:
    """Register a transform class under ``name`` (and older ``aliases``) for ``from_spec``.

    Args:
        name: the ``"type"`` of its records.
        *aliases: older record types that rebuild the same class.

    Returns:
        The class decorator.

    Raises:
        ValueError: another class already uses one of the names.
    """

    def decorate(cls: T) -> T:
        for key in (name, *aliases):
            previous = _CLASSES.get(key)
            if previous is not None and previous.__qualname__ != cls.__qualname__:
                raise ValueError(f"the spec name {key!r} is taken by {previous.__qualname__}")
            _CLASSES[key] = cls
        _NAMES[cls] = name
        return cls

    return decorate


def spec_names() -> list[str]:
    """The registered record types."""
    return sorted(_CLASSES)


def spec_name(cls: type) -> str:
    """The record type a registered class writes.

    Raises:
        ValueError: the class is not registered.
    """
    try:
        return _NAMES[cls]
    except KeyError:
        raise ValueError(f"{cls.__name__} is not registered with pushforward.specs") from None


def to_spec(layer: nn.Module) -> dict[str, Any]:
    """The JSON record that rebuilds ``layer``.

    Args:
        layer: an instance of a ``serializable`` class.

    Returns:
        ``{"type": name, **layer.spec()}``.

    Raises:
        ValueError: the layer's class is not registered.
    """
    name = _NAMES.get(type(layer))
    if name is None:
        raise ValueError(f"{type(layer).__name__} cannot be written to a checkpoint record: "
                         "it is not registered with pushforward.specs.serializable")
    record = {k: v for k, v in layer.spec().items() if k != "type"}
    return {"type": name, **record}


def from_spec(record: dict[str, Any]) -> nn.Module:
    """Rebuild a layer from its ``to_spec`` record.

    Args:
        record: ``{"type": name, ...}``.

    Returns:
        The layer.

    Raises:
        ValueError: unknown or malformed record.
    """
    if not isinstance(record, dict) or "type" not in record:
        raise ValueError(f"malformed pre-processing record {record!r}")
    cls = _CLASSES.get(record["type"])
    if cls is None:
        raise ValueError(f"unknown pre-processing layer {record['type']!r}")
    arguments = {k: v for k, v in record.items() if k != "type"}
    try:
        build = getattr(cls, "from_spec", None)
        return build(arguments) if callable(build) else cls(**arguments)
    except (KeyError, TypeError) as error:
        raise ValueError(f"malformed {record['type']!r} pre-processing record: {error}") \
            from None
