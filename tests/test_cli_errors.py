"""Every sub-command, given wrong arguments: a non-zero exit, one clear line, no traceback.

The sweep is generated from the parser itself, so a new command or option is covered the
day it is added: every numeric option gets values out of its range and junk, every path
option a path of the wrong kind, every command its required arguments left out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from alexnet.cli import _args, build_parser, main

NUMERIC_TYPES = {_args.POSITIVE: ("0", "-1", "1e3x"), _args.NON_NEGATIVE: ("-1", "x"), _args.PORT: ("0", "99999", "-")}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(((*prefix, name), sub))
                out.extend(_commands(sub, (*prefix, name)))
    return out


COMMANDS = _commands(build_parser())


def _minimal(sub: argparse.ArgumentParser, tmp: Path) -> list[str]:
    """Arguments that satisfy the parser (values of the right kind), so that one wrong value
    at a time is what the command sees."""
    args: list[str] = []
    for a in sub._actions:
        if isinstance(a, argparse._SubParsersAction) or (a.option_strings and not a.required):
            continue
        if isinstance(a, argparse._HelpAction):
            continue
        value = _good_value(a, tmp)
        args += ([a.option_strings[0]] if a.option_strings else []) + [value]
    return args


def _good_value(a: argparse.Action, tmp: Path) -> str:
    if a.choices:
        return str(next(iter(a.choices)))
    if a.type in (_args.existing_dir, _args.new_dir):
        return str(tmp)
    if a.type is _args.model_file:
        f = tmp / "model.pt"
        f.write_bytes(b"garbage")
        return str(f)
    if a.type in NUMERIC_TYPES:
        return "1"
    return str(tmp / "x")


def _cases(tmp: Path) -> list[list[str]]:
    cases: list[list[str]] = []
    a_file = tmp / "a_file"
    a_file.write_text("x")
    for path, sub in COMMANDS:
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            continue
        base = [*path, *_minimal(sub, tmp)]
        if any(a.required for a in sub._actions):
            cases.append(list(path))  # required arguments missing
        for a in sub._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction):
                continue
            flag = a.option_strings[0]
            for bad in NUMERIC_TYPES.get(a.type, ()):
                cases.append([*base, flag, bad])
            if a.type in (_args.existing_dir, _args.model_file):
                cases.append([*base, flag, str(tmp / "missing")])
            if a.type is _args.existing_dir:
                cases.append([*base, flag, str(a_file)])
            if a.type is _args.new_dir:
                cases.append([*base, flag, str(a_file)])
                cases.append([*base, flag, str(a_file / "under")])
            if a.choices:
                cases.append([*base, flag, "no-such-choice"])
    return cases


def test_the_sweep_covers_every_command(tmp_path: Path) -> None:
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"train", "demo", "evaluate", "report", "neighbors", "predict", "export", "explore", "models",
            "data prepare", "data stats", "data info", "data synth", "data download"} <= names
    assert len(_cases(tmp_path)) > 100


@pytest.mark.reliability
def test_every_command_refuses_wrong_arguments_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], figure) -> None:
    cases = _cases(tmp_path)
    bad = []
    for argv in cases:
        code = main(argv)
        out = capsys.readouterr()
        lines = [line for line in out.err.splitlines() if line.strip()]
        if code == 0 or "Traceback" in out.err + out.out or len(lines) != 1 or "error" not in lines[0]:
            bad.append((argv, code, out.err[-300:]))
    figure("wrong-argument cases tried (every sub-command)", len(cases))
    assert not bad, f"{len(bad)} of {len(cases)} cases misbehaved, e.g. {bad[:3]}"


@pytest.mark.reliability
@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--data", "/nonexistent"],
        ["explore", "--checkpoint", "/nonexistent.pt"],
        ["explore", "--checkpoint", "PLACEHOLDER", "--port", "99999"],
        ["report", "PLACEHOLDER", "--max-eval", "0"],
        ["neighbors", "--checkpoint", "PLACEHOLDER", "--index", "PLACEHOLDER", "--query", "q.jpg", "-k", "0"],
        ["neighbors", "--checkpoint", "PLACEHOLDER", "--index", "FILE", "--query", "q.jpg"],
        ["predict", "--checkpoint", "PLACEHOLDER", "-k", "-1", "x.jpg"],
        ["data", "synth", "FILE/under"],
        ["data", "download", "cifar10", "PLACEHOLDER/out", "--url", "http://[::1"],
        ["evaluate", "PLACEHOLDER"],
        ["train", "--set", "seed=1e20"],
        ["train", "--epochs", "0"],
    ],
)
def test_the_reported_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """The examples from the hostile-input review, each one line and a non-zero exit."""
    f = tmp_path / "file"
    f.write_text("x")
    argv = [a.replace("PLACEHOLDER", str(tmp_path)).replace("FILE", str(f)) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.strip()]) == 1, err
