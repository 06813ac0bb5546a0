"""Handlers of ``alexnet evaluate | report | neighbors | predict | export``.

``alexnet.cli`` registers the arguments and calls these lazily. Every user error
(missing or corrupt checkpoint, unreadable dataset, bad image, mismatched ensemble)
becomes a :class:`alexnet.cli.CLIError` with the reason, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from alexnet.cli import CLIError


def _load(path: str, device: torch.device) -> tuple[torch.nn.Module, Any]:
    from alexnet.checkpoint import CheckpointError, load_model

    try:
        return load_model(path, device)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None


def _device(name: str | None) -> torch.device:
    from alexnet.evaluation import default_device

    if name in (None, "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CLIError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: CUDA is not available on this machine")
    return device


def _open(path: str, split: str | None) -> Any:
    from alexnet.data.folder import DatasetError, open_dataset

    try:
        return open_dataset(path, split)
    except (DatasetError, OSError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _write_json(doc: Any, target: str) -> None:
    text = json.dumps(doc, indent=1) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(text)
    except OSError as exc:
        raise CLIError(f"cannot write {target}: {exc}") from None


# --------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alexnet.evaluation import evaluate

    device = _device(args.device)
    paths = [args.checkpoint, *(args.ensemble or [])]
    models = [_load(p, device) for p in paths]
    dataset = _open(args.data, args.split)
    if len(dataset) == 0:
        raise CLIError(f"{args.data} ({args.split}): no images")
    start = time.perf_counter()
    try:
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
    except ValueError as exc:  # mismatched ensemble, classes unknown to the model, empty data
        raise CLIError(str(exc)) from None
    seconds = time.perf_counter() - start
    if args.json != "-":
        print(result.format_table(max_classes=args.show_classes))
        print(f"\n{result.num_images / seconds:,.0f} images/s on {device} ({seconds:.1f} s)")
    bad = getattr(dataset, "bad_files", [])
    if bad:
        print(f"{len(bad)} unreadable file(s) skipped, e.g. {bad[0][0]} ({bad[0][1]})", file=sys.stderr)
    if args.json:
        doc = result.to_dict(confusion=True) | {
            "data": str(args.data),
            "split": args.split,
            "seconds": seconds,
            "bad_files": [list(b) for b in bad],
        }
        _write_json(doc, args.json)
    return 0


# --------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from alexnet.analysis.report import ReportError, write_report

    try:
        path = write_report(
            args.run_dir,
            data=args.data,
            device=_device(args.device),
            max_eval=args.max_eval,
            max_index=args.max_index,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    print(f"report: {path}")
    return 0


# --------------------------------------------------------------------------- neighbors


def cmd_neighbors(args: argparse.Namespace) -> int:
    from alexnet.analysis.retrieval import FeatureIndex, IndexFormatError, weights_fingerprint
    from alexnet.evaluation import ImageLoadError, Predictor, load_image

    device = _device(args.device)
    model, meta = _load(args.checkpoint, device)
    index_dir = Path(args.index)
    index = None
    if not args.rebuild and (index_dir / "index.json").is_file():
        try:
            index = FeatureIndex.load(index_dir)
        except IndexFormatError as exc:
            if not args.data:
                raise CLIError(f"{exc}; pass --data DIR to rebuild it") from None
            print(f"warning: {exc}; rebuilding", file=sys.stderr)
    if index is not None and index.info.get("weights_sha256") != weights_fingerprint(model):
        raise CLIError(
            f"the index in {index_dir} was built with other weights ({index.info.get('model')}) than "
            f"{args.checkpoint}; its features would not match. Use --rebuild --data DIR or another --index"
        )
    if index is None:
        if not args.data:
            raise CLIError(f"no feature index in {index_dir}; pass --data DIR to build one")
        dataset = _open(args.data, args.split)
        start = time.perf_counter()
        index = FeatureIndex.build(
            model, meta, dataset, batch_size=args.batch_size, device=device, bits=args.bits,
            num_workers=args.workers, progress=sys.stderr.isatty(), limit=args.limit,
        )
        index.info["data"] = str(args.data)
        index.save(index_dir)
        print(f"indexed {len(index):,} images in {time.perf_counter() - start:.1f} s -> {index_dir}", file=sys.stderr)
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
        feats = predictor.features(image.unsqueeze(0)).cpu()
        if feats.shape[1] != index.features.shape[1]:
            raise CLIError(f"the index holds {index.features.shape[1]}-d features, the model gives {feats.shape[1]}-d")
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
        _write_json(results, "-")
    else:
        mode = "binary codes" + (f", re-ranked x{args.rerank}" if args.rerank else "") if args.binary else "exact"
        for r in results:
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr)
                continue
            print(f"{r['query']}  ({mode}, {r['seconds'] * 1e3:.2f} ms over {len(index):,} images)")
            for i, n in enumerate(r["neighbours"], 1):
                print(f"  {i}. {n['distance']:9.3f}  {n['class']:<24}  {n['path']}")
    return 1 if failed else 0


# --------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from alexnet.evaluation import predict_files

    device = _device(args.device)
    model, meta = _load(args.checkpoint, device)
    results = predict_files(model, meta, args.images, k=args.k, crops=args.crops, device=device)
    failed = sum("error" in r for r in results)
    if args.json:
        doc = [
            {"path": r["path"], "error": r["error"]}
            if "error" in r
            else {"path": r["path"], "top": [p._asdict() for p in r["top"]]}
            for r in results
        ]
        _write_json(doc, "-")
    else:
        for r in results:
            if "error" in r:
                print(f"error: {r['error']}", file=sys.stderr)
                continue
            print(r["path"])
            for p in r["top"]:
                bar = "#" * round(p.prob * 30)
                print(f"  {p.prob * 100:6.2f}%  {p.name[:36]:<36}  {bar}")
    if failed:
        print(f"{failed} of {len(results)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


# --------------------------------------------------------------------------- export


def verify_export(model: torch.nn.Module, meta: Any, path: Path, fmt: str) -> float:
    """Max |difference| of logits between the exported model and PyTorch on random inputs."""
    x = torch.randn(3, 3, meta.input_size, meta.input_size)
    with torch.inference_mode():
        ref = model.cpu().eval()(x)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    elif fmt == "torchscript":
        from alexnet.export import load_torchscript

        module, _ = load_torchscript(path)
        with torch.inference_mode():
            got = module(x)
    else:
        from alexnet.checkpoint import load_model

        reloaded, _ = load_model(path)
        with torch.inference_mode():
            got = reloaded(x)
    return float((got - ref).abs().max())


def cmd_export(args: argparse.Namespace) -> int:
    from alexnet.export import ExportError, export_model

    model, meta = _load(args.checkpoint, torch.device("cpu"))
    try:
        path = export_model(model, meta, args.format, args.output)
    except (ExportError, OSError) as exc:
        raise CLIError(str(exc)) from None
    size = path.stat().st_size / 2**20
    print(f"{args.format}: {path} ({size:.1f} MiB; input float32 [N, 3, {meta.input_size}, {meta.input_size}], "
          f"normalised ({meta.norm_mode}); output logits [N, {meta.num_classes}])")
    if not args.no_verify:
        try:
            diff = verify_export(model, meta, path, args.format)
        except ImportError as exc:
            print(f"not verified ({exc})", file=sys.stderr)
            return 0
        scale = 1e-3
        print(f"verified: max |logit difference| vs PyTorch {diff:.2e}")
        if not diff <= scale:
            raise CLIError(f"the exported model disagrees with PyTorch (max difference {diff:.3g})")
    return 0
