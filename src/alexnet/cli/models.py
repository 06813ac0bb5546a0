"""``alexnet models``: the zoo with its parameter counts."""

from __future__ import annotations

import argparse


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
