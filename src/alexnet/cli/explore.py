"""``alexnet explore``: serve the explorer page for a model."""

from __future__ import annotations

import argparse
import socket

from alexnet.cli._args import NON_NEGATIVE, PORT, existing_dir, float_range, model_file, warn
from alexnet.errors import UsageError


def cmd_explore(args: argparse.Namespace) -> int:
    from alexnet.runs import model_path

    checkpoint = model_path(args.checkpoint)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"warning: serving on {args.host}: anyone who can reach this address can use the explorer")
    try:  # a clear message now rather than a uvicorn traceback after the model has loaded
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another --port") from None
    from alexnet.explorer import serve

    serve(
        checkpoint,
        args.data,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        gallery_size=args.gallery,
        index_size=args.index_size,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_upload_pixels=int(args.max_upload_mp * 1_000_000),
        upload_seconds=args.upload_seconds,
        device=args.device,
    )
    return 0


def add_explore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore",
        help="serve the interactive explorer (the deep learning revolution, computed live) for a checkpoint",
        description="A web page that shows what the checkpoint's network computes: layer-by-layer "
        "activations of an image, the ImageNet error timeline, revealing the depth one layer at a "
        "time up to the top-5 labels, conv1 kernels and fc7 nearest neighbours. JSON API at /docs.",
    )
    p.add_argument("--checkpoint", required=True, type=model_file,
                   help="checkpoint (.pt), safetensors export, torchvision weights, or a run directory")
    p.add_argument("--data", default=None, type=existing_dir, help="dataset folder (val/ for the gallery, train/ for "
                   "neighbours; default: the run's config.json 'data', if any)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=PORT, default=8000)
    p.add_argument("--gallery", type=NON_NEGATIVE, default=24, help="gallery images (default 24, classes in turn)")
    p.add_argument("--index-size", type=NON_NEGATIVE, default=2000, help="training images indexed for neighbours (default 2000)")
    p.add_argument("--max-upload-mb", type=float_range(0, 1024, open_lo=True), default=8.0, help="upload size limit in MiB (default 8)")
    p.add_argument("--max-upload-mp", type=float_range(0, 1000, open_lo=True), default=16.0,
                   help="upload pixel limit in megapixels (default 16)")
    p.add_argument("--upload-seconds", type=float_range(0, 3600, open_lo=True), default=20.0,
                   help="an upload's body must arrive within this many seconds (default 20)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_explore)


