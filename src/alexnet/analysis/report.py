"""``alexnet report RUN_DIR``: the paper's tables and figures for one training run.

Writes ``RUN/report/``: ``report.html`` (self-contained: every figure embedded as a
base64 PNG, so the one file can be mailed or archived), the PNG files themselves and
``evaluation.json``. Sections: training curves (``metrics.jsonl``), the validation
result with per-class accuracy, the conv1 kernels per tower (Figure 3), fc7 retrieval
(Figure 4, right), top-5 predictions (Figure 4, left), the confusion matrix and the
ImageNet timeline (with this run on it when its classes are the 1000 ILSVRC synsets).

The model is the run's best checkpoint (else the last one, else ``model.safetensors``);
the data is the dataset recorded in ``config.json`` (or ``data=``), split as training
split it, so the validation images are exactly the ones the run validated on. Sections
that cannot be made (no metrics, no data) say so in the page instead of failing it.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexnet.checkpoint import CheckpointError, ModelMeta, load_model
from alexnet.data import resolve_data
from alexnet.data.sampling import spaced_indices
from alexnet.data.splits import open_splits
from alexnet.devices import resolve_device
from alexnet.errors import ReportError
from alexnet.files import atomic_write_bytes
from alexnet.runs import RunPaths


@dataclass
class _Section:
    title: str
    figure: Path | None = None
    html: str = ""
    note: str = ""


@dataclass
class _Report:
    sections: list[_Section] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- inputs


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of ``metrics.jsonl`` and the number of unreadable lines skipped (a run killed
    mid-write leaves a torn last line)."""
    records, bad = [], 0
    if not path.is_file():
        return records, bad
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(r, dict):
                records.append(r)
            else:
                bad += 1
    return records, bad


def open_run_splits(run_dir: Path, data: str | Path | None) -> tuple[Any, Any, str]:
    """(train, val, data path) as the run's training split them."""
    config = RunPaths(run_dir).read_config()
    if config is None:
        if data is None:
            raise ReportError("the run has no readable config.json naming its dataset; pass --data DIR")
        config = {}
    data = resolve_data(data if data is not None else config.get("data"))
    train, val, _ = open_splits(data, str(config.get("val_split", "val")), float(config.get("val_fraction", 0.05)))
    return train, val, str(data)


def _write(path: Path, data: bytes) -> None:
    """Atomic write, readable by others (a report is meant to be shared)."""
    atomic_write_bytes(path, data)


def _is_imagenet(meta: ModelMeta) -> bool:
    from alexnet.data.imagenet import IMAGENET_SYNSETS

    return list(meta.classes) == list(IMAGENET_SYNSETS)


# --------------------------------------------------------------------------- the report


def write_report(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 128,
    max_eval: int | None = None,
    max_index: int = 5000,
    num_queries: int = 8,
    num_neighbours: int = 6,
    num_samples: int = 8,
    num_workers: int | None = 0,
) -> Path:
    """Write ``RUN/report/report.html`` and its PNG figures; returns the HTML path.

    ``max_eval``: validate on at most this many images (evenly spaced); ``max_index``:
    index at most this many training images for retrieval.
    """
    from alexnet.analysis import plots
    from alexnet.analysis.filters import save_kernel_grid, tower_summary
    from alexnet.evaluation import evaluate

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    out = RunPaths(run_dir).report
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    rep = _Report()
    t0 = time.perf_counter()

    try:
        model_file = RunPaths(run_dir).model_file()
    except CheckpointError as exc:
        raise ReportError(str(exc)) from None
    try:
        model, meta = load_model(model_file, device)
    except CheckpointError as exc:
        raise ReportError(str(exc)) from None
    params = sum(p.numel() for p in model.parameters())
    rep.facts += [
        ("run", str(run_dir.resolve())),
        ("model", f"{meta.model} ({params:,} parameters, {meta.num_classes} classes)"),
        ("weights", str(model_file.relative_to(run_dir))),
        ("input", f"{meta.input_size}x{meta.input_size} crops of {meta.image_size}x{meta.image_size} images, "
                  f"normalisation: {meta.norm_mode}"),
    ]

    # Training curves.
    records, bad_lines = read_metrics(RunPaths(run_dir).metrics)
    if records:
        fig = plots.plot_training_curves(records, out / "training_curves.png")
        epochs = [r for r in records if r.get("kind") == "epoch"]
        note = f"{len(records)} records ({len(epochs)} epochs)"
        if bad_lines:
            note += f"; {bad_lines} unreadable line(s) skipped"
        rep.sections.append(_Section("Training curves", fig, note=note))
    else:
        rep.sections.append(_Section("Training curves", note="no metrics.jsonl records in this run"))

    # conv1 kernels.
    fig = save_kernel_grid(model, out / "conv1_kernels.png")
    towers = tower_summary(model)
    rows = "".join(
        f"<tr><td>{'tower ' + 'AB'[i] if len(towers) > 1 else 'all'}</td><td>{t['kernels']}</td>"
        f"<td>{t['mean']:.3f}</td><td>{t['median']:.3f}</td></tr>"
        for i, t in enumerate(towers)
    )
    rep.sections.append(
        _Section(
            "conv1 kernels (Figure 3)",
            fig,
            html="<table><tr><th>block</th><th>kernels</th><th>mean colourfulness</th><th>median</th></tr>"
            f"{rows}</table>",
            note="Each kernel is contrast-normalised on its own. Colourfulness: share of a kernel's energy "
            "in its colour differences (0: the same pattern in R, G and B, i.e. colour-agnostic; "
            "random kernels score about 0.67). "
            + ("One block per tower, as the paper's two GPUs." if len(towers) > 1 else "Single-column model: one block."),
        )
    )

    rep.sections.append(anatomy_section(model, meta))

    # Everything below needs the data.
    try:
        train, val, data_path = open_run_splits(run_dir, data)
    except Exception as exc:  # a dataset that moved or broke must not cost the other sections
        train = val = None
        data_path = str(data) if data else "(from config.json)"
        rep.sections.append(_Section("Validation", note=f"the dataset could not be opened: {exc}"))
    result = None
    if val is not None and len(val):
        eval_set = val
        if max_eval is not None and max_eval < len(val):
            from alexnet.data.splits import HeldOut

            eval_set = HeldOut(val, spaced_indices(len(val), max_eval))
        result = evaluate(
            (model, meta), eval_set, crops=1, batch_size=batch_size, device=device, num_workers=num_workers,
            names=[model_file.name],
        )
        _write(out / "evaluation.json", (json.dumps(result.to_dict(), indent=1) + "\n").encode())
        rep.facts += [
            ("data", data_path),
            ("validation", f"{result.num_images:,} images, centre crop"),
            ("top-1 error", f"{result.top1_error:.2%} (accuracy {result.top1:.2%})"),
            ("top-5 error", f"{result.top5_error:.2%} (accuracy {result.top5:.2%})"),
        ]
        table = html.escape(result.format_table(max_classes=20))
        rep.sections.append(_Section("Validation", html=f"<pre>{table}</pre>"))

        # Top-5 predictions for sample validation images.
        picks = spaced_indices(result.num_images, num_samples)
        # Row i of the result is dataset item result.indices[i] (unreadable items were skipped).
        rows = result.indices if result.indices is not None else range(result.num_images)
        images = [eval_set[int(rows[i])][0] for i in picks]
        preds = [
            [(meta.class_names[j], float(p)) for j, p in zip(result.top_idx[i].tolist(), result.top_prob[i].tolist(), strict=True)]
            for i in picks
        ]
        truth = [meta.class_names[int(result.labels[i])] for i in picks]
        fig = plots.plot_top5(images, preds, truth, out / "top5_predictions.png")
        rep.sections.append(
            _Section("Top-5 predictions (Figure 4, left)", fig, note="Green bar: the correct label.")
        )

        fig = plots.plot_confusion(result.confusion, meta.class_names, out / "confusion_matrix.png")
        rep.sections.append(_Section("Confusion matrix", fig))

    # Retrieval.
    if train is not None and val is not None and len(train) and len(val):
        rep.sections.append(
            _retrieval_section(
                model, meta, train, val, out, device, batch_size, max_index, num_queries, num_neighbours, num_workers
            )
        )

    # ImageNet timeline.
    on_chart = result is not None and _is_imagenet(meta)
    fig = plots.plot_timeline(out / "imagenet_timeline.png", result.top5_error if on_chart else None)
    rep.sections.append(
        _Section(
            "ImageNet top-5 error, 2010-2017",
            fig,
            note="This run is the star (placed at 2012, AlexNet's year)."
            if on_chart
            else "This run is not on the chart: its classes are not the 1000 ILSVRC classes.",
        )
    )

    rep.facts.append(("report time", f"{time.perf_counter() - t0:.1f} s"))
    page = _html(rep, run_dir.name)
    path = out / "report.html"
    _write(path, page.encode("utf-8"))
    return path


def anatomy_section(model: torch.nn.Module, meta: ModelMeta) -> _Section:
    """The network's anatomy: every layer's shape, neurons, parameters (with the formula),
    connections and receptive field, as ``alexnet models NAME --layers`` prints it."""
    from alexnet.anatomy import anatomy, format_layers

    table = anatomy(model, meta.input_size, name=meta.model)
    return _Section(
        "The network's anatomy",
        html=f"<pre>{html.escape(format_layers(table))}</pre>",
        note="Connections are multiply-adds per image (weights x positions, biases not counted); "
        "docs/anatomy.md compares them with the lecture slides' 630 million for the paper's network.",
    )


def _retrieval_section(
    model, meta, train, val, out: Path, device, batch_size: int, max_index: int, num_queries: int, k: int, num_workers
) -> _Section:
    from alexnet.analysis import plots
    from alexnet.analysis.retrieval import FeatureIndex, recall_at_k
    from alexnet.evaluation import Predictor, fit_images

    index = FeatureIndex.build(
        model, meta, train, batch_size=batch_size, device=device, limit=max_index, num_workers=num_workers
    )
    picks = spaced_indices(len(val), num_queries)
    items = [val[i] for i in picks]
    predictor = Predictor(model, meta, 1, device)
    queries = torch.stack([fit_images(x.unsqueeze(0), meta.image_size)[0] for x, _ in items])
    feats = predictor.features(queries).cpu()
    exact = index.search(feats, k)
    note = f"{len(index):,} training images indexed by fc7 ({index.features.shape[1]}-d), Euclidean distance."
    if index.codes is not None and len(index) > k:
        binary = index.search(feats, k, binary=True)
        rerank = index.search(feats, k, binary=True, rerank=10)
        note += (
            f" With {index.itq.bits}-bit ITQ codes, recall@{k} of the exact neighbours: "
            f"{recall_at_k(binary.indices, exact.indices):.0%} by Hamming distance alone, "
            f"{recall_at_k(rerank.indices, exact.indices):.0%} after re-ranking the best {10 * k} exactly."
        )
    positions = index.positions.tolist() if index.positions is not None else list(range(len(index)))
    neighbours = [[train[positions[j]][0] for j in row.tolist()] for row in exact.indices]
    match = [[int(index.labels[j]) == y for j in row.tolist()] for row, (_, y) in zip(exact.indices, items, strict=True)]
    names = list(getattr(val, "class_names", val.classes))
    fig = plots.plot_retrieval(
        [x for x, _ in items], neighbours, out / "retrieval.png", [names[y] for _, y in items], match
    )
    same = sum(sum(m) for m in match) / max(1, sum(len(m) for m in match))
    note += f" Green frame: same class as the query ({same:.0%} of the neighbours shown)."
    return _Section(f"Retrieval by fc7 (Figure 4, right): {k} nearest training images", fig, note=note)


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
img { max-width: 100%; height: auto; image-rendering: auto; } .note { color: #555; }
img.pixels { image-rendering: pixelated; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    attrs = ""
    if path.name == "conv1_kernels.png":  # small exact-pixel picture: show it enlarged, unblurred
        from PIL import Image

        with Image.open(path) as im:
            width = im.width
        attrs = f' class="pixels" style="width: {min(1100, width * max(1, 600 // width))}px"'
    return f'<img{attrs} alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _html(rep: _Report, title: str) -> str:
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rep.facts)
    body = []
    for s in rep.sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.figure is not None:
            body.append(_img(s.figure))
        if s.html:
            body.append(s.html)
        if s.note:
            body.append(f'<p class="note">{html.escape(s.note)}</p>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>AlexNet report: {html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>AlexNet report: {html.escape(title)}</h1><table>{facts}</table>"
        + "\n".join(body)
        + "</body></html>\n"
    )

