"""The registry of transform cases that ``test_contract.py`` runs through ``check_transform``.

Each family adds a module ``tests/cases_<family>.py`` defining ``CASES: list[Case]``; it is
discovered automatically. A case builds a transform (with a given context width) and draws inputs
from its data-side domain. ``test_contract`` also fails if a public Transform class has no case.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from pushforward.core import Transform


def gaussian(shape: Sequence[int]) -> Callable[[int, torch.Generator], Tensor]:
    """Inputs ``N(0, I)`` of the given event shape (float64)."""

    def draw(batch: int, generator: torch.Generator) -> Tensor:
        return torch.randn(batch, *shape, generator=generator, dtype=torch.float64)

    return draw


@dataclasses.dataclass
class Case:
    """One transform configuration for the contract test.

    Attributes:
        name: a readable id.
        make: builds the transform given ``context_features`` (0 = unconditional).
        shape: the data-side event shape (used by the default input sampler).
        contexts: which context widths to test (``(0,)`` for unconditional families).
        draw: samples data-side inputs; default ``N(0, I)``.
        atol: tolerance of the kit.
        perturb: add ``N(0, perturb²)`` to every parameter first, so zero-initialised layers
            are exercised.
        batch: number of points.
        ladj_reference: forwarded to ``check_transform``.
    """

    name: str
    make: Callable[[int], Transform]
    shape: Sequence[int]
    contexts: Sequence[int] = (0,)
    draw: Callable[[int, torch.Generator], Tensor] | None = None
    atol: float = 1e-7
    perturb: float = 0.1
    batch: int = 5
    ladj_reference: Callable | None = None

    def inputs(self, batch: int, generator: torch.Generator) -> Tensor:
        draw = self.draw or gaussian(self.shape)
        return draw(batch, generator)


def all_cases() -> list[Case]:
    """Every case of every ``tests/cases_*.py`` module."""
    cases: list[Case] = []
    here = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if info.name.startswith("cases_"):
            module = importlib.import_module(info.name)
            cases.extend(module.CASES)
    return cases
