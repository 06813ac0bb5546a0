"""The unit atlas: what each channel of every conv stage responds to, from evidence.

The stages are the model's own convolutional rows (``model.conv_layers``: conv1..conv5 in
AlexNet's layout, conv1..conv7 in ``alexnet_fast``); the probes read every row before the
logits (``model.hidden_layers``).

One pass of a trained model over (an evenly spaced sample of) its training images records,
for every channel of every conv stage, the ``top_k`` images on which the channel fires
most (each image's strongest location, so the top patches are ``top_k`` different images,
as in Zeiler & Fergus 2014, Figure 2). A second, short pass cuts each hit's **receptive
field** out of the network's input crop: the field is computed from the architecture
(:func:`receptive_fields` composes the kernel, stride and padding of every convolution
and pooling the stage runs through), not guessed; where it reaches past the image the
patch is filled with grey (128).

The same pass collects pooled activations for the per-layer linear probes and, over the
validation split, the softmax scores that calibrate the out-of-class threshold
(:mod:`alexnet.analysis.probes`); both are stored with the atlas.

**Measured per-layer summary** (:func:`layer_summary`), so captions say what was seen, not a
fixed phrase. For each unit the mean of its top patches (what its hits have in common;
what differs averages out) gives two numbers:

* *orientation coherence* of the mean patch's luminance: ``(l1 - l2) / (l1 + l2)`` of the
  gradient structure tensor, 0 for no dominant orientation, 1 for a perfect edge or grating;
* *colour* and *luminance*: RMS chroma (each pixel's distance from its own grey) and RMS
  luminance of the mean patch minus the layer's average patch colour.

A unit is *oriented* when its coherence is at least :data:`ORIENTED` and *colour* when its
colour exceeds its luminance and :data:`COLOURED`; the shares of oriented edges (oriented, not colour), colour blobs
(colour, not oriented), colour edges (both) and others sum to 1. *Class purity* is the share
of a unit's top images from its most common class. Every figure comes with a **baseline**:
the same statistics on pseudo-units whose ``top_k`` patches are drawn from random other
units of the layer, i.e. what the numbers would be if the top patches had nothing in common.

**Storage**: ``<model cache>/atlas/`` with ``atlas.safetensors`` (per layer: top values,
image positions, feature-map locations, labels, patches, unit statistics; the probes) and
``atlas.json`` (model, weights digest, data, sample size, receptive fields, summaries,
probe accuracies, the out-of-class calibration). The model cache
(:func:`model_cache_dir`) is ``<root>/<first 16 hex of the weights' SHA-256>/``, the place
for everything computed from one set of weights (a neighbour index belongs beside it,
e.g. ``fc7-index/``); the root (:func:`cache_root`) is ``RUN/analysis`` for a model in a
run directory and ``<data home>/analysis`` otherwise. :func:`ensure_atlas` builds once
and reuses.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.analysis.probes import OODCalibration, Probes, fit_probes, pooled
from alexnet.analysis.retrieval import read_stored, weights_fingerprint
from alexnet.checkpoint import ModelMeta
from alexnet.data.sampling import spaced_indices
from alexnet.errors import EvaluationError, IndexFormatError
from alexnet.evaluation import fit_images, iter_batches
from alexnet.files import atomic_write_bytes
from alexnet.models import CONV_LAYER_NAMES as CONV_LAYERS  # noqa: F401 (AlexNet's stages; a model's own: model.conv_layers)

log = logging.getLogger("alexnet")

ATLAS_VERSION = 1
ATLAS_TENSORS = "atlas.safetensors"
ATLAS_JSON = "atlas.json"
ORIENTED = 0.5  # structure-tensor coherence from which a mean patch counts as oriented
COLOURED = 0.04  # RMS chroma (0..1 scale, ~10 grey levels) below which no patch counts as coloured
GREY = 128


# --------------------------------------------------------------------------- receptive fields


@dataclass(frozen=True)
class ReceptiveField:
    """The input window of a stage's units: unit ``(y, x)`` sees rows ``start + y * stride``
    to ``start + y * stride + size - 1`` (columns likewise) of the network input; a negative
    ``start`` reaches into the zero padding."""

    size: int
    stride: int
    start: int

    def box(self, y: int, x: int) -> tuple[int, int, int]:
        """``(top, left, size)`` of unit ``(y, x)``'s field in input pixels."""
        return self.start + y * self.stride, self.start + x * self.stride, self.size


def _window(module: nn.Module) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a conv or pooling module, square only."""

    def one(v: Any, what: str) -> int:
        if isinstance(v, tuple | list):
            if len(set(v)) != 1:
                raise EvaluationError(f"receptive fields need square windows; {module} has {what} {v}")
            v = v[0]
        return int(v)

    if isinstance(module.padding, str):
        raise EvaluationError(f"receptive fields need numeric padding; {module} has {module.padding!r}")
    return (one(module.kernel_size, "kernel"), one(module.stride, "stride"), one(module.padding, "padding"),
            one(getattr(module, "dilation", 1), "dilation"))


def receptive_fields(model: nn.Module, input_size: int, layers: Sequence[str] | None = None) -> dict[str, ReceptiveField]:
    """Each conv stage's :class:`ReceptiveField` (``layers``, default the model's ``conv_layers``),
    from the windows the stage really applies.

    Runs ``forward_layers`` on a zero image once per layer with hooks on every ``Conv2d`` and
    ``MaxPool2d``/``AvgPool2d`` call (a module used twice, like AlexNet's one pooling module,
    counts twice) and composes them in call order: a window of kernel ``k`` (dilated: ``d (k-1) + 1``),
    stride ``s`` and padding ``p`` turns (size ``r``, stride ``j``, start ``a``) into
    ``(r + (k-1) j, j s, a - p j)``. Element-wise operations (ReLU, LRN, batch norm) keep it.
    """
    calls: list[nn.Module] = []
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    hooks = [m.register_forward_hook(lambda mod, _i, _o: calls.append(mod)) for m in model.modules() if isinstance(m, kinds)]
    out: dict[str, ReceptiveField] = {}
    layers = model.conv_layers if layers is None else layers
    try:
        param = next(model.parameters())
        x = torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype)
        with torch.inference_mode():
            for name in layers:
                calls.clear()
                model.forward_layers(x, [name])
                size, stride, start = 1, 1, 0
                for mod in calls:
                    k, s, p, d = _window(mod)
                    size, start, stride = size + (d * (k - 1)) * stride, start - p * stride, stride * s
                out[name] = ReceptiveField(size, stride, start)
    finally:
        for h in hooks:
            h.remove()
    return out


def cut_patch(image: Tensor, rf: ReceptiveField, y: int, x: int) -> Tensor:
    """Unit ``(y, x)``'s field cut from a uint8 ``[3, H, W]`` input crop; grey where it leaves the image."""
    top, left, size = rf.box(y, x)
    h, w = image.shape[-2:]
    patch = torch.full((3, size, size), GREY, dtype=torch.uint8)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + size, h), min(left + size, w)
    if t1 > t0 and l1 > l0:
        patch[:, t0 - top : t1 - top, l0 - left : l1 - left] = image[:, t0:t1, l0:l1]
    return patch


def mosaic(patches: Tensor, side: int = 40, cols: int = 3, gap: int = 1) -> Tensor:
    """uint8 ``[K, 3, P, P]`` -> one uint8 ``[3, H, W]`` picture: the patches upscaled (nearest)
    to ``side`` px, ``cols`` per row, separated by ``gap`` px of white."""
    k, p = patches.shape[0], patches.shape[-1]
    rows = math.ceil(k / cols)
    out = torch.full((3, rows * side + (rows - 1) * gap, cols * side + (cols - 1) * gap), 255, dtype=torch.uint8)
    idx = torch.arange(side) * p // side
    for i in range(k):
        r, c = divmod(i, cols)
        top, left = r * (side + gap), c * (side + gap)
        out[:, top : top + side, left : left + side] = patches[i][:, idx][:, :, idx]
    return out


def _resize(patch: Tensor, side: int) -> Tensor:
    if patch.shape[-1] == side:
        return patch
    x = F.interpolate(patch.unsqueeze(0).float(), size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return x[0].round().clamp_(0, 255).to(torch.uint8)


def centre_crop(images: Tensor, meta: ModelMeta) -> Tensor:
    """The uint8 network input the evaluation transform normalises: stored side, then centre crop."""
    images = fit_images(images, meta.image_size)
    s, c = images.shape[-1], meta.input_size
    o = (s - c) // 2
    return images[..., o : o + c, o : o + c]


# --------------------------------------------------------------------------- unit statistics


def patch_statistics(patches: Tensor, reference: Tensor | None = None) -> dict[str, Tensor]:
    """Per unit, from its top patches uint8 ``[U, K, 3, P, P]``, three numbers about the mean patch
    ``m`` (0..1 scale), each ``[U]``:

    * ``coherence``: orientation coherence of ``m``'s luminance (structure tensor);
    * ``colour``: RMS chroma of ``m - reference`` (each pixel's distance from its own grey);
    * ``luminance``: RMS luminance of ``m - reference``.

    ``reference`` (``[3]``, default the mean colour of all the patches) is the colour an
    average of unrelated patches tends to, so a unit is colour-dominated only when its
    hits share a colour the data at large does not have.
    """
    m = patches.float().mean(1) / 255.0  # [U, 3, P, P]
    ref = m.mean((0, 2, 3)) if reference is None else reference
    d = m - ref.view(1, 3, 1, 1)
    lum_d = d.mean(1)
    colour = (d - lum_d.unsqueeze(1)).pow(2).mean((1, 2, 3)).sqrt()
    luminance = lum_d.pow(2).mean((1, 2)).sqrt()
    lum = m.mean(1)  # [U, P, P]
    gy, gx = torch.zeros_like(lum), torch.zeros_like(lum)
    gy[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2
    gx[:, :, 1:-1] = (lum[:, :, 2:] - lum[:, :, :-2]) / 2
    jxx, jyy, jxy = (gx * gx).sum((1, 2)), (gy * gy).sum((1, 2)), (gx * gy).sum((1, 2))
    trace = jxx + jyy
    coherence = torch.where(trace > 1e-12, ((jxx - jyy) ** 2 + 4 * jxy**2).sqrt() / trace.clamp_min(1e-12), torch.zeros_like(trace))
    return {"coherence": coherence, "colour": colour, "luminance": luminance}


def purity(labels: Tensor) -> Tensor:
    """Share of each unit's top images ``[U, K]`` (labels, -1 for none) from its most common class."""
    out = torch.zeros(labels.shape[0])
    for u, row in enumerate(labels.tolist()):
        row = [v for v in row if v >= 0]
        if row:
            out[u] = max(row.count(v) for v in set(row)) / len(row)
    return out


def _shares(stats: dict[str, Tensor]) -> dict[str, float]:
    oriented = stats["coherence"] >= ORIENTED
    colour = (stats["colour"] > stats["luminance"]) & (stats["colour"] >= COLOURED)
    n = max(1, oriented.numel())
    return {
        "oriented_edge": float((oriented & ~colour).sum()) / n,
        "colour_blob": float((colour & ~oriented).sum()) / n,
        "colour_edge": float((colour & oriented).sum()) / n,
        "other": float((~colour & ~oriented).sum()) / n,
    }


def layer_summary(patches: Tensor, labels: Tensor, values: Tensor, seed: int = 0) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(summary, per-unit statistics) of one layer: shares of oriented edges / colour blobs /
    colour edges / others, class purity, dead units, each beside its shuffled baseline."""
    live = values[:, 0] > 0
    reference = patches.float().mean((0, 1, 3, 4)) / 255.0
    stats = patch_statistics(patches, reference)
    stats["purity"] = purity(labels)
    u, k = labels.shape
    g = torch.Generator().manual_seed(seed)
    pick_unit = torch.randint(0, u, (u, k), generator=g)  # pseudo-unit: each patch from a random unit
    pick_rank = torch.randint(0, k, (u, k), generator=g)
    base_patches = patches[pick_unit, pick_rank]
    base_stats = patch_statistics(base_patches, reference)
    base_stats["purity"] = purity(labels[pick_unit, pick_rank])
    idx = live if bool(live.any()) else torch.ones_like(live)
    summary = {
        "units": u,
        "dead": int((~live).sum()),
        **_shares({k_: v[idx] for k_, v in stats.items()}),
        "purity": float(stats["purity"][idx].mean()),
        "baseline": {**_shares(base_stats), "purity": float(base_stats["purity"].mean())},
    }
    return summary, stats


# --------------------------------------------------------------------------- the atlas


@dataclass
class LayerAtlas:
    """One conv stage: for each of its ``C`` channels the ``K`` strongest hits and their patches."""

    name: str
    rf: ReceptiveField
    values: Tensor  # float32 [C, K], descending; 0 where the unit did not fire (no hit)
    images: Tensor  # int64 [C, K]: positions in the dataset (-1: no hit: the unit was 0 on every other image)
    locations: Tensor  # int64 [C, K, 2]: (y, x) in the stage's feature map
    labels: Tensor  # int64 [C, K]: dataset labels of those images (-1: no hit)
    patches: Tensor  # uint8 [C, K, 3, P, P]
    unit_stats: dict[str, Tensor] = field(default_factory=dict)  # name -> [C]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    def unit(self, channel: int) -> dict[str, Any]:
        """What the page shows for one channel: its hits (dataset position, label, location,
        activation) and statistics; the patches are ``self.patches[channel]``."""
        if not 0 <= channel < self.channels:
            raise EvaluationError(f"{self.name} has {self.channels} channels; no channel {channel}")
        hits = [
            {"image": int(i), "label": int(lab), "y": int(yx[0]), "x": int(yx[1]), "value": float(v)}
            for i, lab, yx, v in zip(self.images[channel].tolist(), self.labels[channel].tolist(),
                                     self.locations[channel].tolist(), self.values[channel].tolist(), strict=True)
            if i >= 0
        ]
        return {"layer": self.name, "channel": channel, "hits": hits,
                **{k: float(v[channel]) for k, v in self.unit_stats.items()}}

    def mosaic(self, channel: int, side: int = 40, cols: int = 3, gap: int = 1) -> Tensor:
        """The channel's top patches as one uint8 ``[3, H, W]`` picture (white gaps), each
        patch upscaled by nearest neighbour to ``side`` px: the tile the page and the report show."""
        if not 0 <= channel < self.channels:
            raise EvaluationError(f"{self.name} has {self.channels} channels; no channel {channel}")
        return mosaic(self.patches[channel], side, cols, gap)

    def showcase(self, n: int) -> list[int]:
        """``n`` channels for a figure: evenly spaced over the live channels in index order
        (a rule fixed in advance, so the figure is a sample, not a selection of the prettiest)."""
        live = [c for c in range(self.channels) if float(self.values[c, 0]) > 0] or list(range(self.channels))
        return [live[i] for i in spaced_indices(len(live), n)]


@dataclass
class Atlas:
    """Per conv stage a :class:`LayerAtlas`; the probes and out-of-class calibration; provenance."""

    layers: dict[str, LayerAtlas]
    info: dict[str, Any]
    probes: Probes | None = None
    ood: OODCalibration | None = None

    def caption(self, layer: str) -> str:
        """One measured sentence about what ``layer``'s units were seen to respond to."""
        la = self.layers[layer]
        s, b = la.summary, la.summary["baseline"]
        n = self.info.get("sample", 0)
        live = s["units"] - s["dead"]
        text = (
            f"{layer}: of {live} active units (of {s['units']}), top patches share an orientation in "
            f"{s['oriented_edge'] + s['colour_edge']:.0%} (oriented edges {s['oriented_edge']:.0%}, colour edges "
            f"{s['colour_edge']:.0%}) and are colour-dominated blobs in {s['colour_blob']:.0%}; "
            f"their top {la.values.shape[1]} images come {s['purity']:.0%} from one class on average. "
            f"Unrelated patches would give {b['oriented_edge'] + b['colour_edge']:.0%} oriented, "
            f"{b['colour_blob']:.0%} colour blobs, {b['purity']:.0%} one class "
            f"(receptive field {la.rf.size} px{self._beyond(la)}; {n:,} training images)."
        )
        if self.probes is not None and layer in self.probes.probes:
            p = self.probes.probes[layer]
            if math.isfinite(p.val_accuracy):
                text += f" A linear probe on its pooled channels names the class of {p.val_accuracy:.0%} of validation images."
        return text

    def _beyond(self, la: LayerAtlas) -> str:
        side = self.info.get("input_size")
        return f", more than the {side} px input" if side and la.rf.size > side else ""

    def to_json(self) -> dict[str, Any]:
        """Everything but the tensors: for the page's captions (``/api/atlas``)."""
        return {
            "info": self.info,
            "layers": {
                name: {"channels": la.channels, "top_k": la.values.shape[1], "patch_size": la.patches.shape[-1],
                       "receptive_field": {"size": la.rf.size, "stride": la.rf.stride, "start": la.rf.start},
                       "summary": la.summary, "caption": self.caption(name)}
                for name, la in self.layers.items()
            },
            "probes": None if self.probes is None else self.probes.summary(),
            "ood": None if self.ood is None else self.ood.to_dict(),
        }

    # ------------------------------------------------------------------ disk

    def save(self, directory: str | Path) -> Path:
        """Write ``atlas.safetensors`` and ``atlas.json`` (each atomically; the JSON last)."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for name, la in self.layers.items():
            for key in ("values", "images", "locations", "labels", "patches"):
                tensors[f"{name}.{key}"] = getattr(la, key).cpu().contiguous()
            for key, v in la.unit_stats.items():
                tensors[f"{name}.stat.{key}"] = v.float().cpu().contiguous()
        if self.probes is not None:
            tensors |= self.probes.tensors()
        atomic_write_bytes(directory / ATLAS_TENSORS, save(tensors))
        doc = {
            "version": ATLAS_VERSION,
            "info": self.info,
            "layers": {name: {"rf": [la.rf.size, la.rf.stride, la.rf.start], "summary": la.summary,
                              "stats": sorted(la.unit_stats)} for name, la in self.layers.items()},
            "probes": None if self.probes is None else self.probes.doc(),
            "ood": None if self.ood is None else self.ood.to_dict(),
        }
        atomic_write_bytes(directory / ATLAS_JSON, (json.dumps(doc, indent=1) + "\n").encode())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Atlas:
        """Read an atlas written by :meth:`save`; :class:`IndexFormatError` if missing or inconsistent."""
        directory = Path(directory)
        doc, tensors = read_stored(directory, ATLAS_JSON, ATLAS_TENSORS, "unit atlas")
        try:
            if doc.get("version") != ATLAS_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')}")
            layers = {}
            for name, d in doc["layers"].items():
                la = LayerAtlas(
                    name, ReceptiveField(*(int(v) for v in d["rf"])),
                    tensors[f"{name}.values"].float(), tensors[f"{name}.images"].long(),
                    tensors[f"{name}.locations"].long(), tensors[f"{name}.labels"].long(),
                    tensors[f"{name}.patches"],
                    {k: tensors[f"{name}.stat.{k}"] for k in d["stats"]}, dict(d["summary"]),
                )
                c, k = la.values.shape
                if la.images.shape != (c, k) or la.locations.shape != (c, k, 2) or la.patches.shape[:2] != (c, k):
                    raise ValueError(f"{name}: tensors disagree in shape")
                layers[name] = la
            probes = None if doc.get("probes") is None else Probes.from_stored(doc["probes"], tensors)
            ood = None if doc.get("ood") is None else OODCalibration.from_dict(doc["ood"])
            return cls(layers, dict(doc["info"]), probes, ood)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IndexFormatError(f"unit atlas in {directory} is inconsistent: {exc}") from None


# --------------------------------------------------------------------------- building


class _TopK:
    """Running top-``k`` images per channel of one stage (each image's best location)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: Tensor | None = None  # [C, k]
        self.images: Tensor | None = None
        self.where: Tensor | None = None  # flat spatial index

    def update(self, act: Tensor, positions: Tensor) -> None:
        b, c = act.shape[:2]
        best, where = act.flatten(2).float().max(2)  # [B, C]
        vals, imgs, locs = best.T.cpu(), positions.view(1, b).expand(c, b), where.T.cpu()
        if self.values is not None:
            vals = torch.cat([self.values, vals], 1)
            imgs = torch.cat([self.images, imgs], 1)
            locs = torch.cat([self.where, locs], 1)
        top, order = vals.topk(min(self.k, vals.shape[1]), dim=1)
        self.values, self.images, self.where = top, imgs.gather(1, order), locs.gather(1, order)


def _features_pass(
    model: nn.Module, meta: ModelMeta, dataset: Any, positions: list[int], *, layers: Sequence[str],
    top: dict[str, _TopK] | None, pooled_layers: Sequence[str], keep_probs: bool, batch_size: int,
    device: torch.device, num_workers: int | None, progress: str | None, keep: Sequence[int] | None = None,
) -> tuple[dict[str, Tensor], Tensor, Tensor | None, dict[str, tuple[int, int]]]:
    """One pass: updates ``top``, returns (pooled features, labels, softmax or None, map sizes).

    Features, labels and softmax are kept only for the items ``keep`` (indices into
    ``positions``; None: all), so a 50k-image pass holds fc6/fc7 vectors of the probe
    subset alone."""
    kept = None if keep is None else torch.zeros(len(positions), dtype=torch.bool)
    if kept is not None:
        kept[list(keep)] = True
    from torch.utils.data import Subset

    transform = meta.eval_transform().to(device)
    wanted = list(dict.fromkeys([*layers, *pooled_layers, *(["fc8"] if keep_probs else [])]))
    feats: dict[str, list[Tensor]] = {name: [] for name in pooled_layers}
    labels, probs, shapes = [], [], {}
    batches = iter_batches(Subset(dataset, positions), batch_size, num_workers)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=math.ceil(len(positions) / batch_size), unit="batch", desc=progress)
    done = 0
    with torch.inference_mode():
        for images, y in batches:
            x = transform(fit_images(images.to(device), meta.image_size))
            acts = model.forward_layers(x, wanted)
            pos = torch.tensor(positions[done : done + len(y)], dtype=torch.int64)
            rows = slice(None) if kept is None else kept[done : done + len(y)].to(x.device)
            done += len(y)
            if top is not None:
                for name in layers:
                    top[name].update(acts[name], pos)
                    shapes[name] = tuple(acts[name].shape[-2:])
            for name in pooled_layers:
                feats[name].append(pooled(acts[name][rows]).cpu())
            if keep_probs:
                probs.append(F.softmax(acts["fc8"][rows].float(), 1).cpu())
            labels.append(y[rows.cpu() if isinstance(rows, Tensor) else rows])
    if not done:
        raise EvaluationError("the dataset has no images for the atlas")
    return ({k: torch.cat(v) for k, v in feats.items()}, torch.cat(labels),
            torch.cat(probs) if keep_probs else None, shapes)


def build_atlas(
    model: nn.Module,
    meta: ModelMeta,
    train: Any,
    val: Any | None = None,
    *,
    sample: int | None = 5000,
    top_k: int = 9,
    patch_size: int = 48,
    probe_images: int = 10000,
    ood_images: int = 5000,
    probes: bool = True,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    num_workers: int | None = 0,
    progress: bool = False,
) -> Atlas:
    """Build the unit atlas of ``model`` from ``train`` (and probes/calibration from ``val``).

    ``sample``: images of ``train`` to look at, evenly spaced (None: all). ``patch_size``:
    stored side of the patches (fields larger than this are downscaled). ``probe_images``:
    of the sample, how many feed the probes (evenly spaced; fc6/fc7 features are large).
    The stages are the model's ``conv_layers``, the probes' layers its ``hidden_layers``.
    ``val``: validation split for the probes' accuracy and the out-of-class threshold
    (at most ``ood_images``); without it neither is scored and ``ood`` is None.
    """
    from alexnet.devices import resolve_device

    t0 = time.perf_counter()
    device = resolve_device(device)
    model = model.to(device).eval()
    positions = spaced_indices(len(train), sample)
    if not positions:
        raise EvaluationError("the training split has no images for the atlas")
    conv_layers = tuple(model.conv_layers)
    rfs = receptive_fields(model, meta.input_size, conv_layers)
    top = {name: _TopK(top_k) for name in conv_layers}
    probe_pos = spaced_indices(len(positions), probe_images) if probes else []
    pooled_layers = list(model.hidden_layers) if probes else []
    feats, labels, _, shapes = _features_pass(
        model, meta, train, positions, layers=conv_layers, top=top, pooled_layers=pooled_layers, keep_probs=False,
        batch_size=batch_size, device=device, num_workers=num_workers, progress="atlas" if progress else None,
        keep=probe_pos,
    )
    # Patches: only the images that are someone's top hit, read again (at most C x K of them).
    needed = sorted({int(i) for t in top.values() for i in t.images[t.values > 0].tolist()})
    crops: dict[int, Tensor] = {}
    label_of: dict[int, int] = {}
    from torch.utils.data import Subset

    done = 0
    batches = iter_batches(Subset(train, needed), batch_size, num_workers) if needed else []
    for images, ys in batches:  # decoded in the loader's workers
        for image, y, i in zip(centre_crop(images, meta), ys.tolist(), needed[done : done + len(ys)], strict=True):
            crops[i], label_of[i] = image.clone(), int(y)
        done += len(ys)
    layers: dict[str, LayerAtlas] = {}
    for name in conv_layers:
        t, rf = top[name], rfs[name]
        _, w = shapes[name]
        c, k = t.values.shape
        side = min(rf.size, patch_size)
        patches = torch.full((c, top_k, 3, side, side), GREY, dtype=torch.uint8)
        images = torch.full((c, top_k), -1, dtype=torch.int64)
        values = torch.zeros(c, top_k)
        locations = torch.zeros(c, top_k, 2, dtype=torch.int64)
        labs = torch.full((c, top_k), -1, dtype=torch.int64)
        for ch in range(c):
            for r in range(k):
                if float(t.values[ch, r]) <= 0:  # never fired on the rest: no hit to show (stays -1, grey)
                    break
                i, flat = int(t.images[ch, r]), int(t.where[ch, r])
                yx = divmod(flat, w)
                patches[ch, r] = _resize(cut_patch(crops[i], rf, *yx), side)
                images[ch, r], values[ch, r], labs[ch, r] = i, float(t.values[ch, r]), label_of[i]
                locations[ch, r] = torch.tensor(yx)
        summary, stats = layer_summary(patches, labs, values)
        summary["receptive_field"] = rf.size
        layers[name] = LayerAtlas(name, rf, values, images, locations, labs, patches, stats, summary)

    fitted = ood = None
    val_count = 0
    if probes or val is not None:
        val_feats = val_labels = None
        if val is not None and len(val):
            vpos = spaced_indices(len(val), ood_images)
            val_feats, val_labels, val_probs, _ = _features_pass(
                model, meta, val, vpos, layers=(), top=None, pooled_layers=pooled_layers, keep_probs=True,
                batch_size=batch_size, device=device, num_workers=num_workers, progress="calibrate" if progress else None,
            )
            ood = OODCalibration.fit(val_probs)
            val_count = len(vpos)
        if probes:
            classes = list(train.classes)
            names = list(getattr(train, "class_names", classes))
            fitted = fit_probes({k: v.to(device) for k, v in feats.items()}, labels.to(device), classes, names,
                                None if val_feats is None else {k: v.to(device) for k, v in val_feats.items()},
                                None if val_labels is None else val_labels.to(device))
            for p in fitted.probes.values():
                p.mean, p.std, p.weight, p.bias = p.mean.cpu(), p.std.cpu(), p.weight.cpu(), p.bias.cpu()
    info = {
        "model": meta.model,
        "options": meta.model_options,
        "weights_sha256": weights_fingerprint(model),
        "classes": list(train.classes),
        "class_names": list(getattr(train, "class_names", train.classes)),
        "input_size": meta.input_size,
        "sample": len(positions),
        "sample_requested": sample,
        "val_images": val_count,
        "top_k": top_k,
        "patch_size": patch_size,
        "seconds": round(time.perf_counter() - t0, 2),
        "device": str(device),
    }
    log.info("unit atlas: %d images, %d conv channels in %.1f s", len(positions),
             sum(la.channels for la in layers.values()), info["seconds"])
    return Atlas(layers, info, fitted, ood)


# --------------------------------------------------------------------------- the cache


def cache_root(model_file: str | Path | None) -> Path:
    """Where a model's derived artefacts are kept: ``RUN/analysis`` for a model inside a run
    directory (they go with the run), else ``<data home>/analysis`` (e.g. downloaded weights)."""
    from alexnet.runs import RunPaths

    run = None if model_file is None else RunPaths.of(Path(model_file).resolve())
    if run is not None:
        return run.root / "analysis"
    from alexnet.data.home import data_home

    return data_home() / "analysis"


def model_cache_dir(weights_sha256: str, root: str | Path | None = None) -> Path:
    """Where everything computed from one set of weights lives: ``root`` (default
    ``<data home>/analysis``) / the digest's first 16 hex digits. The atlas is ``atlas/``
    inside; a neighbour index (e.g. ``fc7-index/``) belongs beside it."""
    if root is None:
        from alexnet.data.home import data_home

        root = data_home() / "analysis"
    return Path(root) / weights_sha256[:16]


def atlas_dir(model: nn.Module, root: str | Path | None = None) -> Path:
    """The atlas directory of ``model``'s weights."""
    return model_cache_dir(weights_fingerprint(model), root) / "atlas"


def load_atlas(model: nn.Module, root: str | Path | None = None) -> Atlas | None:
    """The stored atlas of exactly these weights, or None (none built, or built for others)."""
    digest = weights_fingerprint(model)
    directory = model_cache_dir(digest, root) / "atlas"
    if not (directory / ATLAS_JSON).is_file():
        return None
    atlas = Atlas.load(directory)
    return atlas if atlas.info.get("weights_sha256") == digest else None


def _enough(stored: int | None, wanted: int | None) -> bool:
    """Whether an atlas built with sample ``stored`` (None: every image) serves a request for ``wanted``."""
    return stored is None or (wanted is not None and stored >= wanted)


def ensure_atlas(
    model: nn.Module,
    meta: ModelMeta,
    train: Any,
    val: Any | None = None,
    *,
    root: str | Path | None = None,
    rebuild: bool = False,
    data: str | None = None,
    **build: Any,
) -> tuple[Atlas, bool]:
    """``(atlas, built)``: the stored atlas of these weights when there is one for the same
    data that looked at at least as many images, else a new one (built, saved, returned
    with ``built=True``)."""
    if not rebuild:
        try:
            atlas = load_atlas(model, root)
        except IndexFormatError as exc:
            log.warning("%s; rebuilding", exc)
            atlas = None
        if atlas is not None and (data is None or atlas.info.get("data") == data) and _enough(
            atlas.info.get("sample_requested"), build.get("sample", 5000)
        ):
            return atlas, False
    atlas = build_atlas(model, meta, train, val, **build)
    if data is not None:
        atlas.info["data"] = data
    atlas.save(model_cache_dir(atlas.info["weights_sha256"], root) / "atlas")
    return atlas, True
