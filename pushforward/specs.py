"""One serialisation mechanism: a registry of JSON records keyed by class.

A class registered with ``@serializable("name")`` records the arguments of its constructor when
an instance is built (the outermost registered ``__init__`` of the instance, defaults included),
so ``to_spec(obj)`` writes ``{"type": name, **arguments}`` and ``from_spec(record)`` calls the
constructor again with them. Argument values are written as JSON:

- ``None``, booleans, integers, strings and finite floats as themselves, tuples as lists,
  dicts with string keys as objects;
- a tensor as ``{"__tensor__": {"dtype", "shape", "values"}}`` (exact: ``tolist`` is lossless);
- a ``torch.dtype`` as ``{"__dtype__": "float64"}``, a non-finite float as
  ``{"__float__": "inf"}``;
- an instance of a registered class as ``{"__object__": record}`` (recursively: a ``Flow`` of a
  ``Chain`` of couplings of ``MLP`` conditioners);
- a module the caller supplies again at load time as ``{"__external__": label}``.

Anything else (a user's ``nn.Module`` of an unregistered class, a lambda, an activation class)
is refused by ``to_spec`` with a ``ValueError`` that names the class and the argument, so a
checkpoint fails when it is written, never when it is read. ``from_spec`` only looks classes up
in this registry and calls their constructors with JSON values: reading a record never executes
code that the record names. A class whose record is not its constructor's arguments (older
checkpoint formats) defines ``spec()`` and a ``from_spec`` classmethod instead.

This module is part of the core layer: it imports nothing of pushforward.

Example:
    >>> import json, torch
    >>> from torch import nn
    >>> @serializable("doc-scale")
    ... class Scale(nn.Module):
    ...     def __init__(self, factor: float, shape: tuple = (2,)) -> None:
    ...         super().__init__()
    ...         self.weight = nn.Parameter(torch.full(shape, factor))
    >>> record = to_spec(Scale(3.0))
    >>> record
    {'type': 'doc-scale', 'factor': 3.0, 'shape': [2]}
    >>> from_spec(json.loads(json.dumps(record))).weight.tolist()
    [3.0, 3.0]
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = ["serializable", "to_spec", "from_spec", "spec_names", "spec_name", "is_serializable"]

T = TypeVar("T", bound=type)
_CLASSES: dict[str, type] = {}
_NAMES: dict[type, str] = {}
_ARGUMENTS = "_spec_arguments"  # instance attribute: (class, arguments) of its construction
_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
    torch.int16, torch.int32, torch.int64, torch.bool)}
_FIX = ("register its class with @pushforward.specs.serializable (its constructor's "
        "arguments must be JSON values, tensors or instances of registered classes)")


def serializable(name: str | T | None = None, *aliases: str) -> Callable[[T], T] | T:
    """Register a class so its instances can be written to and rebuilt from JSON records.

    The class's ``__init__`` is wrapped to remember the arguments it was called with (bound to
    its signature, defaults included, tensors copied); nested calls through ``super()`` of other
    registered classes record nothing, so the record is the outermost constructor's. Used bare
    (``@serializable``) the record type is the class's qualified name
    ``module.QualName``.

    Args:
        name: the ``"type"`` of its records (or the class itself, when used bare).
        *aliases: older record types that rebuild the same class.

    Returns:
        The class decorator (or, used bare, the registered class).

    Raises:
        ValueError: another class already uses one of the names.

    Example:
        >>> from torch import nn
        >>> @serializable("doc-identity")
        ... class Identity(nn.Module):
        ...     def __init__(self, width: int) -> None:
        ...         super().__init__()
        >>> to_spec(Identity(3))
        {'type': 'doc-identity', 'width': 3}
    """
    if isinstance(name, type):
        return serializable(None)(name)  # type: ignore[return-value]

    def decorate(cls: T) -> T:
        key_name = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
        for key in (key_name, *aliases):
            previous = _CLASSES.get(key)
            if previous is not None and previous.__qualname__ != cls.__qualname__:
                raise ValueError(f"the spec name {key!r} is taken by {previous.__qualname__}")
            _CLASSES[key] = cls
        _NAMES[cls] = key_name
        _record_arguments(cls)
        return cls

    return decorate


def _record_arguments(cls: type) -> None:
    """Wrap ``cls.__init__`` so the outermost registered constructor records its arguments."""
    init = cls.__init__
    if getattr(init, "__spec_class__", None) is cls:
        return
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        if _ARGUMENTS in self.__dict__:  # a registered class's __init__ further out records
            init(self, *args, **kwargs)
            return
        args = tuple(list(a) if isinstance(a, Iterator) else a for a in args)
        kwargs = {k: list(v) if isinstance(v, Iterator) else v for k, v in kwargs.items()}
        self.__dict__[_ARGUMENTS] = None
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self.__dict__.pop(_ARGUMENTS, None)
            raise
        self.__dict__[_ARGUMENTS] = (cls, _bind(signature, self, args, kwargs))

    __init__.__spec_class__ = cls  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


def _bind(signature: inspect.Signature, obj: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The constructor's arguments by name (defaults included; ``**options`` spread out)."""
    bound = signature.bind(obj, *args, **kwargs)
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    for index, (key, value) in enumerate(bound.arguments.items()):
        if index == 0:
            continue  # self
        kind = signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            arguments["*"] = list(value)
        else:
            arguments[key] = value
    return {k: _frozen(v) for k, v in arguments.items()}


def _frozen(value: Any) -> Any:
    """A copy of tensors (a parameter trained in place must not change the record)."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_frozen(v) for v in value) if type(value) in (list, tuple) else value
    return value


def spec_names() -> list[str]:
    """The registered record types.

    Returns:
        The names, sorted.
    """
    return sorted(_CLASSES)


def spec_name(cls: type) -> str:
    """The record type a registered class writes.

    Args:
        cls: a registered class.

    Returns:
        Its record type.

    Raises:
        ValueError: the class is not registered.
    """
    try:
        return _NAMES[cls]
    except KeyError:
        raise ValueError(f"{cls.__name__} is not registered with pushforward.specs") from None


def is_serializable(obj: object) -> bool:
    """Whether ``to_spec(obj)`` can describe ``obj`` itself (its class is registered).

    Its arguments may still be refused (``to_spec`` says which).

    Args:
        obj: any object.

    Returns:
        True if ``type(obj)`` is registered and ``obj`` has a record.
    """
    cls = type(obj)
    if cls not in _NAMES:
        return False
    if "spec" in _own_methods(cls):
        return True
    recorded = getattr(obj, "__dict__", {}).get(_ARGUMENTS)
    return recorded is not None and recorded[0] is cls


def _own_methods(cls: type) -> set[str]:
    """``spec`` when the class (or a registered ancestor's definition it inherits) writes one."""
    spec = getattr(cls, "spec", None)
    return {"spec"} if callable(spec) else set()


class _Encoder:
    """Writes records; remembers the modules it met, so a module shared twice is refused."""

    def __init__(self, external: Mapping[int, str]) -> None:
        self.external = external
        self.seen: dict[int, str] = {}

    def record(self, obj: object, where: str) -> dict[str, Any]:
        cls = type(obj)
        name = _NAMES.get(cls)
        if name is None:
            raise ValueError(f"{where}: {cls.__name__} cannot be written to a checkpoint record; "
                             f"{_FIX}")
        if isinstance(obj, nn.Module):
            first = self.seen.setdefault(id(obj), where)
            if first != where:
                raise ValueError(f"{where}: the same {cls.__name__} also appears at {first}; a "
                                 "module shared by two places cannot be written to a checkpoint "
                                 "record (build two modules)")
        if "spec" in _own_methods(cls):
            spec = obj.spec()  # type: ignore[attr-defined]
            return {"type": name, **{k: v for k, v in spec.items() if k != "type"}}
        recorded = obj.__dict__.get(_ARGUMENTS) if hasattr(obj, "__dict__") else None
        if recorded is None or recorded[0] is not cls:
            raise ValueError(f"{where}: this {cls.__name__} has no record of its construction "
                             "(built before its class was registered?)")
        arguments = {k: self.value(v, f"{where}.{k}" if k != "*" else where)
                     for k, v in recorded[1].items()}
        return {"type": name, **arguments}

    def value(self, value: Any, where: str) -> Any:
        if id(value) in self.external and isinstance(value, nn.Module):
            return {"__external__": self.external[id(value)]}
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": str(value)}
        if isinstance(value, torch.dtype):
            return {"__dtype__": str(value).replace("torch.", "")}
        if isinstance(value, torch.Size):
            return list(value)
        if isinstance(value, Tensor):
            dtype = str(value.dtype).replace("torch.", "")
            if dtype not in _DTYPES:
                raise ValueError(f"{where}: a {dtype} tensor cannot be written to a record")
            flat = value.detach().cpu().reshape(-1)
            values = [v if math.isfinite(v) else str(v) for v in flat.tolist()] \
                if value.is_floating_point() else flat.tolist()
            return {"__tensor__": {"dtype": dtype, "shape": list(value.shape),
                                   "values": values}}
        if isinstance(value, (list, tuple)):
            return [self.value(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict):
            if not all(isinstance(k, str) and not k.startswith("__") for k in value):
                raise ValueError(f"{where}: a dict argument needs string keys not starting "
                                 "with '__'")
            return {k: self.value(v, f"{where}.{k}") for k, v in value.items()}
        if type(value) in _NAMES:
            return {"__object__": self.record(value, where)}
        what = value.__name__ if isinstance(value, type) else type(value).__name__
        hint = (" (pass an activation by its name, e.g. 'relu')" if callable(value)
                and not isinstance(value, nn.Module) else "")
        raise ValueError(f"{where} is a {what}, which a checkpoint record cannot rebuild{hint}; "
                         f"{_FIX}")


def to_spec(obj: object, external: Mapping[int, str] | None = None,
            where: str | None = None) -> dict[str, Any]:
    """The JSON record that rebuilds ``obj`` (an instance of a ``serializable`` class).

    Args:
        obj: the object, e.g. a transform, a base distribution or a whole ``Flow``.
        external: ``{id(module): label}`` for modules the caller will supply again to
            ``from_spec`` (written as ``{"__external__": label}``).
        where: the name of ``obj`` in error messages (default its class name).

    Returns:
        ``{"type": name, **arguments}``, JSON-serialisable.

    Raises:
        ValueError: ``obj``, or an object among its arguments, cannot be rebuilt from a record
            (the message names it and its class), or a module appears twice.
    """
    return _Encoder(external or {}).record(obj, where or type(obj).__name__)


def _decode(value: Any, external: Mapping[str, object]) -> Any:
    if isinstance(value, list):
        return [_decode(v, external) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__object__":
            return from_spec(inner, external)
        if tag == "__external__":
            if inner not in external:
                raise ValueError(f"the record needs the module {inner!r} to be supplied")
            return external[inner]
        if tag == "__float__":
            if inner not in ("inf", "-inf", "nan"):
                raise ValueError(f"malformed float record {inner!r}")
            return float(inner)
        if tag == "__dtype__":
            if inner not in _DTYPES:
                raise ValueError(f"unknown dtype {inner!r}")
            return _DTYPES[inner]
        if tag == "__tensor__":
            return _tensor(inner)
    return {k: _decode(v, external) for k, v in value.items()}


def _tensor(record: Any) -> Tensor:
    try:
        dtype = _DTYPES[record["dtype"]]
        shape = [int(s) for s in record["shape"]]
        values = [float(v) if isinstance(v, str) else v for v in record["values"]]
        if len(values) != math.prod(shape):
            raise ValueError(f"{len(values)} values for shape {shape}")
        return torch.tensor(values, dtype=dtype).reshape(shape)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"malformed tensor record ({error})") from None


def from_spec(record: dict[str, Any], external: Mapping[str, object] | None = None) -> Any:
    """Rebuild an object from its ``to_spec`` record.

    Only classes registered with ``serializable`` are built, with JSON-decoded arguments.

    Args:
        record: ``{"type": name, ...}``.
        external: the modules named by ``{"__external__": label}`` entries, by label.

    Returns:
        The object (its parameters freshly initialised: load a state dict into it).

    Raises:
        ValueError: unknown or malformed record, or its constructor refuses the arguments.
    """
    if not isinstance(record, dict) or "type" not in record:
        raise ValueError(f"malformed record {str(record)[:80]!r}")
    name = record["type"]
    cls = _CLASSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown record type {str(name)[:80]!r} (not a registered class)")
    arguments = {k: v for k, v in record.items() if k != "type"}
    build = cls.__dict__.get("from_spec")
    try:
        if build is not None:  # an explicit record format (spec/from_spec pair)
            return build.__get__(None, cls)(arguments)
        if "spec" in _own_methods(cls):
            return cls(**arguments)
        decoded = {k: _decode(v, external or {}) for k, v in arguments.items()}
        positional = decoded.pop("*", [])
        return cls(*positional, **decoded)
    except ValueError as error:
        reason = str(error).splitlines()[0] if str(error) else "ValueError"
        raise ValueError(f"malformed {name!r} record: {reason}") from None
    except Exception as error:  # a constructor may raise anything on forged arguments
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"malformed {name!r} record: {reason}") from None
