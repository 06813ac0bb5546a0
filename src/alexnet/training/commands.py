"""Handlers of ``alexnet train`` and ``alexnet demo`` (argparse namespace -> run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from alexnet.training.config import ConfigError, TrainConfig, parse_override, resolve

# command-line flag (argparse dest) -> config key, for the flags that map one to one
_FLAG_KEYS = {
    "data": "data",
    "model": "model",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "out": "out",
    "device": "device",
    "amp": "amp",
    "seed": "seed",
    "schedule": "schedule",
    "label_smoothing": "label_smoothing",
    "workers": "num_workers",
    "max_steps": "max_steps",
    "time_limit": "time_limit_minutes",
    "log_every": "log_every",
    "checkpoint_every": "checkpoint_every",
    "split_devices": "split_devices",
    "crop": "crop",
}


def auto_preset(data: str | None) -> str:
    """The preset a dataset calls for: ``demo`` for the embedded data and other 33-64 px sets,
    ``cifar10`` for CIFAR-like 32 px images, ``imagenet-paper`` otherwise."""
    if data is None:
        return "demo"
    try:
        from alexnet.data.folder import open_dataset

        ds = open_dataset(data, "train", validate="none")  # lists files; decodes a handful
        side = int(ds.image_size)
    except Exception:  # the trainer reports a broken dataset properly
        return "imagenet-paper"
    if side <= 32:
        return "cifar10"
    if side <= 64:
        return "demo"
    return "imagenet-paper"


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, value = parse_override(item)
        overrides[key] = value
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    for flag, key in (("compile", "compile"), ("deterministic", "deterministic")):
        if getattr(args, flag, False):
            overrides[key] = True
    if args.channels_last is not None:
        overrides["channels_last"] = args.channels_last
    if args.no_tensorboard:
        overrides["tensorboard"] = False
    if args.no_progress:
        overrides["progress"] = False
    default = None
    if args.preset is None:
        data = overrides.get("data")
        if data is None and args.config:
            from alexnet.training.config import load_file

            data = load_file(args.config).get("data")
        default = auto_preset(data if isinstance(data, str) else None)
    return resolve(args.preset, args.config, overrides, default_preset=default)


def train_command(args: argparse.Namespace) -> int:
    from alexnet.cli import CLIError
    from alexnet.training.trainer import TrainingError, format_summary, train

    try:
        cfg = config_from_args(args)
        if cfg.data is not None and not Path(cfg.data).exists():
            raise ConfigError(f"config key 'data': dataset not found: {cfg.data}")
        result = train(cfg, resume=args.resume)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # DatasetError and friends: bad input data
        raise CLIError(str(exc)) from None
    if result.run_dir and (Path(result.run_dir) / "summary.json").exists() and _is_main():
        print(format_summary(result))
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from alexnet.cli import CLIError
    from alexnet.training.demo import run_demo
    from alexnet.training.trainer import TrainingError

    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, value = parse_override(item)
        overrides[key] = value
    if args.no_progress:
        overrides["progress"] = False
    out = Path(args.out)
    if (out / "checkpoints" / "last.pt").exists():
        if not args.force:
            raise CLIError(f"{out} already holds a run; pass --force to replace it or choose another --out")
        import shutil

        shutil.rmtree(out)
    try:
        run_demo(out, minutes=args.minutes, data=args.data, overrides=overrides)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _is_main() -> bool:
    from alexnet.training.distributed import env_info

    return env_info().is_main
