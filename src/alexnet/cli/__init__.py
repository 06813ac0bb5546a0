"""The ``alexnet`` command line: one argparse tree, one module per group of commands.

Every argparse definition, command handler and console printer lives in this package;
the library below it takes values and returns results. Each handler imports the heavy
modules it needs when it runs, so that ``alexnet --help`` stays instant.

Errors: the library raises :class:`alexnet.errors.AlexNetError` subclasses for bad input or
state; :func:`main` catches that root once and prints one ``error: ...`` line (exit code
2, or 1 for a run that failed after it started). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from alexnet.cli.analysis import add_evaluate, add_export, add_neighbors, add_predict, add_report
from alexnet.cli.data import add_data
from alexnet.cli.explore import add_explore
from alexnet.cli.models import add_models
from alexnet.cli.seeing import SEEING_COMMANDS
from alexnet.cli.train import add_demo, add_train
from alexnet.errors import AlexNetError

# Each entry adds one command (or group) to the parser, in the order `--help` lists them.
COMMANDS = [add_models, add_data, add_explore, add_train, add_demo, add_evaluate, add_report, add_neighbors,
            add_predict, add_export, *SEEING_COMMANDS]


class Parser(argparse.ArgumentParser):
    """argparse, with a bad value reported as one line (the command, the option, why, and
    where to read more) instead of the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from alexnet import __version__

    parser = Parser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton, 2012): train, evaluate, inspect, explain.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


class _Console(logging.StreamHandler):
    """Library messages as plain lines on whatever ``sys.stderr`` is now (stdout stays for
    results, e.g. ``--json``)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _show_library_messages() -> None:
    """The library reports progress through ``logging``; a command shows its INFO lines."""
    logger = logging.getLogger("alexnet")
    if not any(isinstance(h, _Console) for h in logger.handlers):
        handler = _Console()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad value: argparse has printed usage and one error line
        return int(exc.code or 0) if isinstance(exc.code, int | None) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _show_library_messages()
    try:
        return int(args.func(args) or 0)
    except AlexNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
