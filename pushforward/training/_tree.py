"""The module tree of a model in training, walked once per ``fit`` instead of once per step.

``regularization`` and ``function_evaluations`` look at every submodule of the flow after each
step. ``nn.Module.modules()`` builds name prefixes and a memo set on every call (about 0.1 ms a
step for a small MAF on one CPU thread, a tenth of its step), so ``fit`` freezes the tree for the
length of its loop: inside ``frozen(flow)``, ``submodules(flow)`` returns the list made on entry.
Outside such a block (or for another module) it is the live ``modules()`` walk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

__all__ = ["frozen", "submodules", "attribute"]

# id(module) -> (module, its submodules in ``modules()`` order); the module is held so that its
# id cannot be reused while the entry exists
_FROZEN: dict[int, tuple[nn.Module, list[nn.Module]]] = {}


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Walk ``module``'s tree once; ``submodules(module)`` reuses that walk inside the block.

    The tree must not gain or lose submodules inside the block (``fit`` never changes it).

    Args:
        module: the model being trained.

    Returns:
        A context manager.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> with frozen(net):
        ...     len(list(submodules(net)))
        3
    """
    key = id(module)
    previous = _FROZEN.get(key)
    _FROZEN[key] = (module, list(module.modules()))
    try:
        yield
    finally:
        if previous is None:
            _FROZEN.pop(key, None)
        else:
            _FROZEN[key] = previous


def submodules(module: nn.Module) -> Iterable[nn.Module]:
    """``module.modules()``, from the walk made by an enclosing ``frozen(module)`` if any.

    Args:
        module: a model.

    Returns:
        The module and every submodule, in ``modules()`` order.
    """
    entry = _FROZEN.get(id(module))
    if entry is not None and entry[0] is module:
        return entry[1]
    return module.modules()


def attribute(module: nn.Module, name: str) -> object:
    """``getattr(module, name, None)``, cheaply when ``module`` lacks ``name``.

    ``nn.Module.__getattr__`` raises (and ``getattr`` catches) an ``AttributeError`` for every
    absent name, which costs more than the lookups done here first.

    Args:
        module: a module.
        name: an attribute, property, method, parameter, buffer or submodule name.

    Returns:
        The attribute, or None.
    """
    if (name in module.__dict__ or hasattr(type(module), name) or name in module._parameters
            or name in module._buffers or name in module._modules):
        return getattr(module, name, None)
    return None
