"""The preset registry: presets register by name so the CLI and checkpoints can rebuild them.

``build(name, **options)`` builds one from a string; the flow remembers
``{"flow": name, "options": ...}`` in ``flow.config`` so a checkpoint can rebuild it.
Each preset declares at registration what it accepts (``accepts(name)``): ``"vectors"``
(``features=d``), ``"images"`` (``shape=(C, H, W)``), ``"sphere"`` / ``"simplex"`` (points on
the manifold, ambient ``features=n``), ``"integers"`` (integer data, a discrete flow),
``"audio"`` (waveform segments ``features=T`` whose context is always their mel spectrogram:
the vocoder) and ``"context"`` (``context=c`` makes it conditional). The CLI, the tests and
the docs read the declaration; nothing inspects signatures.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from pushforward._validation import check_int
from pushforward.core import Flow

__all__ = ["CAPABILITIES", "register", "build", "names", "config_of", "accepts", "preset"]

Preset = Callable[..., Flow]
_REGISTRY: dict[str, Preset] = {}
_ACCEPTS: dict[str, frozenset[str]] = {}

CAPABILITIES = frozenset({"vectors", "images", "sphere", "simplex", "integers", "audio",
                          "context"})
"""What a preset can declare that it accepts."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"preset option {value!r} is not JSON-serialisable")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_common(name: str, arguments: dict[str, Any]) -> None:
    """Check the options every preset shares, once for all presets.

    A bad value is refused with a message naming it (not a ``TypeError`` from deep inside a
    layer).

    Raises:
        TypeError: ``features``, ``context`` or ``transforms`` is not an integer; ``hidden`` is
            neither an integer nor a sequence of integers.
        ValueError: one of them is out of range (``features``/``transforms``/``hidden`` < 1,
            ``context`` < 0).
    """
    for option, minimum in (("features", 1), ("context", 0), ("transforms", 1)):
        if option not in arguments or (arguments[option] is None and option != "context"):
            continue  # features=None (a shape instead) and transforms=None (the default)
        check_int(arguments[option], f"{name} preset", option, minimum)
    hidden = arguments.get("hidden")
    if hidden is not None:
        widths = [hidden] if _is_int(hidden) else hidden
        if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__") or not all(
                _is_int(w) for w in widths):
            raise TypeError(f"{name} preset: hidden must be an integer or a sequence of "
                            f"integers, got {hidden!r}")
        if any(w < 1 for w in widths):
            raise ValueError(f"{name} preset: hidden widths must be >= 1, got {hidden!r}")


def register(
    name: str, accepts: Iterable[str] = ("vectors", "context")
) -> Callable[[Preset], Preset]:
    """Register a preset under ``name`` (case-insensitive); its flows record their options.

    Args:
        name: the registry key (stored lower-case; ``build`` and ``--flow`` look it up).
        accepts: what the preset accepts, from ``CAPABILITIES`` (``"vectors"``, ``"images"``,
            ``"sphere"``, ``"simplex"``, ``"integers"``, ``"context"``); read back by
            ``accepts(name)``.

    Returns:
        A decorator that registers the preset function and returns a wrapper which binds the
        call's options (defaults included) and stores them in ``flow.config``.

    Raises:
        ValueError: another preset function is already registered under ``name``, or
            ``accepts`` names an unknown capability.
    """
    declared = frozenset(accepts)
    if isinstance(accepts, str) or not declared or declared - CAPABILITIES:
        raise ValueError(f"preset {name!r}: accepts must be a non-empty collection of "
                         f"{sorted(CAPABILITIES)}, got {accepts!r}")

    def decorate(fn: Preset) -> Preset:
        signature = inspect.signature(fn)
        var_keyword = [
            p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD
        ]

        @functools.wraps(fn)
        def preset(*args: Any, embedding: nn.Module | None = None, **kwargs: Any) -> Flow:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            _check_common(name.lower(), bound.arguments)
            flow = fn(*bound.args, **bound.kwargs)
            options = dict(bound.arguments)
            for extra in var_keyword:
                options.update(options.pop(extra, {}))
            flow.config = {"flow": name.lower(), "options": _jsonable(options)}
            if embedding is not None:
                _attach_embedding(name.lower(), flow, embedding)
            return flow

        key = name.lower()
        previous = _REGISTRY.get(key)
        # The same definition imported twice (e.g. by a doctest collector) replaces itself;
        # a different function under a taken name is an error.
        if previous is not None and previous.__qualname__ != fn.__qualname__:
            raise ValueError(f"a preset named {name!r} is already registered")
        _REGISTRY[key] = preset
        _ACCEPTS[key] = declared
        preset.accepts = declared  # type: ignore[attr-defined]
        return preset

    return decorate


def _attach_embedding(name: str, flow: Flow, embedding: nn.Module) -> None:
    """Give a preset's flow a context ``embedding`` (every preset's ``embedding=`` option).

    The preset's ``context`` is then the embedding's output width; the raw context may have any
    shape the embedding takes (``(batch, 2, 5)`` for a time series), and it is checked after
    the embedding runs. The embedding is not part of ``flow.config``: a checkpoint stores its
    weights, and rebuilding the flow needs the same ``embedding=`` again.
    """
    if not isinstance(embedding, nn.Module):
        raise TypeError(f"{name} preset: embedding must be an nn.Module, got "
                        f"{type(embedding).__name__}")
    if not flow.context_features:
        raise ValueError(f"{name} preset: embedding= needs a conditional flow; give context= "
                         "the embedding's output width")
    flow.embedding = embedding
    flow.context_shape = None
    flow.context_features = flow._inner_context


def names() -> list[str]:
    """The registered preset names.

    Returns:
        The names, sorted (``build(name, ...)`` and the CLI's ``--flow`` accept each).

    Example:
        >>> import pushforward as pf
        >>> "nsf" in pf.flows.names()
        True
    """
    return sorted(_REGISTRY)


def preset(name: str) -> Preset:
    """The registered preset function called ``name`` (case-insensitive).

    Args:
        name: a name from ``names()``.

    Returns:
        The preset function (``preset(name)(**options)`` is ``build(name, **options)``).

    Raises:
        ValueError: no preset has that name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(f"unknown flow {name!r}; choose one of {', '.join(names())}") from None


def accepts(name: str) -> frozenset[str]:
    """What the preset called ``name`` declared that it accepts.

    Args:
        name: a name from ``names()``.

    Returns:
        A subset of ``CAPABILITIES``: ``"vectors"`` (``features=d``), ``"images"``
        (``shape=(C, H, W)``), ``"sphere"``, ``"simplex"``, ``"integers"``, ``"context"``.

    Raises:
        ValueError: no preset has that name.

    Example:
        >>> import pushforward as pf
        >>> sorted(pf.flows.accepts("glow"))
        ['context', 'images', 'vectors']
    """
    preset(name)
    return _ACCEPTS[name.lower()]


def build(name: str, **options: Any) -> Flow:
    """Build the preset called ``name`` (case-insensitive) with ``options``.

    Args:
        name: a name from ``names()``.
        **options: the preset's arguments (``features=``, ``context=``, ``shape=``, and its
            options; see the presets page of the documentation).

    Returns:
        The ``Flow``, with ``flow.config == {"flow": name, "options": {...}}``.

    Raises:
        ValueError: no preset has that name (the message lists the known ones).

    Example:
        >>> import pushforward as pf
        >>> flow = pf.flows.build("maf", features=2, transforms=2, hidden=(8,))
        >>> flow.config["flow"], flow.config["options"]["transforms"]
        ('maf', 2)
    """
    return preset(name)(**options)


def config_of(flow: Flow) -> dict[str, Any]:
    """The ``{"flow": name, "options": {...}}`` record of a preset-built flow.

    Args:
        flow: the flow.

    Returns:
        The record, with every option (defaults included) as JSON-compatible values.

    Raises:
        ValueError: the flow was not built by a registered preset.
    """
    config = getattr(flow, "config", None)
    if not isinstance(config, dict):
        raise ValueError(
            "this flow was not built by a registered preset, so no config can rebuild it; "
            "build it with pushforward.flows.build(name, ...) or a preset function"
        )
    return config
