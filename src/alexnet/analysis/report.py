"""``alexnet report RUN_DIR``: the paper's tables and figures for one training run.

Writes ``RUN/report/``: ``report.html``, the PNG figures it links to (beside it, by
relative path: embedding them as base64 made the page 2.4 MB; the folder is the report,
to be archived or shared whole) and ``evaluation.json``. Sections: training curves
(``metrics.jsonl``), the validation result with per-class accuracy, the conv1 kernels
(per tower, as the paper's Figure 3, only where the model has towers), what the conv units
respond to (top patches from the unit atlas, in the style of Zeiler & Fergus's Figure 2),
retrieval by the last hidden layer (fc7 in AlexNet's layout; Figure 4, right), top-5 predictions (Figure 4, left), the confusion matrix
and the ImageNet timeline (with this run on it when its classes are the 1000 ILSVRC
synsets). Every image carries alt text that says what it shows.

The model is the run's best checkpoint (else the last one, else ``model.safetensors``);
the data is the dataset recorded in ``config.json`` (or ``data=``), split as training
split it, so the validation images are exactly the ones the run validated on. Sections
that cannot be made (no metrics, no data) say so in the page instead of failing it.
"""

from __future__ import annotations

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
from alexnet.errors import AlexNetError, ReportError
from alexnet.files import atomic_write_bytes
from alexnet.layers import PatchWhitening
from alexnet.runs import RunPaths


@dataclass
class _Section:
    title: str
    figure: Path | None = None
    html: str = ""
    note: str = ""
    alt: str = ""  # what the figure shows, for readers who cannot see it


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
    atlas_sample: int = 2000,
    atlas_units: int = 6,
) -> Path:
    """Write ``RUN/report/report.html`` and its PNG figures; returns the HTML path.

    ``max_eval``: validate on at most this many images (evenly spaced); ``max_index``:
    index at most this many training images for retrieval; ``atlas_sample``: training
    images the unit atlas looks at when none of these weights is stored yet (it is kept
    in ``RUN/analysis/`` and reused); ``atlas_units``: units shown per conv layer.
    """
    from alexnet.analysis import plots
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
        last = next((r for r in reversed(epochs) if isinstance(r.get("val_top1"), int | float)), None)
        alt = (f"Three panels against the epoch: training and validation loss, top-1 and top-5 error in percent "
               f"on a log scale, and the learning rate, over {len(epochs)} epoch(s)")
        if last is not None:
            alt += f"; the last validation top-1 error is {1 - last['val_top1']:.1%}"
        rep.sections.append(_Section("Training curves", fig, note=note, alt=alt + "."))
    else:
        rep.sections.append(_Section("Training curves", note="no metrics.jsonl records in this run"))

    # conv1 kernels.
    rep.sections.append(_kernel_section(model, out / "conv1_kernels.png"))

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
        hits = sum(any(n == t for n, _ in p) for p, t in zip(preds, truth, strict=True))
        rep.sections.append(
            _Section("Top-5 predictions (Figure 4, left)", fig, note="Green bar: the correct label.",
                     alt=f"{len(images)} validation images, each above a bar chart of its five most probable labels; "
                     f"the true label is among the five for {hits} of them.")
        )

        fig = plots.plot_confusion(result.confusion, meta.class_names, out / "confusion_matrix.png")
        cm = result.confusion.clone().float()
        cm.fill_diagonal_(-1)
        worst = divmod(int(cm.argmax()), cm.shape[1])
        n_worst = int(result.confusion[worst])
        alt = (f"Confusion matrix of {meta.num_classes} classes, true class down and predicted across, coloured by "
               f"the share of each true class on a log scale; {result.num_images - int(result.confusion.trace()):,} "
               f"errors in all")
        if n_worst:
            alt += (f"; the most frequent confusion is {meta.class_names[worst[0]]} taken for "
                    f"{meta.class_names[worst[1]]} ({n_worst} images)")
        rep.sections.append(_Section("Confusion matrix", fig, alt=alt + ".",
                                     note="Colour: share of the true class's images, log scale (errors of 1% stay "
                                     "visible); numbers: image counts."))

    # What the units respond to (the unit atlas).
    if train is not None and len(train):
        try:
            rep.sections.append(
                _atlas_section(model, meta, model_file, train, val, data_path, out, device, batch_size, num_workers,
                               atlas_sample, atlas_units)
            )
        except (AlexNetError, OSError) as exc:  # e.g. an unreadable image or cache: the other sections stand
            rep.sections.append(_Section("What the units respond to", note=f"the unit atlas could not be made: {exc}"))

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
            alt="Bar chart of the ILSVRC winners' top-5 error from 28.2% in 2010 to 2.25% in 2017, AlexNet's 16.4% "
            "in 2012 in red, a dashed line at the human 5.1%"
            + (f", and this run's {result.top5_error:.1%} as a star at 2012." if on_chart else "."),
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
    feats = predictor.features(queries, index.layer).cpu()
    exact = index.search(feats, k)
    layer = index.layer
    note = f"{len(index):,} training images indexed by {layer} ({index.features.shape[1]}-d), Euclidean distance."
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
    alt = (f"{len(items)} validation images in the first column, each followed by its {k} nearest training images "
           f"by {layer} distance; {same:.0%} of the neighbours are of the query's class.")
    return _Section(f"Retrieval by {layer} (Figure 4, right): {k} nearest training images", fig, note=note, alt=alt)


def _kernel_section(model, path: Path) -> _Section:
    """The conv1 kernels, captioned for what they are: the paper's Figure 3 and its per-tower
    colour statistic only where the model has two towers."""
    from alexnet.analysis.filters import conv1_weight, save_kernel_grid, tower_summary

    fig = save_kernel_grid(model, path)
    towers = tower_summary(model)
    w = conv1_weight(model)
    n, k = w.shape[0], w.shape[-1]
    note = ("Each kernel is contrast-normalised on its own. Colourfulness: share of a kernel's energy in its colour "
            "differences (0: the same pattern in R, G and B, i.e. colour-agnostic; random kernels score about 0.67).")
    if len(towers) > 1:
        rows = "".join(
            f"<tr><td>tower {'AB'[i]}</td><td>{t['kernels']}</td><td>{t['mean']:.3f}</td><td>{t['median']:.3f}</td></tr>"
            for i, t in enumerate(towers)
        )
        table = ("<table><tr><th>tower</th><th>kernels</th><th>mean colourfulness</th><th>median</th></tr>"
                 f"{rows}</table>")
        return _Section(
            f"conv1 kernels per tower (the paper's Figure 3): {n} kernels of {k}x{k}x3", fig, html=table,
            note=note + " One block per tower, as the paper's two GPUs; the paper found one tower's kernels largely "
            "colour-agnostic and the other's colour-specific: compare the two rows of the table.",
            alt=f"The {n} learned {k}x{k} conv1 kernels as small colour images, in two blocks of {n // 2}, one per tower; "
            f"mean colourfulness {towers[0]['mean']:.2f} (tower A) and {towers[1]['mean']:.2f} (tower B).",
        )
    t = towers[0]
    if isinstance(getattr(model, "conv1", None), PatchWhitening):
        # alexnet_fast: conv1 is a patch-whitening layer fitted to the data, not trained
        return _Section(
            f"conv1 kernels: the {n} fixed {k}x{k}x3 whitening filters (fitted to the training patches, not learned)",
            fig, note=note + " The filters are the eigenvectors of the training images' patch covariance scaled to "
            "unit variance, each with its negative; only their biases are trained.",
            alt=f"The {n} fixed {k}x{k} whitening filters of conv1 as small colour images in one grid; "
            f"mean colourfulness {t['mean']:.2f}.",
        )
    return _Section(
        f"conv1 kernels: the {n} learned {k}x{k}x3 filters of this single-column model", fig,
        note=note + f" This model has one column (no towers), so the paper's two-tower comparison does not apply; "
        f"over all {n} kernels the colourfulness is {t['mean']:.2f} on average (median {t['median']:.2f}).",
        alt=f"The {n} learned {k}x{k} conv1 kernels of a single-column model shown as small colour images in one grid; "
        f"mean colourfulness {t['mean']:.2f}.",
    )


def _atlas_section(model, meta, model_file: Path, train, val, data_path: str, out: Path, device, batch_size: int,
                   num_workers, sample: int, units: int) -> _Section:
    """Top-9 patches of a few units per conv layer, with each layer's measured summary."""
    from alexnet.analysis import plots
    from alexnet.analysis.atlas import cache_root, ensure_atlas

    atlas, built = ensure_atlas(
        model, meta, train, val, root=cache_root(model_file), data=str(Path(data_path).resolve()), sample=sample,
        batch_size=batch_size, device=device, num_workers=num_workers,
    )
    rows = []
    for name, la in atlas.layers.items():
        s = la.summary
        chosen = la.showcase(units)
        note = (f"field {la.rf.size} px\n{s['oriented_edge'] + s['colour_edge']:.0%} oriented "
                f"(chance {s['baseline']['oriented_edge'] + s['baseline']['colour_edge']:.0%})\n"
                f"{s['colour_blob']:.0%} colour blobs (chance {s['baseline']['colour_blob']:.0%})\n"
                f"one class: {s['purity']:.0%} (chance {s['baseline']['purity']:.0%})")
        rows.append((name, chosen, la.patches[chosen][:, :9], note))
    fig = plots.plot_unit_atlas(rows, out / "unit_atlas.png")
    captions = "".join(f"<li>{html.escape(atlas.caption(name))}</li>" for name in atlas.layers)
    if atlas.probes is not None and atlas.probes.val_images:
        rows = "".join(
            f"<tr><td>{r['layer']}</td><td>{r['dim']:,}</td><td>{r['val_accuracy']:.1%}</td><td>{r['val_true_prob']:.1%}</td></tr>"
            for r in atlas.probes.summary()
        )
        captions += (
            f"<p>What each layer already knows about the label: a linear probe per layer on its pooled activations "
            f"({atlas.probes.train_images:,} training images), scored on {atlas.probes.val_images:,} validation "
            f"images.</p><table><tr><th>layer</th><th>features</th><th>probe accuracy</th>"
            f"<th>mean probability of the true class</th></tr>{rows}</table>"
        )
    if atlas.ood is not None:
        captions += (
            f"<p>Out-of-class check: an image whose top softmax probability is below {atlas.ood.threshold:.1%} is "
            f"flagged as possibly none of the {atlas.ood.num_classes} classes; {atlas.ood.keep:.0%} of validation "
            f"images reach that confidence, so about {1 - atlas.ood.keep:.0%} of ordinary images are flagged too, and "
            f"a confidently wrong answer on an unknown object is not caught.</p>"
        )
    note = (f"Units shown: {units} per layer, evenly spaced over the active channels (not hand-picked). Each patch is "
            f"the unit's receptive field, computed from the architecture, around its strongest location in one of "
            f"its 9 best training images ({atlas.info['sample']:,} looked at); grey: beyond the image's edge. "
            f"'Chance' figures are the same statistics for 9 patches drawn from random units of the layer. "
            f"Atlas {'built now' if built else 'reused'} ({atlas.info['seconds']:.1f} s to build).")
    names = list(atlas.layers)
    alt = (f"A grid with one row per conv layer ({names[0]} to {names[-1]}) and, per row, {units} blocks of 3x3 image patches: "
           "the training-image regions that excite one unit most. " + " ".join(atlas.caption(n) for n in atlas.layers))
    return _Section("What the units respond to (after Zeiler & Fergus, Figure 2)", fig,
                    html=f"<ul>{captions}</ul>", note=note, alt=alt)


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
img { max-width: 100%; height: auto; image-rendering: auto; } .note { color: #555; }
img.pixels { image-rendering: pixelated; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _img(path: Path, alt: str) -> str:
    """An ``<img>`` linking the PNG beside the page, with its pixel size (no layout shift) and alt text."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
    attrs = f' width="{width}" height="{height}"'
    if path.name == "conv1_kernels.png":  # small exact-pixel picture: show it enlarged, unblurred
        shown = min(1100, width * max(1, 600 // width))
        attrs = f' class="pixels" width="{shown}" height="{round(height * shown / width)}"'
    return f'<img{attrs} alt="{html.escape(alt or path.stem)}" src="{html.escape(path.name)}">'


def _html(rep: _Report, title: str) -> str:
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rep.facts)
    body = []
    for s in rep.sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.figure is not None:
            body.append(_img(s.figure, s.alt))
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

