"""Evaluation: top-1/top-5, centre and ten-crop testing, ensembles, confusion matrix.

The shared inference pieces live here so that every consumer (``alexnet evaluate``,
``predict``, ``report``, the retrieval index, the explorer) feeds images to a model
exactly the way training did:

* :func:`class_probs`: uint8 batch ``[B, 3, S, S]`` -> softmax ``[B, C]``; with ten crops
  the softmax is averaged over the ten patches, as in the paper.
* :func:`dataset_probs`: the same over a whole dataset, averaging the softmax over the
  models of an ensemble (the paper's "5 CNNs" row).
* :func:`evaluate` -> :class:`EvalResult` (errors, per-class accuracy, confusion matrix).

Every figure counts only images actually read. A folder dataset replaces an unreadable
file by a neighbouring good one when *training* asks for it (:class:`~alexnet.data.folder.FolderDataset`);
here that would count the neighbour twice and miss the unreadable image, so evaluation
reads each item without substitution (:func:`strict_view`), leaves the unreadable ones
out and lists them in :attr:`EvalResult.skipped`.
* :func:`predict_images` -> top-k labels with probabilities for individual images.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from alexnet.checkpoint import ModelMeta
from alexnet.devices import resolve_device
from alexnet.errors import DECODE_REASONS, DecodeError, EvaluationError, ImageLoadError
from alexnet.metrics import count_hits

ModelAndMeta = tuple[nn.Module, ModelMeta]


# --------------------------------------------------------------------------- batches


def iter_batches(
    dataset: Any, batch_size: int = 128, num_workers: int | None = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(uint8 [B, 3, S, S], int64 [B])`` batches of ``dataset`` in index order, every image once.

    ``num_workers``: decoding processes (None: the data package's default, one per core).
    """
    from alexnet.data.loader import make_loader

    loader = make_loader(
        dataset, batch_size, shuffle=False, drop_last=False, num_workers=num_workers, persistent_workers=False
    )
    for images, labels in loader:
        yield images, labels.to(torch.int64)


def _strict_item(dataset: Any, i: int) -> tuple[Tensor, int]:
    """Item ``i`` as stored, or :class:`DecodeError`: ``load`` where the dataset has one
    (a folder dataset's ``__getitem__`` would substitute a neighbour), through a subset's
    ``base``/``indices`` (``HeldOut``) down to it."""
    if hasattr(dataset, "load"):
        return dataset.load(i)
    base, indices = getattr(dataset, "base", None), getattr(dataset, "indices", None)
    if base is not None and indices is not None:
        return _strict_item(base, indices[i])
    return dataset[i]


def _substitutes(dataset: Any) -> bool:
    """Whether ``dataset`` (or the dataset under a subset of it) may replace an unreadable item."""
    while dataset is not None:
        if hasattr(dataset, "load"):
            return True
        dataset = getattr(dataset, "base", None)
    return False


class StrictView(Dataset):
    """A dataset read without substitution: an unreadable item comes back as a zero image
    with label ``-1 - DECODE_REASONS.index(reason)``, so the reason travels with the batch
    from whichever worker process decoded it; :func:`evaluate` leaves those items out."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.image_size = int(dataset.image_size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            return _strict_item(self.dataset, i)
        except DecodeError as exc:
            s = self.image_size
            return torch.zeros(3, s, s, dtype=torch.uint8), -1 - DECODE_REASONS.index(exc.reason)

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        items = [self[i] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def strict_view(dataset: Any) -> Any:
    """``dataset`` as evaluation must read it: a :class:`StrictView` when it could substitute
    an unreadable item (folder datasets), else itself (prepared data keeps its fast path)."""
    return StrictView(dataset) if _substitutes(dataset) else dataset


def unreadable_reason(label: int) -> str | None:
    """The decode reason a :class:`StrictView` label stands for, or None for a real label."""
    return DECODE_REASONS[-1 - label] if label < 0 else None


def fit_images(images: Tensor, size: int) -> Tensor:
    """Bring a uint8 ``[B, 3, H, W]`` batch to the model's stored side ``size``.

    Images already at ``size`` pass through untouched (the normal case). Otherwise the
    shorter side is resized to ``size`` (antialiased) and the central square kept, the
    paper's rule, so a dataset stored at another side still evaluates correctly.
    """
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, :, top : top + size, left : left + size].round().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- probabilities


class Predictor:
    """One model with its test-time transform, on one device: uint8 batches -> softmax."""

    def __init__(self, model: nn.Module, meta: ModelMeta, crops: int = 1, device: torch.device | str | None = None):
        if crops not in (1, 10):
            raise EvaluationError(f"crops must be 1 (centre) or 10 (corners + centre, mirrored), got {crops}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.crops = crops
        self.transform = meta.eval_transform(ten_crop=crops == 10).to(self.device)
        self._centre: nn.Module | None = None

    @torch.inference_mode()
    def probs(self, images: Tensor) -> Tensor:
        """Softmax ``[B, C]`` (float32, on the predictor's device) for a uint8 batch."""
        x = self.transform(fit_images(images.to(self.device, non_blocking=True), self.meta.image_size))
        if x.dim() == 5:  # [B, 10, 3, c, c]: average the softmax over the ten patches
            b, n = x.shape[:2]
            return F.softmax(self.model(x.flatten(0, 1)).float(), dim=1).view(b, n, -1).mean(1)
        return F.softmax(self.model(x).float(), dim=1)

    @torch.inference_mode()
    def features(self, images: Tensor, layer: str | None = None) -> Tensor:
        """Activations of ``layer`` (flattened, float32) for the centre crop of a uint8 batch;
        by default the model's ``embedding_layer``, the last row before the logits (fc7 in
        AlexNet's layout, conv7 in ``alexnet_fast``)."""
        layer = self.model.embedding_layer if layer is None else layer
        if self.crops == 1:
            transform = self.transform
        else:  # features come from the centre crop whatever the prediction mode
            if self._centre is None:
                self._centre = self.meta.eval_transform().to(self.device)
            transform = self._centre
        x = transform(fit_images(images.to(self.device, non_blocking=True), self.meta.image_size))
        return self.model.forward_layers(x, [layer])[layer].flatten(1).float()


def class_probs(
    model: nn.Module, meta: ModelMeta, images: Tensor, crops: int = 1, device: torch.device | str | None = None
) -> Tensor:
    """Softmax ``[B, C]`` for a uint8 ``[B, 3, S, S]`` batch (ten crops: averaged softmax)."""
    return Predictor(model, meta, crops, device).probs(images)


def check_ensemble(metas: Sequence[ModelMeta]) -> None:
    """An ensemble averages probabilities over the same classes, so they must match exactly."""
    first = metas[0].classes
    for i, meta in enumerate(metas[1:], start=1):
        if meta.classes != first:
            raise EvaluationError(
                f"ensemble member {i} predicts different classes ({meta.num_classes} classes, "
                f"first {meta.classes[:3]}) than member 0 ({len(first)} classes, first {first[:3]})"
            )


def label_map(dataset_classes: Sequence[str], model_classes: Sequence[str]) -> Tensor:
    """Index in the model's output for each of the dataset's classes.

    A dataset may hold a subset of the model's classes (e.g. a few ImageNet synsets);
    a class the model cannot predict makes the evaluation meaningless and is an error.
    """
    position = {c: i for i, c in enumerate(model_classes)}
    missing = [c for c in dataset_classes if c not in position]
    if missing:
        raise EvaluationError(
            f"{len(missing)} of the dataset's {len(dataset_classes)} classes are unknown to the model "
            f"(e.g. {missing[:3]}); the model knows {len(model_classes)} classes (e.g. {list(model_classes[:3])})"
        )
    return torch.tensor([position[c] for c in dataset_classes], dtype=torch.int64)


@torch.inference_mode()
def dataset_probs(
    models: Sequence[ModelAndMeta],
    dataset: Any,
    crops: int = 1,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    num_workers: int | None = 0,
    progress: bool = False,
    skipped: list[tuple[str, str]] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(probs [B, C], labels [B])`` batches over the readable images of ``dataset``,
    averaged over the ensemble.

    Labels are mapped into the models' class space (see :func:`label_map`). Each member
    uses its own preprocessing (statistics, crop size), so differently trained models mix.
    Unreadable images are left out (never replaced by a neighbour); ``skipped``, if given,
    receives their ``(path, reason)``.
    """
    for probs, labels, _ in _scored_batches(models, dataset, crops, batch_size, device, num_workers, progress, skipped):
        yield probs, labels


def _scored_batches(
    models: Sequence[ModelAndMeta],
    dataset: Any,
    crops: int,
    batch_size: int,
    device: torch.device | str | None,
    num_workers: int | None,
    progress: bool,
    skipped: list[tuple[str, str]] | None,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``(probs, labels, dataset indices)`` of the readable images, batch by batch."""
    if not models:
        raise EvaluationError("no model to evaluate")
    check_ensemble([meta for _, meta in models])
    predictors = [Predictor(m, meta, crops, device) for m, meta in models]
    mapping = label_map(list(dataset.classes), models[0][1].classes)
    batches = iter_batches(strict_view(dataset), batch_size, num_workers)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=math.ceil(len(dataset) / batch_size), unit="batch", desc="evaluate")
    start = 0  # batches come in index order (no shuffle, one process)
    for images, labels in batches:
        indices = torch.arange(start, start + len(labels))
        start += len(labels)
        bad = labels < 0
        if bad.any():
            for i, y in zip(indices[bad].tolist(), labels[bad].tolist(), strict=True):
                entry = (_path_of(dataset, i), unreadable_reason(y) or "unreadable")
                if skipped is not None:
                    skipped.append(entry)
            keep = ~bad
            images, labels, indices = images[keep], labels[keep], indices[keep]
            if not len(labels):
                continue
        probs = predictors[0].probs(images)
        for p in predictors[1:]:
            probs = probs + p.probs(images).to(probs.device)
        yield probs / len(predictors), mapping[labels].to(probs.device), indices


def _path_of(dataset: Any, i: int) -> str:
    try:
        return str(dataset.path_of(i))
    except (AttributeError, IndexError, OSError, ValueError):
        return f"item {i}"


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Accuracy figures of one model or ensemble on one dataset split.

    ``confusion[t, p]`` counts images of true class t predicted (top-1) as p, in the model's
    class space. ``top_idx``/``top_prob`` keep each image's top-5 for reports; row ``r``
    is dataset item ``indices[r]``.

    ``num_images`` counts the images actually read, and every figure is over them alone;
    ``skipped`` lists ``(path, reason)`` of the unreadable ones, left out (never replaced).
    """

    num_images: int
    top1: float  # accuracy, fraction 0..1
    top5: float
    classes: list[str]
    class_names: list[str]
    confusion: Tensor  # int64 [C, C]
    crops: int = 1
    models: list[str] = field(default_factory=list)
    top_idx: Tensor | None = None  # int64 [N, k]
    top_prob: Tensor | None = None  # float32 [N, k]
    labels: Tensor | None = None  # int64 [N], model class space
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable: (path, reason)
    indices: Tensor | None = None  # int64 [N]: the dataset item of each row

    @property
    def num_skipped(self) -> int:
        """Images of the dataset that could not be read and are in no figure."""
        return len(self.skipped)

    @property
    def top1_error(self) -> float:
        return 1.0 - self.top1

    @property
    def top5_error(self) -> float:
        return 1.0 - self.top5

    @property
    def class_counts(self) -> Tensor:
        return self.confusion.sum(1)

    @property
    def per_class(self) -> list[float | None]:
        """Top-1 accuracy per class (None for classes with no images)."""
        counts = self.class_counts
        correct = self.confusion.diagonal()
        return [c / n if n else None for c, n in zip(correct.tolist(), counts.tolist(), strict=True)]

    def to_dict(self, confusion: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "num_images": self.num_images,
            "num_skipped": self.num_skipped,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "crops": self.crops,
            "models": self.models,
            "top1_accuracy": self.top1,
            "top5_accuracy": self.top5,
            "top1_error": self.top1_error,
            "top5_error": self.top5_error,
            "per_class": [
                {"class": c, "name": n, "images": k, "accuracy": a}
                for c, n, k, a in zip(
                    self.classes, self.class_names, self.class_counts.tolist(), self.per_class, strict=True
                )
                if k
            ],
        }
        if confusion:
            d["classes"] = self.classes
            d["confusion"] = self.confusion.tolist()
        return d

    def format_table(self, max_classes: int = 20) -> str:
        """Human-readable summary: the paper's error figures, then per-class accuracy."""
        what = " + ".join(Path(m).name for m in self.models) or "model"
        skipped = f" ({self.num_skipped:,} unreadable, skipped and not counted)" if self.skipped else ""
        lines = [
            f"{what}: {self.num_images:,} images{skipped}, {'10-crop' if self.crops == 10 else 'centre crop'}",
            "",
            f"{'':8}{'accuracy':>10}{'error':>10}",
            f"{'top-1':8}{self.top1 * 100:>9.2f}%{self.top1_error * 100:>9.2f}%",
            f"{'top-5':8}{self.top5 * 100:>9.2f}%{self.top5_error * 100:>9.2f}%",
        ]
        rows = [
            (n, k, a)
            for n, k, a in zip(self.class_names, self.class_counts.tolist(), self.per_class, strict=True)
            if k
        ]
        if rows and max_classes > 0:
            rows.sort(key=lambda r: r[2])
            worst = max_classes // 2
            shown = rows if len(rows) <= max_classes else [*rows[:worst], None, *rows[len(rows) - (max_classes - worst) :]]
            width = min(40, max(len(r[0]) for r in rows))
            lines += ["", f"{'class':<{width}}  {'images':>7}  {'top-1 acc':>9}"]
            for r in shown:
                if r is None:
                    lines.append(f"{'...':<{width}}  ({len(rows) - max_classes} classes omitted; worst and best shown)")
                else:
                    lines.append(f"{r[0][:width]:<{width}}  {r[1]:>7}  {r[2] * 100:>8.2f}%")
        return "\n".join(lines)


def evaluate(
    models: Sequence[ModelAndMeta] | ModelAndMeta,
    dataset: Any,
    crops: int = 1,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    num_workers: int | None = 0,
    progress: bool = False,
    names: Sequence[str] = (),
) -> EvalResult:
    """Top-1/top-5 accuracy, per-class accuracy and the confusion matrix of a model or ensemble,
    over the images actually read; unreadable ones are listed in ``skipped`` (and added to
    ``dataset.bad_files``), never replaced by a neighbour."""
    if isinstance(models, tuple) and len(models) == 2 and isinstance(models[0], nn.Module):
        models = [models]
    models = list(models)
    meta = models[0][1]
    c = meta.num_classes
    k = min(5, c)
    confusion = torch.zeros(c * c, dtype=torch.int64)
    top1 = top5 = n = 0
    idx_parts, prob_parts, label_parts, row_parts = [], [], [], []
    skipped: list[tuple[str, str]] = []
    batches = _scored_batches(models, dataset, crops, batch_size, device, num_workers, progress, skipped)
    for probs, labels, rows in batches:
        top_prob, top_idx = probs.topk(k, dim=1)
        hits1, hits5 = count_hits(top_idx, labels).tolist()
        top1 += hits1
        top5 += hits5
        n += labels.numel()
        confusion += torch.bincount((labels * c + top_idx[:, 0]).cpu(), minlength=c * c)
        idx_parts.append(top_idx.cpu())
        prob_parts.append(top_prob.cpu())
        label_parts.append(labels.cpu())
        row_parts.append(rows)
    bad = getattr(dataset, "bad_files", None)
    if isinstance(bad, list):  # where `data info` and the CLI look for unreadable files
        bad.extend(e for e in skipped if e not in bad)
    if n == 0:
        if skipped:
            raise EvaluationError(
                f"none of the dataset's {len(skipped)} images could be read (e.g. {skipped[0][0]}: {skipped[0][1]})"
            )
        raise EvaluationError("the dataset has no images to evaluate")
    return EvalResult(
        num_images=n,
        top1=top1 / n,
        top5=top5 / n,
        classes=list(meta.classes),
        class_names=list(meta.class_names),
        confusion=confusion.view(c, c),
        crops=crops,
        models=[str(x) for x in names],
        top_idx=torch.cat(idx_parts),
        top_prob=torch.cat(prob_parts),
        labels=torch.cat(label_parts),
        skipped=skipped,
        indices=torch.cat(row_parts),
    )


# --------------------------------------------------------------------------- single images


class Prediction(NamedTuple):
    """One ranked label: model output index, class id (e.g. synset), readable name, probability."""

    index: int
    class_id: str
    name: str
    prob: float


def load_image(source: str | Path | bytes, size: int) -> Tensor:
    """Decode one image to uint8 ``[3, size, size]`` (shorter side to ``size``, central square),
    upright as its EXIF orientation says (a single photo is judged as it is seen).

    Raises :class:`ImageLoadError` with the reason for anything that is not a usable image.
    """
    import numpy as np

    from alexnet.data.decode import DecodeError, decode_image, read_image, resize_center_crop

    try:
        if isinstance(source, bytes):
            array = decode_image(source, min_side=size, orient=True)
        else:
            array = read_image(source, min_side=size, orient=True)
    except DecodeError as exc:
        name = "uploaded image" if isinstance(source, bytes) else str(source)
        raise ImageLoadError(f"{name}: {exc}") from None
    patch = resize_center_crop(array, size).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(patch))


def predict_images(
    model: nn.Module,
    meta: ModelMeta,
    images: Sequence[Tensor | str | Path] | Tensor,
    k: int = 5,
    crops: int = 1,
    device: torch.device | str | None = None,
) -> list[list[Prediction]]:
    """Top-``k`` labels with probabilities for each image.

    ``images``: uint8 tensors ``[3, H, W]`` (any side; brought to the model's) or a uint8
    batch, or file paths (decoded with :func:`load_image`; a bad file raises
    :class:`ImageLoadError`, see :func:`predict_files` for per-file errors).
    """
    if isinstance(images, Tensor) and images.dim() == 4:
        batch = fit_images(images, meta.image_size)
    else:
        tensors = [
            fit_images(im.unsqueeze(0), meta.image_size)[0] if isinstance(im, Tensor) else load_image(im, meta.image_size)
            for im in images
        ]
        if not tensors:
            return []
        batch = torch.stack(tensors)
    if batch.dtype != torch.uint8:
        raise TypeError(f"images must be uint8, got {batch.dtype}")
    probs = class_probs(model, meta, batch, crops, device).cpu()
    top_prob, top_idx = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        [Prediction(i, meta.classes[i], meta.class_names[i], p) for i, p in zip(ti.tolist(), tp.tolist(), strict=True)]
        for ti, tp in zip(top_idx, top_prob, strict=True)
    ]


def predict_files(
    model: nn.Module,
    meta: ModelMeta,
    paths: Sequence[str | Path],
    k: int = 5,
    crops: int = 1,
    device: torch.device | str | None = None,
    batch_size: int = 64,
) -> list[dict[str, Any]]:
    """Per file: ``{"path", "top": [Prediction, ...]}`` or ``{"path", "error": reason}``.

    A bad file never stops the others: it is reported with the decoder's reason.
    """
    out: list[dict[str, Any]] = []
    good: list[tuple[int, Tensor]] = []
    for p in paths:
        try:
            good.append((len(out), load_image(p, meta.image_size)))
            out.append({"path": str(p)})
        except ImageLoadError as exc:
            out.append({"path": str(p), "error": str(exc)})
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        preds = predict_images(model, meta, torch.stack([t for _, t in chunk]), k, crops, device)
        for (i, _), top in zip(chunk, preds, strict=True):
            out[i]["top"] = top
    return out
