"""Draft for the lead: ``alexnet models NAME --layers``, ready to paste into the CLI package.

Not imported by anything; the CLI owner wires it. Two pieces:

* :func:`add_layers_options` adds ``NAME`` (optional) and ``--layers`` / ``--input-size``
  to the existing ``models`` sub-parser;
* :func:`cmd_models_layers` prints the anatomy table when ``--layers`` is given and
  returns ``None`` otherwise, so ``cmd_models`` can fall through to its zoo listing::

      def cmd_models(args):
          code = cmd_models_layers(args)
          if code is not None:
              return code
          ...  # the existing listing

Errors are raised as the CLI's ``CLIError`` (passed in, to keep this file free of an
import from the package that is being moved).
"""

from __future__ import annotations

import argparse


def add_layers_options(p: argparse.ArgumentParser) -> None:
    """The ``models`` sub-command's anatomy options."""
    p.add_argument("name", nargs="?", help="a model of the zoo; with --layers: its layer-by-layer arithmetic")
    p.add_argument(
        "--layers",
        action="store_true",
        help="print every layer of NAME: output shape, neurons, parameters with their formula, "
        "connections (multiply-adds per image), receptive field and stride on the input, totals",
    )
    p.add_argument(
        "--input-size", type=int, default=None, metavar="PX",
        help="with --layers: the input side (default: the model's own; an option only for alexnet_small)",
    )


def cmd_models_layers(args: argparse.Namespace, error: type[Exception] = ValueError) -> int | None:
    """Print the anatomy table of ``args.name`` when ``--layers`` was given; None otherwise."""
    if not getattr(args, "layers", False):
        if getattr(args, "name", None):
            raise error("give --layers to see a model's layers (alexnet models NAME --layers)")
        return None
    from alexnet.anatomy import format_layers, model_anatomy
    from alexnet.models import list_models

    names = [m.name for m in list_models()]
    if not args.name:
        raise error(f"--layers needs a model name: one of {', '.join(names)}")
    if args.name not in names:
        raise error(f"unknown model {args.name!r}; available: {', '.join(names)}")
    if args.input_size is not None and not 8 <= args.input_size <= 1024:
        raise error(f"--input-size must be between 8 and 1024, got {args.input_size}")
    try:
        table = model_anatomy(args.name, input_size=args.input_size)
    except (RuntimeError, ValueError) as exc:  # e.g. an input too small or fixed for the net
        raise error(f"{args.name} cannot take a {args.input_size}x{args.input_size} input: {exc}") from None
    print(format_layers(table))
    return 0
