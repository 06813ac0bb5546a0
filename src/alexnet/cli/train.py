"""``alexnet train`` and ``alexnet demo``: command-line values -> a validated configuration -> a run."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from alexnet.cli._args import NON_NEGATIVE, POSITIVE, existing_dir, float_range, new_dir, parse_sets
from alexnet.errors import UsageError

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
    "compile_mode": "compile_mode",
}


def auto_preset(data: str | None) -> str:
    """The preset a dataset calls for: ``demo`` for the embedded data and other 33-64 px sets,
    ``cifar10`` for CIFAR-like 32 px images, ``imagenet-paper`` otherwise."""
    if data is None:
        return "demo"
    from alexnet.data import open_dataset
    from alexnet.errors import AlexNetError

    try:
        side = int(open_dataset(data, "train", validate="none").image_size)  # lists files; decodes a handful
    except AlexNetError:  # the trainer reports a broken dataset properly
        return "imagenet-paper"
    if side <= 32:
        return "cifar10"
    if side <= 64:
        return "demo"
    return "imagenet-paper"


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command-line flags set (only those given)."""
    flags: dict[str, Any] = {}
    for dest, key in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flags[key] = value
    for flag in ("compile", "deterministic"):
        if getattr(args, flag, False):
            flags[flag] = True
    if args.channels_last is not None:
        flags["channels_last"] = args.channels_last
    if args.no_tensorboard:
        flags["tensorboard"] = False
    if args.no_progress:
        flags["progress"] = False
    return flags


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's configuration, in the documented order: preset < --config file < flags < --set."""
    from alexnet.training.config import resolve

    return resolve(args.preset, args.config, flag_values(args), default_preset=auto_preset, sets=parse_sets(args.set))


def cmd_train(args: argparse.Namespace) -> int:
    from alexnet.errors import ConfigError
    from alexnet.training.distributed import env_info
    from alexnet.training.trainer import format_summary, train

    cfg = config_from_args(args)
    if cfg.data is not None and not Path(cfg.data).exists():
        raise ConfigError(f"config key 'data': dataset not found: {cfg.data}")
    result = train(cfg, resume=args.resume, allow_changes=args.allow_changes)
    if result.run_dir and (Path(result.run_dir) / "summary.json").exists() and env_info().is_main:
        print(format_summary(result))
    return 0


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model of the zoo (the paper's recipe by default); torchrun for many processes",
        description="Train on a folder, prepared or embedded dataset. Settings: preset < --config file "
        "(TOML/YAML) < flags < --set key=value. Without --preset the dataset picks one: 'cifar10' for "
        "32 px images, 'demo' for the embedded 64 px data, 'imagenet-paper' otherwise. Many processes: "
        "torchrun --nproc-per-node N -m alexnet train ... (--batch-size is per process; the global "
        "batch is N times it, the learning rate is used as given).",
    )
    p.add_argument("--config", default=None, help="TOML or YAML file of config keys")
    p.add_argument("--preset", default=None, help="imagenet-paper, cifar10 (alexnet_fast), cifar10-small or demo")
    p.add_argument("--data", default=None, type=existing_dir, help="dataset directory (default: the embedded dataset)")
    p.add_argument("--model", default=None, help="alexnet, alexnet_owt, alexnet_small or alexnet_fast")
    p.add_argument("--epochs", type=POSITIVE, default=None)
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="per process (paper: 128)")
    p.add_argument("--lr", type=float_range(0, open_lo=True), default=None, help="learning rate (paper: 0.01)")
    p.add_argument("--schedule", default=None, help="plateau (paper), step, cosine, onecycle, constant")
    p.add_argument("--label-smoothing", type=float_range(0, 1), default=None)
    p.add_argument("--crop", type=POSITIVE, default=None, help="network input side (default: the model's)")
    p.add_argument("--out", type=new_dir, default=None, help="run directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(refused if a setting that changes the result differs from the run's)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: go on although settings differ (recorded in the run's config.json)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--amp", default=None, choices=("auto", "bf16", "none"), help="autocast (auto: bf16 where the hardware has it natively)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="with --compile: reduce-overhead captures CUDA graphs on a GPU")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--split-devices", default=None, help="the paper's two-device split, e.g. cuda:0,cuda:1")
    p.add_argument("--seed", type=NON_NEGATIVE, default=None)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (exact resume)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=None, help="data loader processes")
    p.add_argument("--max-steps", type=POSITIVE, default=None, help="stop after this many steps")
    p.add_argument("--time-limit", type=float_range(0, open_lo=True), default=None, help="stop cleanly after this many minutes")
    p.add_argument("--log-every", type=POSITIVE, default=None, help="steps between metric lines")
    p.add_argument("--checkpoint-every", type=NON_NEGATIVE, default=None, help="steps between mid-epoch checkpoints")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key (repeatable; wins over the flags)")
    p.set_defaults(func=cmd_train)


def cmd_demo(args: argparse.Namespace) -> int:
    from alexnet.demo import run_demo
    from alexnet.training.trainer import describe_progress

    overrides = parse_sets(args.set)
    if args.no_progress:
        overrides["progress"] = False
    out = Path(args.out)
    if (out / "checkpoints" / "last.pt").exists():
        if not args.force:
            raise UsageError(f"{out} already holds a run; pass --force to replace it or choose another --out")
        shutil.rmtree(out)
    demo = run_demo(out, minutes=args.minutes, data=args.data, overrides=overrides)
    result = demo.train
    print()
    if result.val_top1 is not None:
        print(f"val top-1: {result.val_top1:.1%}  top-5: {result.val_top5:.1%}")
    replanned = (f" (first planned {demo.first_planned_epochs}, re-planned from the measured time)"
                 if result.planned_epochs != demo.first_planned_epochs else "")
    print(f"training {describe_progress(result)}{replanned}: {result.step} steps, "
          f"{result.images_per_s:,.0f} images/s; {result.num_classes} classes, chance {1 / max(result.num_classes, 1):.1%}")
    print(f"time: data {demo.data_seconds:.0f} s, training {result.elapsed_s / 60:.1f} min, "
          f"total {demo.total_seconds / 60:.1f} min")
    print(f"run directory: {result.run_dir}")
    if demo.report is not None:
        print(f"report: {demo.report}")
    print(f"explore it:  alexnet explore --checkpoint {demo.checkpoint} --data {demo.data}")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: generate the embedded dataset, train the small AlexNet, evaluate, report",
        description="Generates the embedded dataset if missing, trains alexnet_small on it on the CPU "
        "for a few minutes, evaluates it, writes the run directory with its report and prints how "
        "to open the explorer on the checkpoint.",
    )
    p.add_argument("--out", type=new_dir, default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--minutes", type=float_range(0, 24 * 60, open_lo=True), default=8.0,
                   help="time budget for training and evaluation (default 8; data generation adds ~15 s)")
    p.add_argument("--data", default=None, type=existing_dir, help="dataset instead of the embedded one")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=cmd_demo)
