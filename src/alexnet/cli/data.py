"""``alexnet data prepare | stats | info | synth | download``."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from alexnet.cli._args import NON_NEGATIVE, POSITIVE, existing_dir, int_range, new_dir

if TYPE_CHECKING:
    from alexnet.data.stats import DatasetStats


def cmd_prepare(args: argparse.Namespace) -> int:
    from alexnet.data.prepared import prepare_dataset

    t0 = time.perf_counter()
    index = prepare_dataset(
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
    counts = ", ".join(f"{s} {v['count']}" for s, v in index["splits"].items())
    print(f"prepared {counts} images ({index['encoding']}, {index['image_size']}x{index['image_size']}) "
          f"in {time.perf_counter() - t0:.1f} s -> {args.out}")
    n_bad = sum(len(v["bad_files"]) for v in index["splits"].values())
    if n_bad:
        print(f"{n_bad} bad source files skipped (listed in {args.out}/index.json):")
        for s, v in index["splits"].items():
            for path, reason in v["bad_files"][:20]:
                print(f"  [{s}] {path}: {reason}")
    return 0


def add_prepare(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "prepare",
        help="convert a folder dataset to the fast prepared format (SxS images in shards + index)",
        description="Resize every image (shorter side to S, central SxS patch, as in the paper), pack "
        "them into a few large shard files with a JSON index (checksums, classes, counts) and store "
        "the mean image and RGB PCA of the training split. Interrupt and rerun to resume.",
    )
    p.add_argument("src", type=existing_dir, help="folder dataset: ImageNet layout (train/, val/), ILSVRC val, or class folders")
    p.add_argument("out", type=new_dir, help="output directory of the prepared dataset")
    p.add_argument("--size", type=int_range(8, 4096), default=256, help="stored side S (default 256, the paper's)")
    p.add_argument("--format", choices=("jpeg", "raw"), default="jpeg", help="JPEG (small) or raw uint8 (fastest)")
    p.add_argument("--quality", type=int_range(1, 100), default=90, help="JPEG quality (default 90)")
    p.add_argument("--workers", type=POSITIVE, default=None, help="processes (default: all cores)")
    p.add_argument("--shard-size", type=POSITIVE, default=None, help="images per shard (default: about 1 GiB per shard)")
    p.add_argument("--split", action="append", default=None, help="only these splits (repeatable; default: all found)")
    p.add_argument("--no-stats", action="store_true", help="skip the mean image / PCA statistics")
    p.set_defaults(func=cmd_prepare)


def format_stats(stats: DatasetStats) -> str:
    """The statistics as ``data stats`` and ``data info`` print them."""
    f = lambda t: "[" + ", ".join(f"{v:.4g}" for v in t.tolist()) + "]"  # noqa: E731
    mean_image = "x".join(map(str, stats.mean_image.shape[-2:])) if stats.mean_image is not None else "none"
    lines = [
        f"  channel mean (0..255): {f(stats.mean)}   std: {f(stats.std)}",
        f"  RGB PCA eigenvalues (0..1 scale): {f(stats.eigval)}",
        "  eigenvectors (columns): " + "; ".join(f(r) for r in stats.eigvec),
        f"  mean image: {mean_image}, from {stats.count} images" + (" (ImageNet fallback constants)" if stats.count == 0 else ""),
    ]
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    from alexnet.data.dataset import store_stats
    from alexnet.data.stats import STATS_FILE

    t0 = time.perf_counter()
    stats = store_stats(args.dir, split=args.split, max_images=args.max_images)
    print(f"statistics of {stats.count} {args.split} images ({time.perf_counter() - t0:.1f} s) -> {args.dir}/{STATS_FILE}")
    print(format_stats(stats))
    return 0


def add_stats(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("stats", help="compute and store the mean image and RGB PCA of a dataset's training split")
    p.add_argument("dir", type=existing_dir, help="prepared dataset or folder dataset")
    p.add_argument("--split", default="train")
    p.add_argument("--max-images", type=POSITIVE, default=None, help="use at most this many images (default: all)")
    p.set_defaults(func=cmd_stats)


def cmd_info(args: argparse.Namespace) -> int:
    import sys

    from alexnet.data.dataset import describe_dataset
    from alexnet.errors import DatasetError
    from alexnet.runs import RunPaths, run_data

    if (run := RunPaths.of(args.dir)) is not None:
        data = run_data(run.root)
        if data is None:
            raise DatasetError(f"{args.dir} is a training run directory, not a dataset, and the dataset it was "
                               f"trained on is not found")
        print(f"{args.dir} is a training run directory, not a dataset; it was trained on {data}:")
        args.dir = str(data)
    info = describe_dataset(args.dir, verify=args.verify, progress=args.verify and sys.stderr.isatty())
    print(f"{info.root}: {info.kind} dataset" + (f", {info.encoding}" if info.encoding else ""))
    for s in info.splits:
        ds, counts = s.dataset, s.per_class
        extra = f", {s.shards} shards, {s.megabytes:.1f} MiB" if s.shards else ""
        extra += f", {s.verified}" if s.verified else ""
        print(
            f"  {s.name or '(all)'}: {len(ds)} images, {len(ds.classes)} classes "
            f"({min(counts, default=0)}..{max(counts, default=0)} per class), "
            f"S={ds.image_size}{extra}, {len(ds.bad_files)} bad files"
        )
        if s.size_note:
            print(f"    size: {s.size_note}")
        for p, r in ds.bad_files[:10]:
            print(f"    bad: {p}: {r}")
    if not info.splits:
        return 0
    first = info.splits[0].dataset
    shown = ", ".join(f"{c} ({n})" if c != n else c for c, n in zip(first.classes[:8], first.class_names[:8], strict=True))
    print(f"  classes: {shown}{', ...' if len(first.classes) > 8 else ''}")
    where = f"stored in {info.stats_path}" if info.stats is not None else "not stored (run `alexnet data stats`)"
    print(f"  statistics: {where}")
    if info.stats is not None:
        print(format_stats(info.stats))
    return 0


def add_info(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("info", help="print a dataset's splits, counts, classes and statistics")
    p.add_argument("dir", type=existing_dir, help="prepared dataset or folder dataset")
    p.add_argument("--verify", action="store_true",
                   help="prepared: check every shard's sha256 checksum; folder: decode every file")
    p.set_defaults(func=cmd_info)


def cmd_synth(args: argparse.Namespace) -> int:
    from alexnet.data import synth

    options = {"num_classes": args.classes, "train_per_class": args.train_per_class,
               "val_per_class": args.val_per_class, "size": args.size}
    options = {k: v for k, v in options.items() if v is not None}
    t0 = time.perf_counter()
    synth.generate(args.out, args.seed, workers=args.workers, progress=True, **options)
    n = options.get("num_classes", synth.DEFAULT_CLASSES)
    train = options.get("train_per_class", synth.DEFAULT_TRAIN_PER_CLASS)
    val = options.get("val_per_class", synth.DEFAULT_VAL_PER_CLASS)
    size = options.get("size", synth.DEFAULT_SIZE)
    print(f"wrote {n * (train + val)} images ({n} classes, {train} train + {val} val each, "
          f"{size}x{size} px) to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def add_synth(dsub: argparse._SubParsersAction) -> None:
    # Defaults live in alexnet.data.synth (not imported here: it would slow every command).
    p = dsub.add_parser(
        "synth",
        help="generate the embedded dataset: procedurally drawn objects, ImageNet folder layout",
        description="Write OUT/train/<class>/*.jpg and OUT/val/<class>/*.jpg: one drawn object per "
        "image whose shape is the class, with colour, texture, pose, clutter and noise drawn "
        "independently of the class. Deterministic: the same seed gives identical files.",
    )
    p.add_argument("out", type=new_dir, help="output directory (new or empty)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="default 0")
    p.add_argument("--classes", type=int, default=None, help="number of classes, 2..24 (default 20)")
    p.add_argument("--train-per-class", type=POSITIVE, default=None, help="default 500")
    p.add_argument("--val-per-class", type=NON_NEGATIVE, default=None, help="default 50")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 64)")
    p.add_argument("--workers", type=POSITIVE, default=None, help="processes (default: all cores)")
    p.set_defaults(func=cmd_synth)


def cmd_download(args: argparse.Namespace) -> int:
    from alexnet.data.download import download_dataset

    download_dataset(args.dataset, args.out, variant=args.variant, url=args.url, md5=args.md5,
                     verify=not args.no_verify, cache_dir=args.cache, keep_archive=args.keep_archive)
    return 0


def add_download(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "download",
        help="download CIFAR-10 or Imagenette (verified, resumable) into the folder layout",
        description="Fetch the official archive (resuming a partial download), verify its published "
        "MD5, unpack it safely to OUT/train/<class>/ and OUT/val/<class>/. Mirrors: --url or "
        "ALEXNET_CIFAR10_URL / ALEXNET_IMAGENETTE_URL.",
    )
    p.add_argument("dataset", choices=("cifar10", "imagenette"))
    p.add_argument("out", type=new_dir, help="output directory (new or empty)")
    p.add_argument("--variant", default=None, help="imagenette: 160, 320 (default) or full")
    p.add_argument("--url", default=None, help="download from this address instead (a mirror)")
    p.add_argument("--md5", default=None, help="expected MD5 when a mirror serves a different file")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check")
    p.add_argument("--cache", type=new_dir, default=None, help="where archives are kept while downloading "
                   "(default: ~/.cache/alexnet/downloads or $ALEXNET_DATA/downloads)")
    p.add_argument("--keep-archive", action="store_true", help="keep the archive after unpacking")
    p.set_defaults(func=cmd_download)


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: prepare, statistics, info, synthetic data, downloads")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for add in (add_prepare, add_stats, add_info, add_synth, add_download):
        add(dsub)
    p.set_defaults(func=lambda args: p.print_help() or 0)
