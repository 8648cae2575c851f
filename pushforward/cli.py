"""The ``pushforward`` command: ``train | sample | eval | check | plot | compress | datasets``.

``pushforward train`` with no arguments fits the default flow to the default 2-D dataset and
prints where its output folder is. Every error is one line on stderr with a non-zero exit code
(set ``PUSHFORWARD_DEBUG=1`` for the traceback). The command parses, calls public functions and
prints: the framework is ``cli_base`` (new subcommands register with ``command``), the shared
steps ``cli_runs``, the commands ``cli_train`` and ``cli_tools``::

    @command("check", help="...")
    def _check(parser):            # adds the arguments, returns the function that runs them
        parser.add_argument("--checkpoint", required=True)
        return run_check           # run_check(args) -> int (exit code)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from typing import Any

import pushforward.cli_tools  # noqa: F401  (registers sample, eval, check, plot, ...)
from pushforward.cli_base import COMMANDS, CommandError, Parser, command
from pushforward.cli_config import parse_args
from pushforward.cli_runs import build_flow
from pushforward.cli_train import (
    DEFAULT_BATCH,
    DEFAULT_DATASET,
    DEFAULT_FLOW,
    DEFAULT_LR,
    DEFAULT_STEPS,
)

__all__ = ["main", "command", "build_flow", "DEFAULT_DATASET", "DEFAULT_FLOW", "DEFAULT_BATCH",
           "DEFAULT_LR", "DEFAULT_STEPS"]


_ORDER = ("train", "sample", "eval", "check", "plot", "compress", "decompress", "datasets")


# -- entry point ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pushforward",
                     description="Normalizing flows: train, sample, evaluate, plot.")
    from pushforward import __version__

    parser.add_argument("--version", action="version", version=f"pushforward {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    order = [n for n in _ORDER if n in COMMANDS] + [n for n in COMMANDS if n not in _ORDER]
    for name in order:
        text, configure = COMMANDS[name]
        child = sub.add_parser(name, help=text, description=text)
        child.set_defaults(_run=configure(child))
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pushforward`` command.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, 1 (an error), 2 (a usage error) or 130 (interrupted).
    """
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _interrupt)
    except ValueError:  # not the main thread
        previous = {}
    from pushforward.training import distributed as ddp

    try:
        args = parse_args(_parser(), argv)
        return int(args._run(args))
    except CommandError as error:
        print(f"pushforward: error: {error}" if error.code != 2 else str(error),
              file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("pushforward: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help / --version
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 0
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        if os.environ.get("PUSHFORWARD_DEBUG"):
            traceback.print_exc()
        text = str(error).strip().splitlines()
        reason = text[0] if text else type(error).__name__
        if isinstance(error, FileNotFoundError) and error.filename and reason.startswith(
                "[Errno"):
            reason = f"no such file or folder: {error.filename}"
        print(f"pushforward: error: {reason}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - one line for anything unexpected
        if os.environ.get("PUSHFORWARD_DEBUG"):
            traceback.print_exc()
        text = str(error).strip().splitlines()
        print(f"pushforward: error: {type(error).__name__}: {text[0] if text else ''} "
              "(PUSHFORWARD_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ddp.shutdown()


if __name__ == "__main__":
    sys.exit(main())
