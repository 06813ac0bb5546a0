"""The ``alexnet`` command line: one argparse tree, one sub-command per task.

Each command's handler imports what it needs lazily so that ``alexnet --help`` stays
instant. Handlers return a process exit code; user-facing errors (bad input,
missing files) are raised as :class:`CLIError` and printed without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class CLIError(Exception):
    """An error caused by the user's input: printed as ``error: ...``, exit code 2."""


# --------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from alexnet.models import list_models

    rows = [(m.name, f"{m.num_params():,}", f"{m.input_size}x{m.input_size}", m.description) for m in list_models()]
    header = ("model", "parameters", "input", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print("(parameters for each model's default number of classes: 1000, or 10 for alexnet_small)")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model zoo with parameter counts")
    p.set_defaults(func=cmd_models)


# --------------------------------------------------------------------------- parser

# Each entry adds one command (or group) to the parser. Later modules append theirs here.
COMMANDS = [add_models]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton, 2012): train, evaluate, inspect, explain.",
    )
    from alexnet import __version__

    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
