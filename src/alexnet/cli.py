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


# --------------------------------------------------------------------------- data
# `alexnet data <sub>`: one group; each entry of DATA_COMMANDS registers one sub-command
# on the group's sub-parsers object (append yours there).


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from alexnet.data.folder import DatasetError
    from alexnet.data.prepared import prepare_dataset

    try:
        prepare_dataset(
            args.src,
            args.out,
            size=args.size,
            fmt=args.format,
            quality=args.quality,
            workers=args.workers,
            shard_size=args.shard_size,
            split=args.split,
            compute_statistics=not args.no_stats,
        )
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    return 0


def add_data_prepare(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "prepare",
        help="convert a folder dataset to the fast prepared format (SxS images in shards + index)",
        description="Resize every image (shorter side to S, central SxS patch, as in the paper), pack "
        "them into a few large shard files with a JSON index (checksums, classes, counts) and store "
        "the mean image and RGB PCA of the training split. Interrupt and rerun to resume.",
    )
    p.add_argument("src", help="folder dataset: ImageNet layout (train/, val/), ILSVRC val, or class folders")
    p.add_argument("out", help="output directory of the prepared dataset")
    p.add_argument("--size", type=int, default=256, help="stored side S (default 256, the paper's)")
    p.add_argument("--format", choices=("jpeg", "raw"), default="jpeg", help="JPEG (small) or raw uint8 (fastest)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shard-size", type=int, default=None, help="images per shard (default: about 1 GiB per shard)")
    p.add_argument("--split", action="append", default=None, help="only these splits (repeatable; default: all found)")
    p.add_argument("--no-stats", action="store_true", help="skip the mean image / PCA statistics")
    p.set_defaults(func=cmd_data_prepare)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from alexnet.data.folder import DatasetError
    from alexnet.data.prepared import stats_command

    try:
        stats_command(args.dir, split=args.split, max_images=args.max_images)
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    return 0


def add_data_stats(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("stats", help="compute and store the mean image and RGB PCA of a dataset's training split")
    p.add_argument("dir", help="prepared dataset or folder dataset")
    p.add_argument("--split", default="train")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images (default: all)")
    p.set_defaults(func=cmd_data_stats)


def cmd_data_info(args: argparse.Namespace) -> int:
    from alexnet.data.folder import DatasetError
    from alexnet.data.prepared import info_command

    try:
        info_command(args.dir, verify=args.verify)
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    return 0


def add_data_info(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("info", help="print a dataset's splits, counts, classes and statistics")
    p.add_argument("dir", help="prepared dataset or folder dataset")
    p.add_argument("--verify", action="store_true", help="verify every shard's sha256 checksum")
    p.set_defaults(func=cmd_data_info)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from alexnet.data.synth import synth_command

    options = dict(seed=args.seed, num_classes=args.classes, train_per_class=args.train_per_class,
                   val_per_class=args.val_per_class, size=args.size, workers=args.workers)
    synth_command(args.out, **{k: v for k, v in options.items() if v is not None})
    return 0


def add_data_synth(dsub: argparse._SubParsersAction) -> None:
    # Defaults live in alexnet.data.synth (not imported here: it would slow every command).
    p = dsub.add_parser(
        "synth",
        help="generate the embedded dataset: procedurally drawn objects, ImageNet folder layout",
        description="Write OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg: one drawn object per "
        "image whose shape is the class, with colour, texture, pose, clutter and noise drawn "
        "independently of the class. Deterministic: the same seed gives identical files.",
    )
    p.add_argument("out", help="output directory (new or empty)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--classes", type=int, default=None, help="number of classes, 2..24 (default 20)")
    p.add_argument("--train-per-class", type=int, default=None, help="default 500")
    p.add_argument("--val-per-class", type=int, default=None, help="default 50")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 64)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.set_defaults(func=cmd_data_synth)


def cmd_data_download(args: argparse.Namespace) -> int:
    from alexnet.data.download import DownloadError, download_dataset

    try:
        download_dataset(args.dataset, args.out, variant=args.variant, url=args.url, md5=args.md5,
                         verify=not args.no_verify, cache_dir=args.cache, keep_archive=args.keep_archive)
    except DownloadError as exc:
        raise CLIError(str(exc)) from exc
    return 0


def add_data_download(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "download",
        help="download CIFAR-10 or Imagenette (verified, resumable) into the folder layout",
        description="Fetch the official archive (resuming a partial download), verify its published "
        "MD5, unpack it safely to OUT/train/<class>/ and OUT/val/<class>/. Mirrors: --url or "
        "ALEXNET_CIFAR10_URL / ALEXNET_IMAGENETTE_URL.",
    )
    p.add_argument("dataset", choices=("cifar10", "imagenette"))
    p.add_argument("out", help="output directory (new or empty)")
    p.add_argument("--variant", default=None, help="imagenette: 160, 320 (default) or full")
    p.add_argument("--url", default=None, help="download from this address instead (a mirror)")
    p.add_argument("--md5", default=None, help="expected MD5 when a mirror serves a different file")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check")
    p.add_argument("--cache", default=None, help="where archives are kept while downloading "
                   "(default: ~/.cache/alexnet/downloads or $ALEXNET_DATA/downloads)")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive after unpacking")
    p.set_defaults(func=cmd_data_download)


# Each entry takes the `data` group's sub-parsers object and adds one sub-command.
DATA_COMMANDS = [add_data_prepare, add_data_stats, add_data_info, add_data_synth, add_data_download]


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: prepare, statistics, info, synthetic data, downloads")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for add in DATA_COMMANDS:
        add(dsub)
    p.set_defaults(func=lambda args: p.print_help() or 0)


# --------------------------------------------------------------------------- explore


def cmd_explore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alexnet.checkpoint import CheckpointError

    if not Path(args.checkpoint).is_file():
        raise CLIError(f"checkpoint not found: {args.checkpoint}")
    if args.data is not None and not Path(args.data).is_dir():
        raise CLIError(f"dataset folder not found: {args.data}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can use the explorer", file=sys.stderr)
    import socket

    try:  # a clear message now rather than a uvicorn traceback after the model has loaded
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another --port") from None
    from alexnet.explorer import serve

    try:
        serve(
            args.checkpoint,
            args.data,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            gallery_size=args.gallery,
            index_size=args.index_size,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            max_upload_pixels=int(args.max_upload_mp * 1_000_000),
            device=args.device,
        )
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    return 0


def add_explore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore",
        help="serve the interactive explorer (the deep learning revolution, computed live) for a checkpoint",
        description="A web page that shows what the checkpoint's network computes: layer-by-layer "
        "activations of an image, the ImageNet error timeline, revealing the depth one layer at a "
        "time up to the top-5 labels, conv1 kernels and fc7 nearest neighbours. JSON API at /docs.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt), safetensors export or torchvision weights")
    p.add_argument("--data", default=None, help="dataset folder (val/ for the gallery, train/ for neighbours; "
                   "default: the run's config.json 'data', if any)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gallery", type=int, default=24, help="gallery images (default 24, classes in turn)")
    p.add_argument("--index-size", type=int, default=2000, help="training images indexed for neighbours (default 2000)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="upload size limit in MiB (default 8)")
    p.add_argument("--max-upload-mp", type=float, default=16.0, help="upload pixel limit in megapixels (default 16)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_explore)


# --------------------------------------------------------------------------- train, demo


def cmd_train(args: argparse.Namespace) -> int:
    from alexnet.training.commands import train_command

    return train_command(args)


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
    p.add_argument("--preset", default=None, help="imagenet-paper, cifar10 or demo")
    p.add_argument("--data", default=None, help="dataset directory (default: the embedded dataset)")
    p.add_argument("--model", default=None, help="alexnet, alexnet_owt or alexnet_small")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="per process (paper: 128)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (paper: 0.01)")
    p.add_argument("--schedule", default=None, help="plateau (paper), step, cosine, onecycle, constant")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--crop", type=int, default=None, help="network input side (default: the model's)")
    p.add_argument("--out", default=None, help="run directory (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--amp", default=None, choices=("auto", "bf16", "none"), help="autocast (auto: bf16 where the hardware has it natively)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--split-devices", default=None, help="the paper's two-device split, e.g. cuda:0,cuda:1")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (exact resume)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--time-limit", type=float, default=None, help="stop cleanly after this many minutes")
    p.add_argument("--log-every", type=int, default=None, help="steps between metric lines")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between mid-epoch checkpoints")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key (repeatable)")
    p.set_defaults(func=cmd_train)


def cmd_demo(args: argparse.Namespace) -> int:
    from alexnet.training.commands import demo_command

    return demo_command(args)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: generate the embedded dataset, train the small AlexNet, evaluate, report",
        description="Generates the embedded dataset if missing, trains alexnet_small on it on the CPU "
        "for a few minutes, evaluates it, writes the run directory with its report and prints how "
        "to open the explorer on the checkpoint.",
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--minutes", type=float, default=8.0,
                   help="time budget for training and evaluation (default 8; data generation adds ~15 s)")
    p.add_argument("--data", default=None, help="dataset instead of the embedded one")
    p.add_argument("--force", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=cmd_demo)


# --------------------------------------------------------------------------- evaluation and analysis
# Handlers live in alexnet.analysis.commands (imported lazily).


def _analysis(name: str):
    def run(args: argparse.Namespace) -> int:
        from alexnet.analysis import commands

        return getattr(commands, name)(args)

    return run


def _common(p: argparse.ArgumentParser, batch: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    if batch:
        p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
        p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error, per-class accuracy and confusion matrix of a checkpoint or ensemble",
        description="Evaluate a checkpoint (ours, a safetensors export or torchvision alexnet weights) on a "
        "dataset split: centre crop or the paper's ten crops (softmax averaged over the patches); "
        "--ensemble averages the softmax over several models, as the paper's 5-CNN result.",
    )
    p.add_argument("--checkpoint", required=True, help="model file (.pt checkpoint, .safetensors, torchvision .pth)")
    p.add_argument("--data", required=True, help="dataset: prepared, ImageNet layout (class folders or ILSVRC val), class folders")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: corners + centre, mirrored")
    p.add_argument("--ensemble", nargs="+", metavar="CK", help="more checkpoints to average with --checkpoint")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT ('-': stdout only)")
    p.add_argument("--show-classes", type=int, default=20, help="per-class rows in the table (default 20: worst and best)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(p)
    p.set_defaults(func=_analysis("cmd_evaluate"))


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report of a run: curves, conv1 kernels, retrieval, top-5, confusion, ImageNet timeline",
        description="Writes RUN_DIR/report/report.html (self-contained, figures embedded) and the PNG figures.",
    )
    p.add_argument("run_dir", help="a training run directory (with checkpoints/ and metrics.jsonl)")
    p.add_argument("--data", default=None, help="dataset (default: the one in the run's config.json)")
    p.add_argument("--max-eval", type=int, default=None, help="validate on at most this many images")
    p.add_argument("--max-index", type=int, default=5000, help="training images indexed for retrieval (default 5000)")
    _common(p)
    p.set_defaults(func=_analysis("cmd_report"))


def add_neighbors(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neighbors",
        help="nearest images by fc7 activations (exact, or fast binary codes), with a reusable index",
        description="Finds the images of a dataset closest to each query in fc7 space (the paper's Figure 4). "
        "The first run with --data builds the index in --index DIR; later runs reuse it.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--index", required=True, help="directory of the feature index (created if missing)")
    p.add_argument("--query", required=True, nargs="+", help="query image file(s)")
    p.add_argument("-k", type=int, default=6, help="neighbours per query (default 6, as in the paper)")
    p.add_argument("--data", default=None, help="dataset to index when --index holds none")
    p.add_argument("--split", default="train", help="split to index (default train)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from --data")
    p.add_argument("--limit", type=int, default=None, help="index at most this many images (evenly spaced)")
    p.add_argument("--bits", type=int, default=256, help="binary code length (default 256; 0: none)")
    p.add_argument("--binary", action="store_true", help="search by Hamming distance of the binary codes")
    p.add_argument("--rerank", type=int, default=0, help="with --binary: re-rank the best R*k exactly")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    _common(p)
    p.set_defaults(func=_analysis("cmd_neighbors"))


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-5 labels with probabilities for image files")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("-k", type=int, default=5, help="labels per image (default 5)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: the paper's ten patches")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    _common(p, batch=False)
    p.set_defaults(func=_analysis("cmd_predict"))


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model as safetensors, ONNX or TorchScript (checked against PyTorch)",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", required=True, choices=("safetensors", "onnx", "torchscript"))
    p.add_argument("--output", required=True, help="output file")
    p.add_argument("--no-verify", action="store_true", help="skip comparing the export's outputs with PyTorch")
    p.set_defaults(func=_analysis("cmd_export"))


# --------------------------------------------------------------------------- parser

# Each entry adds one command (or group) to the parser. Later modules append theirs here.
COMMANDS = [add_models, add_data, add_explore, add_train, add_demo, add_evaluate, add_report, add_neighbors, add_predict, add_export]


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
