"""``alexnet models``: the zoo, one model's layer-by-layer arithmetic, or a loaded model as it is."""

from __future__ import annotations

import argparse

from alexnet.cli._args import int_range, model_file
from alexnet.errors import UsageError


def cmd_models(args: argparse.Namespace) -> int:
    from alexnet.anatomy import anatomy, format_layers, model_anatomy
    from alexnet.models import list_models

    names = [m.name for m in list_models()]
    if args.checkpoint is not None:  # a loaded model, with the options it was trained with
        from alexnet.checkpoint import load_model
        from alexnet.runs import model_path

        if args.name is not None:
            raise UsageError("give a model NAME or --checkpoint, not both")
        model, meta = load_model(model_path(args.checkpoint))
        print(f"{args.checkpoint}: {meta.describe()}")
        if args.layers:
            print(format_layers(anatomy(model, meta.input_size, name=meta.model)))
        return 0
    if args.name is not None and args.name not in names:
        raise UsageError(f"unknown model {args.name!r}; available: {', '.join(names)}")
    if args.layers or args.name is not None:
        if args.name is None:
            raise UsageError(f"--layers needs a model NAME (one of {', '.join(names)}) or --checkpoint")
        try:
            table = model_anatomy(args.name, input_size=args.input_size)
        except (RuntimeError, ValueError) as exc:  # an input too small for the net's pooling
            raise UsageError(f"{args.name} cannot take a {args.input_size}x{args.input_size} input: {exc}") from None
        print(format_layers(table))
        return 0
    rows = [(m.name, f"{m.num_params():,}", f"{m.input_size}x{m.input_size}", m.description) for m in list_models()]
    header = ("model", "parameters", "input", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for r in [header, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print("(parameters for each model's default options and classes: 1000, or 10 for alexnet_small;\n"
          " a trained model's own: alexnet models --checkpoint RUN_OR_FILE)")
    return 0


def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="the model zoo with parameter counts; NAME --layers: the layer-by-layer arithmetic",
        description="Without arguments: the zoo. With NAME (or --layers): every layer of the model with its "
        "output shape, neurons, parameters and their formula, connections (multiply-adds per image), receptive "
        "field and stride on the input, and the totals. With --checkpoint: a trained model as it really is.",
    )
    p.add_argument("name", nargs="?", help="a model of the zoo: print its layers")
    p.add_argument("--layers", action="store_true", help="the layer-by-layer table (of NAME or of --checkpoint)")
    p.add_argument("--input-size", type=int_range(8, 1024), default=None, metavar="PX",
                   help="with NAME: the input side (default: the model's own; an option of alexnet_small only)")
    p.add_argument("--checkpoint", type=model_file, default=None, help="a trained model file or run directory")
    p.set_defaults(func=cmd_models)
