"""MkDocs hooks for the pushforward site (``hooks:`` in ``mkdocs.yml``).

* ``on_config``: every public name (``__all__`` of ``pushforward`` and of every public
  subpackage it lists) must have a docstring, or the build fails. ``tests/test_docs.py`` calls
  :func:`missing_docstrings` directly as well.
* ``on_page_markdown``: a code fence tagged ```` ```python notest ```` (a block the docs test
  does not execute) is rendered as a plain Python block.

Constants (tuples, dicts) carry attribute docstrings (a string literal right after the
assignment); they are read statically with griffe, the same parser mkdocstrings uses.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import types
from collections.abc import Iterator
from typing import Any

_NOTEST = re.compile(r"^(?P<fence>[ \t]*(?:```|~~~)+[ \t]*python)[ \t]+notest[ \t]*$", re.M)


def public_names(root: str = "pushforward") -> Iterator[tuple[str, str, Any]]:
    """Yield ``(module, name, object)`` for every name in ``__all__``, recursively.

    A name in ``__all__`` that is itself a module of the package is walked too (once), so
    ``pushforward.transforms``, ``pushforward.training.distributed``... are all covered.
    Dunder names (``__version__``) are skipped.
    """
    seen: set[str] = set()
    pending = [importlib.import_module(root)]
    while pending:
        module = pending.pop(0)
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for name in getattr(module, "__all__", ()):
            if name.startswith("__"):
                continue
            obj = getattr(module, name)
            yield module.__name__, name, obj
            if isinstance(obj, types.ModuleType) and obj.__name__.startswith(root + "."):
                pending.append(obj)


@functools.cache
def _static(root: str) -> Any:
    import griffe

    return griffe.load(root, resolve_aliases=True, resolve_external=False)


def _attribute_docstring(module: str, name: str) -> str | None:
    import griffe

    root, _, rest = module.partition(".")
    try:
        target = _static(root)[f"{rest}.{name}" if rest else name]
    except (KeyError, griffe.AliasResolutionError):
        return None
    if getattr(target, "is_alias", False):
        target = target.final_target
    return target.docstring.value if target.docstring else None


def missing_docstrings(root: str = "pushforward") -> list[str]:
    """The public names without a docstring, as ``"module.name"`` strings."""
    missing = []
    for module, name, obj in public_names(root):
        if isinstance(obj, (types.ModuleType, type)) or inspect.isroutine(obj):
            doc = obj.__doc__  # never inherited for classes: each class documents itself
        else:
            doc = _attribute_docstring(module, name)
        if not (doc and doc.strip()):
            missing.append(f"{module}.{name}")
    return missing


def _google_example_sections() -> None:
    """Let griffe read the house style's ``Example:`` heading as an examples section.

    Griffe's Google parser knows ``Examples:`` only; otherwise ``Example:`` becomes an
    admonition whose doctest output (``[0.5, 0.25]``) is read as Markdown links.
    """
    try:
        from griffe._internal.docstrings import google
    except ImportError:  # a griffe without that module: the strict build reports the links
        return
    kinds = getattr(google, "_section_kind", None)
    if isinstance(kinds, dict) and "examples" in kinds:
        kinds.setdefault("example", kinds["examples"])


def on_config(config: Any) -> Any:
    """Fail the build when a public name has no docstring; read ``Example:`` sections."""
    from mkdocs.exceptions import PluginError

    _google_example_sections()

    missing = missing_docstrings()
    if missing:
        raise PluginError("public names without a docstring: " + ", ".join(missing))
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Render ```` ```python notest ```` fences as ordinary Python blocks."""
    return _NOTEST.sub(r"\g<fence>", markdown)


def incomplete_docstrings(root: str = "pushforward") -> list[str]:
    """Public functions and classes whose docstring lacks ``Args`` or ``Returns``.

    A parameter (other than ``self``, ``*args``, ``**kwargs``) missing from ``Args:`` (or, for a
    class, from ``Args:`` / ``Attributes:``) is reported as ``"name: no Args for p"``; a function
    whose return annotation is not None without ``Returns:`` / ``Yields:`` as
    ``"name: no Returns"``.
    """
    problems = []
    seen: set[int] = set()
    for module, name, obj in public_names(root):
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or id(obj) in seen:
            continue
        seen.add(id(obj))
        doc = inspect.cleandoc(obj.__doc__ or "")
        documented = set(re.findall(r"^ {4}\*{0,2}(\w+)(?: \(.*?\))?:", doc, re.M))
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError):
            continue
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for parameter in signature.parameters.values():
            if parameter.name == "self" or parameter.kind in skip:
                continue
            if parameter.name not in documented:
                problems.append(f"{module}.{name}: no Args for {parameter.name}")
        returns = signature.return_annotation
        if inspect.isroutine(obj) and returns not in (None, "None", inspect.Signature.empty):
            if not re.search(r"^(Returns|Yields):", doc, re.M):
                problems.append(f"{module}.{name}: no Returns")
    return problems
