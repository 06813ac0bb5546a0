"""``alexnet evaluate | report | neighbors | predict | export``: a trained model, examined."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from alexnet.cli._args import (
    NON_NEGATIVE,
    POSITIVE,
    add_batching,
    add_device,
    existing_dir,
    model_file,
    new_dir,
    warn,
    write_json,
)
from alexnet.errors import EvaluationError, UsageError


def load(path: str, device: Any) -> tuple[Any, Any]:
    """``(model, meta)`` from a model file or a run directory (its best checkpoint)."""
    from alexnet.checkpoint import load_model
    from alexnet.runs import model_path

    return load_model(model_path(path), device)


def checkpoint_of(args: argparse.Namespace) -> str:
    """The model a command is given: ``--checkpoint``, or the positional ``MODEL`` (either a
    model file or a run directory)."""
    given = [v for v in (getattr(args, "model", None), args.checkpoint) if v is not None]
    if len(given) != 1:
        raise UsageError("give the model once: a run directory or model file, as MODEL or --checkpoint")
    return given[0]


def data_of(args: argparse.Namespace, model: str) -> str:
    """``--data``, else the dataset the model's run was trained on (its ``config.json``)."""
    if args.data is not None:
        return args.data
    from alexnet.runs import run_data

    data = run_data(model)
    if data is None:
        raise UsageError(f"{model}: no run config.json naming an existing dataset beside it; pass --data DIR")
    return str(data)


def device_of(args: argparse.Namespace) -> Any:
    from alexnet.devices import resolve_device

    return resolve_device(args.device)


# --------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alexnet.data import open_dataset
    from alexnet.evaluation import evaluate

    device = device_of(args)
    paths = [checkpoint_of(args), *(args.ensemble or [])]
    data = data_of(args, paths[0])
    models = [load(p, device) for p in paths]
    dataset = open_dataset(data, args.split)
    if len(dataset) == 0:
        raise EvaluationError(f"{data} ({args.split}): no images")
    start = time.perf_counter()
    result = evaluate(
        models,
        dataset,
        crops=args.crops,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.workers,
        progress=not args.quiet and sys.stderr.isatty(),
        names=paths,
    )
    seconds = time.perf_counter() - start
    if args.json != "-":
        for path, (_, meta) in zip(paths, models, strict=True):
            print(f"model: {meta.describe()}  [{path}]")
        print(f"data: {data} ({args.split})\n")
        print(result.format_table(max_classes=args.show_classes))
        print(f"\n{result.num_images / seconds:,.0f} images/s on {device} ({seconds:.1f} s)")
    if result.skipped:  # only images that decode are read and counted: say what was left out
        shown = "; ".join(f"{p} ({r})" for p, r in result.skipped[:3])
        warn(f"{result.num_skipped} unreadable image(s) skipped and not counted, e.g. {shown}")
    bad = getattr(dataset, "bad_files", [])
    if args.json:
        doc = result.to_dict(confusion=True) | {
            "data": str(data),
            "model_descriptions": [meta.describe() for _, meta in models],
            "split": args.split,
            "seconds": seconds,
            "bad_files": [list(b) for b in bad],
        }
        write_json(doc, args.json)
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 error, per-class accuracy and confusion matrix of a checkpoint or ensemble",
        description="Evaluate a checkpoint (ours, a safetensors export or torchvision alexnet weights) on a "
        "dataset split: centre crop or the paper's ten crops (softmax averaged over the patches); "
        "--ensemble averages the softmax over several models, as the paper's 5-CNN result.",
    )
    p.add_argument("model", nargs="?", type=model_file, metavar="MODEL",
                   help="a run directory (its best checkpoint) or a model file; or use --checkpoint")
    p.add_argument("--checkpoint", type=model_file,
                   help="model file (.pt checkpoint, .safetensors, torchvision .pth) or a run directory")
    p.add_argument("--data", type=existing_dir, help="dataset: prepared, ImageNet layout (class folders or ILSVRC "
                   "val), class folders (default: the dataset of the model's run)")
    p.add_argument("--split", default="val", help="split to evaluate (default val)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: corners + centre, mirrored")
    p.add_argument("--ensemble", nargs="+", metavar="CK", type=model_file, help="more checkpoints to average with --checkpoint")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT ('-': stdout only)")
    p.add_argument("--show-classes", type=NON_NEGATIVE, default=20, help="per-class rows in the table (default 20: worst and best)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device(p)
    add_batching(p)
    p.set_defaults(func=cmd_evaluate)


# --------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from alexnet.analysis.report import write_report

    path = write_report(
        args.run_dir,
        data=args.data,
        device=device_of(args),
        max_eval=args.max_eval,
        max_index=args.max_index,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )
    print(f"report: {path}")
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report of a run: curves, conv1 kernels, retrieval, top-5, confusion, ImageNet timeline",
        description="Writes RUN_DIR/report/report.html (self-contained, figures embedded) and the PNG figures.",
    )
    p.add_argument("run_dir", help="a training run directory (with checkpoints/ and metrics.jsonl)")
    p.add_argument("--data", default=None, type=existing_dir, help="dataset (default: the one in the run's config.json)")
    p.add_argument("--max-eval", type=POSITIVE, default=None, help="validate on at most this many images")
    p.add_argument("--max-index", type=NON_NEGATIVE, default=5000, help="training images indexed for retrieval (default 5000)")
    add_device(p)
    add_batching(p)
    p.set_defaults(func=cmd_report)


# --------------------------------------------------------------------------- neighbors


def cmd_neighbors(args: argparse.Namespace) -> int:
    from alexnet.analysis.retrieval import FeatureIndex, weights_fingerprint
    from alexnet.data import open_dataset
    from alexnet.errors import ImageLoadError, IndexFormatError
    from alexnet.evaluation import Predictor, load_image

    device = device_of(args)
    model, meta = load(args.checkpoint, device)
    if args.data is None and not (Path(args.index) / "index.json").is_file():
        from alexnet.runs import run_data

        found = run_data(args.checkpoint)
        args.data = None if found is None else str(found)
    index_dir = Path(args.index)
    index = None
    if not args.rebuild and (index_dir / "index.json").is_file():
        try:
            index = FeatureIndex.load(index_dir)
        except IndexFormatError as exc:
            if not args.data:
                raise IndexFormatError(f"{exc}; pass --data DIR to rebuild it") from None
            warn(f"warning: {exc}; rebuilding")
    if index is not None and index.info.get("weights_sha256") != weights_fingerprint(model):
        raise UsageError(
            f"the index in {index_dir} was built with other weights ({index.info.get('model')}) than "
            f"{args.checkpoint}; its features would not match. Use --rebuild --data DIR or another --index"
        )
    if index is not None and index.layer not in model.layer_names:
        raise UsageError(
            f"the index in {index_dir} holds {index.layer} features, a layer {meta.model} does not have; "
            f"use --rebuild --data DIR or another --index"
        )
    if index is None:
        if not args.data:
            raise UsageError(f"no feature index in {index_dir}; pass --data DIR to build one")
        dataset = open_dataset(args.data, args.split)
        start = time.perf_counter()
        index = FeatureIndex.build(
            model, meta, dataset, batch_size=args.batch_size, device=device, bits=args.bits,
            num_workers=args.workers, progress=sys.stderr.isatty(), limit=args.limit,
        )
        index.info["data"] = str(args.data)
        index.save(index_dir)
        warn(f"indexed {len(index):,} images in {time.perf_counter() - start:.1f} s -> {index_dir}")
    predictor = Predictor(model, meta, 1, device)
    results: list[dict[str, Any]] = []
    failed = 0
    for q in args.query:
        try:
            image = load_image(q, meta.image_size)
        except ImageLoadError as exc:
            failed += 1
            results.append({"query": q, "error": str(exc)})
            continue
        feats = predictor.features(image.unsqueeze(0), index.layer).cpu()
        if feats.shape[1] != index.features.shape[1]:
            raise UsageError(f"the index holds {index.features.shape[1]}-d features, the model gives {feats.shape[1]}-d")
        found = index.search(feats, args.k, binary=args.binary, rerank=args.rerank)
        results.append({
            "query": q,
            "seconds": found.seconds,
            "neighbours": [
                {"path": index.paths[j], "class": index.class_names[int(index.labels[j])], "distance": float(d)}
                for j, d in zip(found.indices[0].tolist(), found.distances[0].tolist(), strict=True)
            ],
        })
    if args.json:
        write_json(results, "-")
    else:
        mode = "binary codes" + (f", re-ranked x{args.rerank}" if args.rerank else "") if args.binary else "exact"
        for r in results:
            if "error" in r:
                warn(f"error: {r['error']}")
                continue
            print(f"{r['query']}  ({mode}, {r['seconds'] * 1e3:.2f} ms over {len(index):,} images)")
            exact = not args.binary or args.rerank  # re-ranked distances are exact Euclidean ones
            for i, n in enumerate(r["neighbours"], 1):
                distance = f"{n['distance']:9.3f}" if exact else f"{round(n['distance']):>9d}"  # Hamming: bits
                print(f"  {i}. {distance}  {n['class']:<24}  {n['path']}")
    return 1 if failed else 0


def add_neighbors(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neighbors",
        help="nearest images by last-hidden-layer activations (exact, or fast binary codes), with a reusable index",
        description="Finds the images of a dataset closest to each query in the space of the model's last "
        "hidden layer (fc7 in AlexNet, conv7 in alexnet_fast; the paper's Figure 4). "
        "The first run with --data builds the index in --index DIR; later runs reuse it.",
    )
    p.add_argument("--checkpoint", required=True, type=model_file, help="model file or run directory")
    p.add_argument("--index", required=True, type=new_dir, help="directory of the feature index (created if missing)")
    p.add_argument("--query", required=True, nargs="+", help="query image file(s)")
    p.add_argument("-k", type=POSITIVE, default=6, help="neighbours per query (default 6, as in the paper)")
    p.add_argument("--data", default=None, type=existing_dir,
                   help="dataset to index when --index holds none (default: the dataset of the model's run)")
    p.add_argument("--split", default="train", help="split to index (default train)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from --data")
    p.add_argument("--limit", type=POSITIVE, default=None, help="index at most this many images (evenly spaced)")
    p.add_argument("--bits", type=NON_NEGATIVE, default=256, help="binary code length (default 256; 0: none)")
    p.add_argument("--binary", action="store_true", help="search by Hamming distance of the binary codes")
    p.add_argument("--rerank", type=NON_NEGATIVE, default=0, help="with --binary: re-rank the best R*k exactly")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_device(p)
    add_batching(p)
    p.set_defaults(func=cmd_neighbors)


# --------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from alexnet.evaluation import predict_files

    device = device_of(args)
    model, meta = load(args.checkpoint, device)
    results = predict_files(model, meta, args.images, k=args.k, crops=args.crops, device=device)
    scope = _scope(model, meta, args.checkpoint, results)
    failed = sum("error" in r for r in results)
    if args.json:
        doc = [
            {"path": r["path"], "error": r["error"]}
            if "error" in r
            else {"path": r["path"], "top": [p._asdict() for p in r["top"]], "scope": scope[i]}
            for i, r in enumerate(results)
        ]
        write_json(doc, "-")
    else:
        print(f"model: {meta.describe()}")
        for i, r in enumerate(results):
            if "error" in r:
                warn(f"error: {r['error']}")
                continue
            print(r["path"])
            for p in r["top"]:
                bar = "#" * round(p.prob * 30)
                print(f"  {p.prob * 100:6.2f}%  {p.name[:36]:<36}  {bar}")
            print(f"  ({scope[i]})")
    if failed:
        warn(f"{failed} of {len(results)} image(s) could not be read")
    return 1 if failed else 0


def _scope(model: Any, meta: Any, checkpoint: str, results: list[dict[str, Any]]) -> list[str]:
    """What each answer is worth, in words: the model knows only its N classes (never a forced
    choice presented as recognition), and, where an atlas of these weights has calibrated the
    out-of-class check, whether the image looks like one of them."""
    import torch

    from alexnet.analysis.atlas import cache_root, load_atlas
    from alexnet.analysis.probes import outside_classes
    from alexnet.runs import model_path

    atlas = load_atlas(model, cache_root(model_path(checkpoint)))
    shown = ", ".join(meta.class_names[:5]) + (", ..." if meta.num_classes > 5 else "")
    plain = (f"the model only knows these {meta.num_classes} classes ({shown}); an image of anything else "
             f"still gets one of them. `alexnet atlas` calibrates a check for that")
    out = []
    for r in results:
        if "error" in r or atlas is None or atlas.ood is None:
            out.append(plain)
        else:
            out.append(outside_classes(torch.tensor([[r["top"][0].prob]]), atlas.ood)[0].message)
    return out


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-5 labels with probabilities for image files")
    p.add_argument("--checkpoint", required=True, type=model_file, help="model file or run directory")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("-k", type=POSITIVE, default=5, help="labels per image (default 5)")
    p.add_argument("--crops", type=int, choices=(1, 10), default=1, help="1: centre crop; 10: the paper's ten patches")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    add_device(p)
    p.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from alexnet.errors import ExportError
    from alexnet.export import export_model, verify_export

    model, meta = load(args.checkpoint, torch.device("cpu"))
    try:
        path = export_model(model, meta, args.format, args.output)
    except OSError as exc:
        raise ExportError(f"cannot write {args.output}: {exc}") from None
    size = path.stat().st_size / 2**20
    print(f"{args.format}: {path} ({size:.1f} MiB; input float32 [N, 3, {meta.input_size}, {meta.input_size}], "
          f"normalised ({meta.norm_mode}); output logits [N, {meta.num_classes}])")
    if not args.no_verify:
        try:
            diff = verify_export(model, meta, path, args.format)
        except ImportError as exc:
            warn(f"not verified ({exc})")
            return 0
        print(f"verified: max |logit difference| vs PyTorch {diff:.2e}")
        if not diff <= 1e-3:
            raise ExportError(f"the exported model disagrees with PyTorch (max difference {diff:.3g})")
    return 0


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model as safetensors, ONNX or TorchScript (checked against PyTorch)",
    )
    p.add_argument("--checkpoint", required=True, type=model_file, help="model file or run directory")
    p.add_argument("--format", required=True, choices=("safetensors", "onnx", "torchscript"))
    p.add_argument("--output", required=True, help="output file")
    p.add_argument("--no-verify", action="store_true", help="skip comparing the export's outputs with PyTorch")
    p.set_defaults(func=cmd_export)

