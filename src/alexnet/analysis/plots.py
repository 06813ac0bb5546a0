"""The report's figures, drawn with matplotlib's Agg backend (no display needed).

Every function writes one PNG of a fixed size (``figsize`` x ``DPI``; no tight bounding
box, so the pixel size is predictable) and returns its path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

DPI = 100

# ILSVRC winners' top-5 error in percent (SPEC.md). 2012: AlexNet, 16.4 (15.3 with extra data).
IMAGENET_TIMELINE: tuple[tuple[int, float, str], ...] = (
    (2010, 28.2, "NEC-UIUC"),
    (2011, 25.8, "XRCE"),
    (2012, 16.4, "SuperVision (AlexNet)"),
    (2013, 11.7, "Clarifai"),
    (2014, 6.7, "GoogLeNet"),
    (2015, 3.57, "ResNet"),
    (2016, 2.99, "Trimps-Soushen"),
    (2017, 2.25, "SENet"),
)
ALEXNET_EXTRA_DATA = 15.3
HUMAN_TOP5_ERROR = 5.1


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _figure(width: float, height: float, layout: str | None = "constrained") -> plt.Figure:
    """A figure of exactly ``width`` x ``height`` inches at :data:`DPI`. Image grids pass
    ``layout=None`` and place their axes by hand: the constrained solver is slow on dozens
    of axes and buys nothing for a regular grid."""
    return plt.figure(figsize=(width, height), dpi=DPI, layout=layout)


def _hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """uint8 [3, H, W] tensor or [H, W, 3] array -> [H, W, 3] array for imshow."""
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        return image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image.numpy()
    return image


# --------------------------------------------------------------------------- training curves


def _epoch_axis(records: Sequence[dict[str, Any]]) -> Any:
    """A function mapping a global step to a fractional epoch, from the epoch records' steps.

    Epoch ``e`` (counted from 1) ends at the step its record carries; a step inside it is
    placed linearly between the previous epoch's end and its own. Past the last recorded
    epoch the last epoch's length is assumed. None when no epoch record has a step.
    """
    ends: dict[int, int] = {}
    for r in records:
        if r.get("kind") == "epoch" and not r.get("partial") and isinstance(r.get("epoch"), int) \
                and isinstance(r.get("step"), int | float):
            ends[int(r["epoch"])] = int(r["step"])  # a resumed run rewrites an epoch: the last wins
    if not ends:
        return None
    marks = [(0, 0), *sorted((s, e) for e, s in ends.items())]
    length = max(1, marks[-1][0] - marks[-2][0])

    def to_epoch(step: float) -> float:
        for (s0, e0), (s1, e1) in itertools.pairwise(marks):
            if step <= s1:
                return e0 + (e1 - e0) * (step - s0) / max(1, s1 - s0)
        return marks[-1][1] + (step - marks[-1][0]) / length

    return to_epoch


def _series(records: Sequence[dict[str, Any]], kind: str, key: str, x: str, to_epoch: Any = None) -> tuple[list[float], list[float]]:
    """(x, y) of ``key`` over the records of ``kind``; with ``to_epoch``, x is the record's
    step converted to a fractional epoch (an epoch record sits at the end of its epoch)."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r.get("kind") != kind or not isinstance(v, int | float) or not math.isfinite(v):
            continue
        if to_epoch is not None and isinstance(r.get("step"), int | float):
            xs.append(float(to_epoch(r["step"])))
        elif r.get(x) is not None:
            xs.append(float(r[x]))
        else:
            continue
        ys.append(float(v))
    return xs, ys


def plot_training_curves(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss, train/val top-1 and top-5 error, and the learning rate, from ``metrics.jsonl`` records.

    Every panel shares one x-axis, the epoch (logged steps placed at their fraction of
    the epoch), so a point in one panel lines up with the same moment in the others.
    Errors are in percent on a log axis, where the late, small improvements stay visible.
    """
    fig = _figure(15, 4.2)
    ax_loss, ax_err, ax_lr = fig.subplots(1, 3, sharex=True)
    to_epoch = _epoch_axis(records)
    steps = any(r.get("kind") == "step" for r in records)
    kind = "step" if steps else "epoch"
    xlabel = "epoch" if to_epoch is not None or not steps else "step"

    xs, ys = _series(records, kind, "loss", "step" if steps else "epoch", to_epoch)
    if xs:
        ax_loss.plot(xs, ys, lw=1, alpha=0.8, label="train loss" + (" (logged steps)" if steps else ""))
    vx, vy = _series(records, "epoch", "val_loss", "epoch", to_epoch)
    if vx:
        ax_loss.plot(vx, vy, "o-", lw=1.5, label="val loss")
    ax_loss.set(title="loss", xlabel=xlabel, ylabel="cross-entropy")

    zero = []
    for key, style in (("train_top1", "C0--"), ("train_top5", "C1--"), ("val_top1", "C0o-"), ("val_top5", "C1o-")):
        ex, ey = _series(records, "epoch", key, "epoch", to_epoch)
        pts = [(x, 100 * (1 - v)) for x, v in zip(ex, ey, strict=True) if v < 1]  # 0% error has no log position
        label = key.replace("_", " ").replace("top", "top-") + " error"
        if pts:
            ax_err.plot([p[0] for p in pts], [p[1] for p in pts], style, lw=1.5, ms=4, label=label)
        if len(pts) < len(ex):
            zero.append(label)
    ax_err.set(title="top-1 / top-5 error (log scale)", xlabel=xlabel, ylabel="error (%)")
    if ax_err.lines:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax_err.set_yscale("log")
        ax_err.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_err.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax_err.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    if zero:
        ax_err.text(0.02, 0.02, "0% at some epochs (not drawn on a log axis): " + ", ".join(zero),
                    transform=ax_err.transAxes, fontsize=7, color="0.35", va="bottom")

    lx, ly = _series(records, kind, "lr", "step" if steps else "epoch", to_epoch)
    if lx:
        ax_lr.plot(lx, ly, "C2", lw=1.5)
        if max(ly) > 0 and min(ly) > 0 and max(ly) / min(ly) > 20:
            ax_lr.set_yscale("log")
    ax_lr.set(title="learning rate", xlabel=xlabel, ylabel="lr")

    for ax in (ax_loss, ax_err, ax_lr):
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
    return _save(fig, path)


# --------------------------------------------------------------------------- confusion matrix


def plot_confusion(confusion: Tensor | np.ndarray, class_names: Sequence[str], path: str | Path) -> Path:
    """Confusion matrix (true class down, predicted across) whose errors are visible.

    Colour: the share of the true class's images in each cell on a *log* scale, so a cell
    holding 1% of a class shows as clearly as the diagonal's 90% (on a linear scale the
    off-diagonal errors vanish); empty cells stay white. Up to 20 classes every non-empty
    cell is labelled with its *count*; larger matrices (ImageNet's 1000 x 1000) are drawn as
    an image. Only classes that occur or are predicted are kept.
    """
    from matplotlib.colors import LogNorm

    cm = np.asarray(confusion, dtype=np.float64)
    used = np.flatnonzero((cm.sum(1) > 0) | (cm.sum(0) > 0))
    cm = cm[np.ix_(used, used)]
    names = [class_names[i] for i in used]
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(used)
    total, errors = int(cm.sum()), int(cm.sum() - np.trace(cm))
    # Placed by hand: the constrained layout pushed the row label off the canvas once the
    # equal-aspect matrix, its class names and the colour bar competed for the width.
    fig = _figure(9, 8, layout=None)
    ax = fig.add_axes((0.17, 0.16, 0.68, 0.74))
    # The scale's floor: one image of the largest class, so a single error is always on the scale.
    vmin = min(0.5, max(1e-4, 1.0 / max(1.0, float(rows.max()))))
    shown = np.ma.masked_where(norm <= 0, norm)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=vmin, vmax=1.0), interpolation="nearest")
    ax.apply_aspect()  # the square matrix's real box, for a colour bar of the same height beside it
    box = ax.get_position()
    cax = fig.add_axes((box.x1 + 0.02, box.y0, 0.025, box.height))
    bar = fig.colorbar(im, cax=cax, label="share of the true class's images (log scale)")
    ticks = sorted({vmin, *(t * 10.0**e for e in range(-4, 1) for t in (1, 2, 5) if vmin * 1.2 <= t * 10.0**e <= 1.0)})
    bar.set_ticks(ticks, labels=[f"{100 * t:.3g}%" for t in ticks])
    bar.ax.minorticks_off()
    if n <= 30:
        ax.set_xticks(range(n), [s[:18] for s in names], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), [s[:18] for s in names], fontsize=8)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "black" if norm[i, j] > 0.3 else "white"
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7 if n > 12 else 9, color=color)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix: {n} classes\n{errors:,} of {total:,} images misclassified"
           + (" (counts in the cells)" if n <= 20 else ""))
    return _save(fig, path)


# --------------------------------------------------------------------------- top-5 predictions


def plot_top5(
    images: Sequence[Tensor | np.ndarray],
    predictions: Sequence[Sequence[tuple[str, float]]],
    true_labels: Sequence[str | None],
    path: str | Path,
    cols: int = 4,
) -> Path:
    """Each image above its five most probable labels as bars (the paper's Figure 4, left).

    The bar of the correct label is green; if the correct label is not among the five,
    it is named under the image in red.
    """
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(3.2 * cols, 4.4 * rows)
    grid = fig.add_gridspec(rows * 2, cols, height_ratios=[3, 2] * rows)
    for i, (image, preds, truth) in enumerate(zip(images, predictions, true_labels, strict=True)):
        r, c = divmod(i, cols)
        ax_im = fig.add_subplot(grid[2 * r, c])
        ax_im.imshow(_hwc(image))
        ax_im.set_xticks([])
        ax_im.set_yticks([])
        hit = any(name == truth for name, _ in preds)
        title = truth if truth is not None else ""
        ax_im.set_title(title[:28], fontsize=9, color="black" if hit or truth is None else "C3")
        ax_bar = fig.add_subplot(grid[2 * r + 1, c])
        names = [name for name, _ in preds][::-1]
        probs = [p for _, p in preds][::-1]
        colors = ["C2" if name == truth else "C0" for name in names]
        ax_bar.barh(range(len(names)), probs, color=colors)
        for y, p in enumerate(probs):
            ax_bar.text(min(p, 0.78) + 0.02, y, f"{p:.0%}" if p >= 0.01 else f"{p:.1%}", va="center", fontsize=7)
        ax_bar.set_yticks(range(len(names)), [s[:22] for s in names], fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=7)
        if truth is not None and not hit:
            ax_bar.set_xlabel(f"true: {truth[:24]} (not in top 5)", fontsize=7, color="C3")
    return _save(fig, path)


# --------------------------------------------------------------------------- retrieval


def plot_retrieval(
    queries: Sequence[Tensor | np.ndarray],
    neighbours: Sequence[Sequence[Tensor | np.ndarray]],
    path: str | Path,
    query_labels: Sequence[str] = (),
    neighbour_match: Sequence[Sequence[bool]] = (),
) -> Path:
    """Each query (first column) with its nearest training images (the paper's Figure 4, right).

    ``neighbour_match`` marks neighbours of the query's class with a green frame, others red.
    """
    rows = len(queries)
    cols = 1 + max((len(n) for n in neighbours), default=0)
    width, height = 1.6 * cols + 0.4, 1.7 * rows + 0.3
    fig = _figure(width, height, layout=None)
    fig.subplots_adjust(left=0.3 / width, right=1 - 0.1 / width, bottom=0.1 / height, top=1 - 0.25 / height,
                        wspace=0.08, hspace=0.12)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.imshow(_hwc(queries[r]))
                for spine in ax.spines.values():
                    spine.set(color="black", linewidth=3)
                if query_labels:
                    ax.set_ylabel(query_labels[r][:16], fontsize=8)
            elif c - 1 < len(neighbours[r]):
                ax.imshow(_hwc(neighbours[r][c - 1]))
                if neighbour_match:
                    color = "C2" if neighbour_match[r][c - 1] else "C3"
                    for spine in ax.spines.values():
                        spine.set(color=color, linewidth=2.5)
            else:
                ax.axis("off")
    axes[0, 0].set_title("query", fontsize=9)
    for c in range(1, cols):
        axes[0, c].set_title(f"#{c}", fontsize=9)
    return _save(fig, path)


# --------------------------------------------------------------------------- ImageNet timeline


def plot_timeline(path: str | Path, run_top5_error: float | None = None, run_label: str = "this run") -> Path:
    """ILSVRC winners' top-5 error by year, the human line, and optionally this run's result.

    ``run_top5_error`` is a fraction (0..1); it is placed at 2012, AlexNet's year.
    """
    years = [y for y, _, _ in IMAGENET_TIMELINE]
    errors = [e for _, e, _ in IMAGENET_TIMELINE]
    fig = _figure(9, 5)
    ax = fig.subplots()
    colors = ["C3" if y == 2012 else "C0" for y in years]
    ax.bar(years, errors, color=colors, width=0.6)
    for y, e, _ in IMAGENET_TIMELINE:
        ax.text(y, e + 0.6, f"{e:g}", ha="center", fontsize=9)
    ax.plot([2012], [ALEXNET_EXTRA_DATA], "v", color="white", mec="black", label=f"AlexNet with extra data ({ALEXNET_EXTRA_DATA})")
    ax.axhline(HUMAN_TOP5_ERROR, color="0.3", ls="--", lw=1.2, label=f"human (~{HUMAN_TOP5_ERROR}%)")
    if run_top5_error is not None:
        pct = 100 * run_top5_error
        ax.plot([2012.35], [pct], "*", ms=16, color="gold", mec="black", label=f"{run_label}: {pct:.1f}%")
    ax.set(ylabel="top-5 error (%)", title="ImageNet classification: winners' top-5 error")
    ax.set_xticks(years, [f"{y}\n{who.replace(' (', chr(10) + '(')}" for y, _, who in IMAGENET_TIMELINE], fontsize=8)
    ax.set_ylim(0, max(errors + ([100 * run_top5_error] if run_top5_error is not None else [])) * 1.12)
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------- unit atlas


def plot_unit_atlas(
    layers: Sequence[tuple[str, Sequence[int], Tensor, str]],
    path: str | Path,
    side: int = 40,
) -> Path:
    """What the units respond to (in the style of Zeiler & Fergus 2014, Figure 2).

    ``layers``: per conv layer ``(name, channels, patches [U, K, 3, P, P], note)``: one row
    per layer, one 3 x 3 block of each shown unit's top-9 receptive-field patches, the
    layer's name and ``note`` (its field size, measured summary) at the left.
    """
    from alexnet.analysis.atlas import mosaic

    n_rows = len(layers)
    n_cols = max((len(ch) for _, ch, _, _ in layers), default=1)
    cell = 1.35
    width, height = 2.3 + cell * n_cols, 0.35 + (cell + 0.25) * n_rows
    fig = _figure(width, height, layout=None)
    for r, (name, channels, patches, note) in enumerate(layers):
        bottom = 1 - (0.35 + (cell + 0.25) * (r + 1)) / height
        fig.text(0.1 / width, bottom + (cell * 0.6) / height, name, fontsize=12, weight="bold", va="bottom")
        fig.text(0.1 / width, bottom + (cell * 0.55) / height, note, fontsize=7.5, va="top", color="0.25",
                 wrap=True)
        for c, ch in enumerate(channels):
            ax = fig.add_axes(((2.2 + cell * c) / width, bottom, (cell - 0.1) / width, cell / height))
            ax.imshow(_hwc(mosaic(patches[c], side)), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"unit {ch}", fontsize=7.5, pad=2)
    fig.suptitle("What the units respond to: each block is one unit's 9 strongest training patches "
                 "(its receptive field)", fontsize=10, y=1 - 0.08 / height, va="top")
    return _save(fig, path)
