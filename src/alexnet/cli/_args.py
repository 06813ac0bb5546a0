"""What every command's arguments share: value types that check ranges and kinds of paths
(argparse prints one ``error:`` line for a bad value, never a traceback), the common options,
and the console printers more than one command uses."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alexnet.errors import UsageError

# --------------------------------------------------------------------------- value types


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for integers in ``[lo, hi]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is outside {_bounds(lo, hi)}")
        return value

    parse.__name__ = "integer"  # what argparse names in "invalid integer value"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for finite floats in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = lo is not None and (value <= lo if open_lo else value < lo)
        if not math.isfinite(value) or too_low or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{text} is outside {'(' if open_lo else '['}{lo}, {hi}]")
        return value

    parse.__name__ = "number"
    return parse


def _bounds(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"{lo}..{hi}"


POSITIVE = int_range(1)
NON_NEGATIVE = int_range(0)
PORT = int_range(1, 65535)


def existing_dir(text: str) -> str:
    """An argparse ``type``: a path that must be an existing directory."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a directory is needed, this is a {_kind(path)}")
    return text


def model_file(text: str) -> str:
    """An argparse ``type``: an existing model file or run directory."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"checkpoint not found: {text}")
    return text


def new_dir(text: str) -> str:
    """An argparse ``type``: an output directory: absent, or a directory (never a file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: an output directory is needed, this is a {_kind(path)}")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a {_kind(parent)}, not a directory")
            break
    return text


def _kind(path: Path) -> str:
    return "directory" if path.is_dir() else "file" if path.is_file() else "special file"


# --------------------------------------------------------------------------- common options


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help="auto (CUDA if available), cpu, cuda, cuda:1, ...")


def add_batching(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=POSITIVE, default=128, help="images per forward pass (default 128)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=None, help="decoding processes (default: one per core)")


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict (later items win)."""
    from alexnet.training.config import parse_override

    out: dict[str, Any] = {}
    for item in items or []:
        key, value = parse_override(item)
        out[key] = value
    return out


# --------------------------------------------------------------------------- printers


def write_json(doc: Any, target: str) -> None:
    """``doc`` as indented JSON to a file, or to stdout for ``-``."""
    text = json.dumps(doc, indent=1) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc}") from None


def warn(message: str) -> None:
    """One line on stderr."""
    print(message, file=sys.stderr)
