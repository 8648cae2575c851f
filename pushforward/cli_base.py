"""The command framework: the subcommand registry, one-line errors, argument types, output.

A subcommand registers with ``command``: the decorated function adds its arguments to its
parser and returns the function that runs them (``run(args) -> exit code``). ``cli.py`` builds
the parser from the registry; ``cli_train.py`` and ``cli_tools.py`` hold the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Runner", "COMMANDS", "CommandError", "Parser", "command", "say", "positive_int",
           "positive_float", "option"]

Runner = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2 (usage) or 1."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (a ``CommandError``, exit code 2)."""

    def error(self, message: str) -> None:
        """Raise a one-line ``CommandError`` (exit code 2) instead of printing the usage."""
        raise CommandError(f"{self.prog}: {message} (see --help)", 2)


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], Runner]],
                                                Callable[[argparse.ArgumentParser], Runner]]:
    """Register a subcommand: the decorated function adds its arguments and returns its runner."""

    def decorate(configure: Callable[[argparse.ArgumentParser], Runner]
                 ) -> Callable[[argparse.ArgumentParser], Runner]:
        COMMANDS[name] = (help, configure)
        return configure

    return decorate


def say(*parts: object, err: bool = False) -> None:
    """Print on the main process only (stderr with ``err=True``)."""
    from pushforward.training import distributed as ddp

    if ddp.is_main():
        print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


def positive_int(text: str) -> int:
    """An argparse type: a positive integer.

    Raises:
        argparse.ArgumentTypeError: not an integer, or not positive.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a positive finite number.

    Raises:
        argparse.ArgumentTypeError: not a number, or not positive and finite.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def option(text: str) -> tuple[str, Any]:
    """An argparse type: ``KEY=VALUE`` with the value read as JSON when it parses.

    Raises:
        argparse.ArgumentTypeError: no ``=`` or a key that is not an identifier.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed
