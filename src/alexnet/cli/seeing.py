"""``alexnet atlas | explain | visualise | weights``: what a trained model sees, with evidence."""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

from alexnet.cli._args import (
    POSITIVE,
    add_batching,
    add_device,
    existing_dir,
    model_file,
    new_dir,
    warn,
    write_json,
)
from alexnet.cli.analysis import device_of, load
from alexnet.errors import UsageError


def _splits(checkpoint: str, data: str | None) -> tuple[Any, Any, str]:
    """(train, val, data path): split as the model's run split them, else ``--data`` with a held-out 5%."""
    from alexnet.analysis.report import open_run_splits
    from alexnet.data.splits import open_splits
    from alexnet.runs import RunPaths, run_data

    run = RunPaths.of(Path(checkpoint).resolve())
    if run is not None and run.read_config() is not None:
        return open_run_splits(run.root, data)
    found = data if data is not None else run_data(checkpoint)
    if found is None:
        raise UsageError(f"{checkpoint}: no run config.json naming its dataset; pass --data DIR")
    train, val, _ = open_splits(found, "val", 0.05)
    return train, val, str(found)


def _png(image: Any, path: Path) -> Path:
    from PIL import Image

    from alexnet.files import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


# --------------------------------------------------------------------------- atlas


def cmd_atlas(args: argparse.Namespace) -> int:
    from alexnet.analysis.atlas import cache_root, ensure_atlas, model_cache_dir
    from alexnet.runs import model_path

    device = device_of(args)
    model, meta = load(args.checkpoint, device)
    train, val, data = _splits(args.checkpoint, args.data)
    root = args.cache or cache_root(model_path(args.checkpoint))
    start = time.perf_counter()
    atlas, built = ensure_atlas(
        model, meta, train, val, root=root, rebuild=args.rebuild, data=str(Path(data).resolve()),
        sample=args.sample, top_k=args.top_k, batch_size=args.batch_size, device=device,
        num_workers=args.workers, progress=sys.stderr.isatty(),
    )
    where = model_cache_dir(atlas.info["weights_sha256"], root) / "atlas"
    if args.json:
        write_json(atlas.to_json() | {"path": str(where), "built": built}, "-")
        return 0
    print(f"model: {meta.describe()}")
    verb = f"built in {time.perf_counter() - start:.1f} s" if built else "reused"
    print(f"atlas: {where} ({verb}; {atlas.info['sample']:,} training images of {data})\n")
    for name in atlas.layers:
        print(atlas.caption(name))
    if atlas.probes is not None:
        print("\nlinear probes on pooled activations (validation accuracy, mean probability of the true class):")
        for row in atlas.probes.summary():
            print(f"  {row['layer']:<6} {row['dim']:>5}-d  {row['val_accuracy']:7.1%}  {row['val_true_prob']:7.1%}")
    if atlas.ood is not None:
        o = atlas.ood
        print(f"\nout-of-class threshold: max softmax {o.threshold:.3f} ({o.keep:.0%} of {o.num_images:,} "
              f"validation images reach it)")
    return 0


def add_atlas(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "atlas",
        help="unit atlas: each conv channel's top training patches, per-layer probes, out-of-class threshold",
        description="One pass over (a sample of) the training images records every conv channel's strongest "
        "hits and cuts their receptive fields; linear probes per layer and the out-of-class threshold are fitted "
        "on the same features. Stored under the data home, keyed by the weights' digest, and reused.",
    )
    p.add_argument("--checkpoint", required=True, type=model_file, help="model file or run directory")
    p.add_argument("--data", default=None, type=existing_dir, help="dataset (default: the one of the model's run)")
    p.add_argument("--sample", type=POSITIVE, default=5000, help="training images to look at (default 5000)")
    p.add_argument("--top-k", type=POSITIVE, default=9, help="patches kept per channel (default 9)")
    p.add_argument("--rebuild", action="store_true", help="build again even if an atlas of these weights exists")
    p.add_argument("--cache", type=new_dir, default=None,
                   help="cache root (default: RUN/analysis for a run's model, else <data home>/analysis)")
    p.add_argument("--json", action="store_true", help="summaries, probes and threshold as JSON on stdout")
    add_device(p)
    add_batching(p)
    p.set_defaults(func=cmd_atlas)


# --------------------------------------------------------------------------- explain


def _class_index(text: str | None, meta: Any) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    for names in (meta.classes, meta.class_names):
        if text in names:
            return list(names).index(text)
    raise UsageError(f"unknown class {text!r}: give an index 0..{meta.num_classes - 1}, a class id or a class name")


def cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from alexnet.analysis.atlas import cache_root, centre_crop, load_atlas
    from alexnet.analysis.attribution import Attributor, overlay
    from alexnet.analysis.probes import layer_knowledge, outside_classes
    from alexnet.errors import ImageLoadError
    from alexnet.evaluation import load_image

    device = device_of(args)
    model, meta = load(args.checkpoint, device)
    target = _class_index(args.target, meta)
    attributor = Attributor(model, meta, device)
    from alexnet.runs import model_path

    atlas = load_atlas(model, args.cache or cache_root(model_path(args.checkpoint)))
    out = Path(args.out) if args.out else None
    docs: list[dict[str, Any]] = []
    failed = 0
    for source in args.images:
        try:
            image = load_image(source, meta.image_size)
        except ImageLoadError as exc:
            failed += 1
            warn(f"error: {exc}")
            continue
        batch = image.unsqueeze(0)
        doc: dict[str, Any] = {"image": source}
        with torch.no_grad():
            probs = attributor.model(attributor.inputs(batch)).float().softmax(1)[0].cpu()
        top = probs.topk(min(5, meta.num_classes))
        doc["top"] = [{"class": meta.class_names[i], "prob": float(p)} for p, i in zip(top.values, top.indices, strict=True)]
        for method in args.method:
            m = attributor.explain(batch, method, target)[0]
            doc[method] = m.to_dict() | {"class": meta.class_names[m.target]}
            if out is not None:
                name = f"{Path(source).stem}-{method}-{m.target}.png"
                doc[method]["png"] = str(_png(overlay(centre_crop(batch, meta)[0], m.values), out / name))
        if atlas is not None and atlas.ood is not None:
            doc["outside"] = outside_classes(probs, atlas.ood)[0].to_dict()
        if atlas is not None and atlas.probes is not None:
            shown = int(probs.argmax()) if target is None else target
            cls = meta.classes[shown]
            if cls in atlas.probes.classes:
                j = atlas.probes.classes.index(cls)
                curve = layer_knowledge(attributor.model, meta, atlas.probes, batch)
                doc["by_layer"] = {"class": meta.class_names[shown],
                                   "probs": {k: float(v[0, j]) for k, v in curve.items()}}
        docs.append(doc)
    if args.json:
        write_json(docs, "-")
        return 1 if failed else 0
    print(f"model: {meta.describe()}")
    if atlas is None:
        print("(no unit atlas of these weights: run `alexnet atlas` for per-layer probes and the out-of-class check)")
    for doc in docs:
        print(doc["image"])
        for t in doc["top"]:
            print(f"  {t['prob'] * 100:6.2f}%  {t['class']}")
        for method in args.method:
            d = doc[method]
            where = f" -> {d['png']}" if "png" in d else ""
            print(f"  {method} for {d['class']!r} (p={d['prob']:.3f}): {d['seconds'] * 1e3:.0f} ms{where}")
        if "by_layer" in doc:
            curve = "  ".join(f"{k} {v:.0%}" for k, v in doc["by_layer"]["probs"].items())
            print(f"  what each layer knows of {doc['by_layer']['class']!r}: {curve}")
        if "outside" in doc:
            print(f"  {doc['outside']['message']}")
    return 1 if failed else 0


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="why this label: occlusion and Grad-CAM maps, what each layer knows, out-of-class check",
        description="For each image: the top-5 labels, occlusion sensitivity (drop in probability under a "
        "sliding grey square) and Grad-CAM at the last convolution (conv5 in AlexNet) for the predicted class "
        "(or --class), written as overlays with --out. With a unit atlas of these weights: each layer's probe "
        "probability and the out-of-class check.",
    )
    p.add_argument("--checkpoint", required=True, type=model_file, help="model file or run directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--method", nargs="+", choices=("occlusion", "gradcam"), default=["occlusion", "gradcam"])
    p.add_argument("--class", dest="target", default=None, help="class to explain: index, id or name (default: predicted)")
    p.add_argument("--out", type=new_dir, default=None, help="write overlay PNGs here")
    p.add_argument("--cache", type=new_dir, default=None,
                   help="atlas cache root (default: RUN/analysis for a run's model, else <data home>/analysis)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_device(p)
    p.set_defaults(func=cmd_explain)


# --------------------------------------------------------------------------- visualise


def cmd_visualise(args: argparse.Namespace) -> int:
    from alexnet.analysis.featvis import visualise

    model, meta = load(args.checkpoint, device_of(args))
    if args.layer not in model.layer_names:
        raise UsageError(f"{meta.model} has no layer {args.layer!r}; choose from {', '.join(model.layer_names)}")
    vis = visualise(model, meta, args.layer, args.unit, steps=args.steps, seed=args.seed)
    _png(vis.image, Path(args.out))
    print(f"{args.layer} unit {args.unit}: activation {vis.start_activation:.3f} -> {vis.activation:.3f} "
          f"in {vis.steps} steps ({vis.seconds:.1f} s) -> {args.out}")
    return 0


def add_visualise(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "visualise",
        help="feature visualisation: optimise an input image for one unit (regularised, jittered)",
    )
    p.add_argument("--checkpoint", required=True, type=model_file, help="model file or run directory")
    p.add_argument("--layer", required=True,
                   help="a layer of the checkpoint's model: conv1 .. conv5, fc6, fc7, fc8 in AlexNet "
                   "(conv1 .. conv7, fc8 in alexnet_fast)")
    p.add_argument("--unit", required=True, type=int, help="channel (conv) or unit (fc; fc8: class index)")
    p.add_argument("--steps", type=POSITIVE, default=128, help="optimisation steps (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="PNG file to write")
    add_device(p)
    p.set_defaults(func=cmd_visualise)


# --------------------------------------------------------------------------- weights


def cmd_weights(args: argparse.Namespace) -> int:
    from alexnet.pretrained import WEIGHTS, download_weights, weights_path

    if args.action == "list":
        for name, spec in WEIGHTS.items():
            path = weights_path(name, args.dir)
            state = f"downloaded: {path}" if path.is_file() else "not downloaded"
            print(f"{name:<12} {spec.model:<12} {spec.url}  ({state})")
        return 0
    path = download_weights(args.name, url=args.url, sha256=args.sha256, directory=args.dir,
                            progress=sys.stderr.isatty())
    from alexnet.checkpoint import load_model
    from alexnet.errors import CheckpointError

    try:
        _, meta = load_model(path)
    except CheckpointError as exc:
        raise CheckpointError(f"{path} was downloaded and its digest verified, but it does not load: {exc}") from None
    print(f"{args.name}: {path}\nmodel: {meta.describe()}\nuse it as --checkpoint {path}")
    return 0


def add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="published ImageNet weights: list, download (resumable, verified)")
    p.add_argument("action", choices=("list", "download"))
    p.add_argument("name", nargs="?", default="torchvision", help="which weights (default torchvision)")
    p.add_argument("--url", default=None, help="mirror URL (default: the published one; or $ALEXNET_TORCHVISION_URL)")
    p.add_argument("--sha256", default=None, help="expected SHA-256 or prefix instead of the published one")
    p.add_argument("--dir", type=new_dir, default=None, help="where to store (default <data home>/weights)")
    p.set_defaults(func=cmd_weights)


SEEING_COMMANDS = [add_atlas, add_explain, add_visualise, add_weights]
