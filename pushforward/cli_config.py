"""Command options from a file: ``pushforward train --config FILE.json|FILE.yaml``.

Any flag of the command is also a key of the file (``batch_size`` or ``batch-size``; a flag
without a value, like ``--no-progress``, takes ``true``/``false``; ``option`` takes a mapping
``{"transforms": 8}``, ``KEY=VALUE`` strings or ``[KEY, VALUE]`` pairs). Flags given on the command
line override the file. A run's own ``config.json`` (written in every ``train`` output folder)
is also accepted: its ``"train"`` record holds the run's settings, so

    pushforward train --config runs/x/config.json --out runs/x-again

re-creates the run (with the same seed, bit for bit on the same machine and device).

The file's values become the parser's defaults (``ArgumentParser.set_defaults``) and go
through each flag's own type and choices checks, so argparse stays the only parser of flags.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "add_config_argument", "parse_args", "read_config_file"]

_PARSERS: list[argparse.ArgumentParser] = []
_SKIP = {"help", "config"}


class ConfigError(ValueError):
    """A config file that cannot be read or has a key or value the command refuses."""


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` (a subcommand's) a ``--config FILE`` option read by ``parse_args``.

    Args:
        parser: the subcommand's parser; its other options become the file's keys.
    """
    parser.add_argument("--config", metavar="FILE.json|FILE.yaml",
                        help="read the options from a JSON or YAML file (any flag is a key, "
                             "e.g. {\"flow\": \"maf\", \"steps\": 500}); flags given here "
                             "override it; a run's own config.json re-creates that run")
    _PARSERS[:] = [p for p in _PARSERS if p.prog != parser.prog] + [parser]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options a config file holds, as a flat mapping of keys to values.

    A pushforward run's ``config.json`` (a checkpoint config with a ``"train"`` record) gives
    that record.

    Args:
        path: a ``.json``, ``.yaml`` or ``.yml`` file holding one mapping.

    Returns:
        The mapping (``None`` values dropped: they mean "the default").

    Raises:
        ConfigError: no such file, an unknown extension, a syntax error, not a mapping, or
            YAML without PyYAML installed.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config: no such file: {file}")
    suffix = file.suffix.lower()
    text = file.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"--config {file}: invalid JSON ({error})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("--config: reading YAML needs PyYAML: pip install "
                              "pushforward[yaml] (or give a .json file)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            reason = str(error).replace("\n", " ")
            raise ConfigError(f"--config {file}: invalid YAML ({reason})") from None
    else:
        raise ConfigError(f"--config {file}: expected a .json, .yaml or .yml file")
    if not isinstance(data, dict):
        raise ConfigError(f"--config {file}: the file must hold a mapping of options, got "
                          f"{type(data).__name__}")
    if "format" in data and isinstance(data.get("train"), dict):  # a run's own config.json
        data = data["train"]
    return {str(key): value for key, value in data.items() if value is not None}


def _convert(action: argparse.Action, key: str, value: Any) -> Any:
    """A file value checked and converted as the command line would convert it."""
    def one(item: Any) -> Any:
        if isinstance(item, bool) and action.type is not None:
            raise ConfigError(f"--config: {key} must be a {_kind(action)}, got {item!r}")
        if action.type is None or not isinstance(item, (str, int, float)):
            return item
        try:
            return action.type(item if isinstance(item, str) else repr(item))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
            raise ConfigError(f"--config: {key}: {error}") from None

    if action.nargs == 0:  # --resume, --no-progress: a boolean
        if not isinstance(value, bool):
            raise ConfigError(f"--config: {key} is a flag without a value: give true or false, "
                              f"got {value!r}")
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction):
        items = list(value.items()) if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise ConfigError(f"--config: {key} must be a list or a mapping, got {value!r}")
        converted = []
        for item in items:
            if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str):
                converted.append(tuple(item))  # an already parsed KEY, VALUE pair
            else:
                converted.append(one(item))
        return converted
    if isinstance(value, (list, dict)):
        raise ConfigError(f"--config: {key} takes one value, got {value!r}")
    result = one(value)
    if action.choices is not None and result not in action.choices:
        raise ConfigError(f"--config: {key} must be one of {', '.join(map(str, action.choices))}"
                          f", got {value!r}")
    return result


def _kind(action: argparse.Action) -> str:
    return getattr(action.type, "__name__", "value").lstrip("_").replace("_", " ")


def _apply(parser: argparse.ArgumentParser, config: dict[str, Any],
           argv: Sequence[str]) -> None:
    actions = {a.dest: a for a in parser._actions if a.dest not in _SKIP}
    defaults: dict[str, Any] = {}
    for raw_key, value in config.items():
        key = raw_key.lstrip("-").replace("-", "_")
        if key not in actions:
            known = ", ".join(sorted(actions))
            raise ConfigError(f"--config: unknown key {raw_key!r} for `{parser.prog}`; the keys "
                              f"are the command's flags: {known}")
        defaults[key] = _convert(actions[key], raw_key, value)
    # Mutually exclusive flags (--steps / --epochs): the file may set one; a flag on the
    # command line replaces the file's choice.
    given = {a.dest for a in parser._actions for s in a.option_strings for token in argv
             if token == s or token.startswith(s + "=")}
    for group in parser._mutually_exclusive_groups:
        members = [a.dest for a in group._group_actions if a.dest in defaults]
        if len(members) > 1:
            raise ConfigError(f"--config: {' and '.join(members)} cannot both be set")
        if members and any(a.dest in given for a in group._group_actions):
            defaults.pop(members[0])
    parser.set_defaults(**defaults)


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
               ) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with a subcommand's ``--config FILE`` as its defaults.

    Args:
        parser: the program's parser (subcommands registered with ``add_config_argument``).
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed namespace: command-line flags, else the file's values, else the defaults.

    Raises:
        ConfigError: the file cannot be read, or holds an unknown key or a refused value.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        command = next((token for token in argv if not token.startswith("-")), None)
        targets = [p for p in _PARSERS if command and p.prog.split()[-1] == command]
        if targets:  # other commands refuse --config as an unknown flag, as they should
            _apply(targets[-1], read_config_file(known.config), argv)
    return parser.parse_args(argv)
