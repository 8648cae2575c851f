"""Bridges to other libraries, each an optional extra imported on first use.

``pushforward.integrations.sbi`` — pushforward flows as sbi density estimators
(``pip install pushforward[sbi]``). Importing this package never imports the other library;
``pf.integrations.sbi`` does, and says how to install it when it is missing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["sbi"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
