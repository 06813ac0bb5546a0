"""The explorer's model side: decode an image, run the network once, render what it computed.

:class:`Engine` wraps a loaded checkpoint and (optionally) its dataset. For one image it
runs a single forward pass and keeps a small, already-rendered result
(:class:`Analysis`): the crop the network saw, the strongest channels of conv1..conv5 as
heat-map PNGs, a summary overlay per layer, the class probabilities and the fc7 vector
for retrieval. Results are cached (bounded LRU) so that revealing layers one request at
a time re-uses the same forward pass.

Thread safety: HTTP handlers call into the engine from a thread pool. Decoding runs
under a small bounded semaphore (it is the memory-hungry step for large uploads), at
most ``max_batch`` analyses are in flight, and the forward pass runs under a lock with
the waiting images batched together, so memory stays bounded however many requests
arrive and throughput rises under load.

The page tells its story with AlexNet's eight layers (five conv stages, then fc6, fc7 and
fc8: the pipeline, the reveal, the depth curve, fc7 neighbours, Grad-CAM at conv5, the
stencil over conv1's pooled maps). A model of another layout (``alexnet_fast``: conv1 ..
conv7 and fc8) is refused when the engine is made, with one line saying what it lacks
(:func:`check_layout`); its analyses are the command line's (report, atlas, explain, ...).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from alexnet.checkpoint import ModelMeta, load_model
from alexnet.data.decode import DecodeError, decode_image, encode_jpeg, resize_center_crop
from alexnet.data.sampling import spaced_indices
from alexnet.devices import resolve_device
from alexnet.errors import ExplorerError, UsageError
from alexnet.explorer.common import (  # re-exported: the engine's public helpers live in common
    Analysis,
    _upscale,
    data_url,
    heatmap_rgb,
    jpeg_url,
    overlay,
    png_bytes,
)
from alexnet.lru import LRU
from alexnet.models import CONV_LAYER_NAMES as CONV_LAYERS  # the page's five stages
from alexnet.models import LAYER_NAMES

log = logging.getLogger(__name__)

# Layers the page's stencil can slide: conv1 over the pixels, conv2 over conv1's maps.
STENCIL_LAYERS: tuple[str, ...] = ("conv1", "conv2")

# What each stage is, structurally. What its units respond to is measured by the unit atlas
# (alexnet.explorer.evidence) and captioned from that evidence, not asserted here.
LAYER_ROLES: dict[str, tuple[str, str]] = {
    "conv1": ("Stage 1", "the first convolution, straight over the pixels"),
    "conv2": ("Stage 2", "a convolution over conv1's pooled maps"),
    "conv3": ("Stage 3", "a convolution over conv2's pooled maps"),
    "conv4": ("Stage 4", "a convolution over conv3's maps"),
    "conv5": ("Stage 5", "the last convolution, over conv4's maps"),
}

# ImageNet (ILSVRC) classification winners, top-5 error in percent (SPEC.md). 2012: 16.4% with
# ILSVRC data only; the same team's 15.3% used extra (Fall 2011 ImageNet) data.
TIMELINE: list[dict[str, Any]] = [
    {"year": 2010, "error": 28.2, "team": "NEC-UIUC"},
    {"year": 2011, "error": 25.8, "team": "XRCE"},
    {"year": 2012, "error": 16.4, "team": "SuperVision (AlexNet)", "extra_data_error": 15.3,
     "extra_data": "7 CNNs, two pre-trained on the ImageNet Fall 2011 release"},
    {"year": 2013, "error": 11.7, "team": "Clarifai"},
    {"year": 2014, "error": 6.7, "team": "GoogLeNet"},
    {"year": 2015, "error": 3.57, "team": "ResNet"},
    {"year": 2016, "error": 2.99, "team": "Trimps-Soushen"},
    {"year": 2017, "error": 2.25, "team": "SENet"},
]
HUMAN_TOP5_ERROR = 5.1  # Russakovsky et al. 2015

ALLOWED_CONTENT_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/gif", "image/webp", "image/bmp"}
)
_ID_RE = re.compile(r"(val|train)-([0-9]{1,9})")  # used with fullmatch: no trailing newline slips through
_SAMPLE_RE = re.compile(r"sample-([a-z_]{1,32})")


# --------------------------------------------------------------------------- the layout


def check_layout(model: nn.Module, name: str) -> None:
    """Refuse (:class:`UsageError`, one line) a model whose rows are not AlexNet's
    (:data:`alexnet.models.LAYER_NAMES`): the page has a place for each of those eight
    layers and for no other."""
    names = tuple(getattr(model, "layer_names", ()))
    if names == LAYER_NAMES:
        return
    missing = [n for n in LAYER_NAMES if n not in names]
    extra = [n for n in names if n not in LAYER_NAMES]
    what = "; ".join(part for part in (
        f"it has no {', '.join(missing)}" if missing else "",
        f"the page has no place for its {', '.join(extra)}" if extra else "",
    ) if part) or "its layers come in another order"
    raise UsageError(
        f"the explorer's page is written for AlexNet's layers ({', '.join(LAYER_NAMES)}); {name} has "
        f"{', '.join(names) or 'no named layers'}: {what}. For this model use alexnet report, atlas, "
        f"explain, neighbors or visualise"
    )


# --------------------------------------------------------------------------- datasets


def open_split(root: Path, split: str | None, image_size: int) -> Any | None:
    """One split of the dataset at ``root`` (None: the folder itself), or None when it has none.

    Files are checked when they are read (a bad one is skipped by the dataset), so that
    opening even a large folder stays quick.
    """
    from alexnet.data import open_dataset

    try:
        ds = open_dataset(root, split, image_size=image_size, validate="none")
    except (ValueError, KeyError, OSError) as exc:  # DatasetError is a ValueError
        log.info("no %s split in %s: %s", split, root, exc)
        return None
    return ds if len(ds) else None


def _targets(ds: Any) -> Sequence[int] | None:
    for name in ("targets", "labels"):
        t = getattr(ds, name, None)
        if t is not None and len(t) == len(ds):
            return t
    return None


def class_balanced(ds: Any, m: int) -> list[int]:
    """Up to ``m`` indices taking classes in turn (one image of each class before any second)."""
    targets = _targets(ds)
    if targets is None:
        return spaced_indices(len(ds), m)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    # Each class's images in a fixed shuffled order, so the picks are not all near its start.
    rng = np.random.default_rng(0)
    queues = [[by_class[c][j] for j in rng.permutation(len(by_class[c]))] for c in sorted(by_class)]
    out: list[int] = []
    depth = 0
    while len(out) < m and any(depth < len(q) for q in queues):
        out.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return out[:m]  # round-robin order: a gallery shows every class before repeating one


# --------------------------------------------------------------------------- analysis


@dataclass
class _Job:
    """One image waiting for a (batched) forward pass."""

    image: np.ndarray
    layers: tuple[str, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, Tensor] | None = None
    error: BaseException | None = None


@dataclass
class ImageRecord:
    """A dataset image the page can show: where it comes from and its label."""

    id: str
    split: str
    index: int
    label: int  # dataset label
    class_id: str
    class_name: str


class NeighborIndex:
    """The fc7 retrieval index of the training split, built in the background.

    Search is :class:`alexnet.analysis.retrieval.FeatureIndex` (exact Euclidean, as in the
    paper); this wrapper adds progress for the page and the ids of the indexed images.
    """

    def __init__(self) -> None:
        self.index: Any = None  # alexnet.analysis.retrieval.FeatureIndex once built
        self.records: list[ImageRecord] = []
        self.ready = threading.Event()
        self.done = 0
        self.total = 0
        self.skipped = 0
        self.error: str | None = None

    def search(self, query: np.ndarray, k: int, exclude: str | None = None) -> list[tuple[ImageRecord, float]]:
        if self.index is None or not self.records:
            return []
        extra = 1 if exclude is not None else 0
        result = self.index.search(torch.from_numpy(query), k=min(k + extra, len(self.records)))
        hits = [
            (self.records[i], float(d))
            for i, d in zip(result.indices[0].tolist(), result.distances[0].tolist(), strict=True)
            if self.records[i].id != exclude
        ]
        return hits[:k]


class Engine:
    """A loaded model plus the dataset it came with, ready to analyse images for the page."""

    def __init__(
        self,
        model: nn.Module,
        meta: ModelMeta,
        data: str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        gallery_size: int = 24,
        index_size: int = 2000,
        top_channels: int = 8,
        max_upload_bytes: int = 8 * 1024 * 1024,
        max_upload_pixels: int = 16_000_000,
        cache_size: int = 64,
        max_batch: int = 4,
        device: str | torch.device = "cpu",
        cache_root: str | Path | None = None,
        atlas_sample: int = 2000,
        atlas_top_k: int = 9,
        featvis_seconds: float = 6.0,
    ) -> None:
        check_layout(model, meta.model)
        self.model, self.meta = model.eval(), meta
        for p in self.model.parameters():  # nothing here trains: gradients are only ever wanted w.r.t. inputs
            p.requires_grad_(False)
        self.device = resolve_device(device)
        self.transform = meta.eval_transform().to(self.device)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.data = None if data is None else Path(data)
        self.top_channels = top_channels
        self.max_upload_bytes, self.max_upload_pixels = max_upload_bytes, max_upload_pixels
        self.class_to_index = {c: i for i, c in enumerate(meta.classes)}
        self._model_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Job] = []
        self.max_batch = max_batch
        self._analysis_slots = threading.BoundedSemaphore(max_batch)
        self._decode_slots = threading.BoundedSemaphore(2)
        self._cache: LRU[Analysis] = LRU(cache_size)
        self._jpeg_cache: LRU[bytes] = LRU(512)
        self.splits: dict[str, Any] = {}
        self.gallery: list[ImageRecord] = []
        self.index = NeighborIndex()
        self._kernels: dict[str, Any] | None = None
        self._anatomy: dict[str, Any] | None = None
        self._conv_io: LRU[tuple[dict[str, Any], Tensor, Tensor, Tensor]] = LRU(8)
        self.samples: dict[str, np.ndarray] = {}  # scikit-image's example photos, by name
        self.sample_expected: dict[str, list[str]] = {}  # the class names a right answer would be
        self.gallery_source: str | None = None
        self.gallery_note: str | None = None
        if self.data is not None:
            self._open_data(gallery_size)
            self.gallery_source = "dataset"
        elif _is_imagenet(meta):
            self._open_samples(gallery_size)
        if "train" not in self.splits:
            self.index.ready.set()  # nothing to index: neighbours are simply unavailable
        self._index_size = index_size
        from alexnet.explorer.evidence import Evidence

        self.evidence = Evidence(self, cache_root=cache_root, atlas_sample=atlas_sample, atlas_top_k=atlas_top_k,
                                 featvis_seconds=featvis_seconds)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, data: str | Path | None = None, **kwargs: Any) -> Engine:
        device = kwargs.get("device", "cpu")
        model, meta = load_model(checkpoint, device=device)
        return cls(model, meta, data, checkpoint=checkpoint, **kwargs)

    # ------------------------------------------------------------------ dataset

    def _open_data(self, gallery_size: int) -> None:
        assert self.data is not None
        if not self.data.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.data}")
        has_splits = any((self.data / d).is_dir() for d in ("train", "val")) or (self.data / "index.json").is_file()
        if has_splits:
            for split in ("val", "train"):
                ds = open_split(self.data, split, self.meta.image_size)
                if ds is not None:
                    self.splits[split] = ds
        else:  # a plain class-folder directory: one split serves as gallery and index
            ds = open_split(self.data, None, self.meta.image_size)
            if ds is not None:
                self.splits["train"] = ds
        if not self.splits:
            raise FileNotFoundError(f"{self.data}: no images found (expected train/ and val/ class folders)")
        split = "val" if "val" in self.splits else "train"
        ds = self.splits[split]
        self.gallery = [self._record(split, i) for i in class_balanced(ds, gallery_size)]

    def _open_samples(self, gallery_size: int) -> None:
        """scikit-image's example photos (:func:`alexnet.analysis.examples.example_photos`) as the
        gallery: an optional extra; without the package there are none, and the page says so."""
        from alexnet.analysis.examples import example_photos

        photos = example_photos()[:gallery_size]
        if not photos:
            self.gallery_note = ("no dataset was given, and scikit-image (whose example photos would be offered "
                                 "here) is not installed: upload an image, or pip install scikit-image")
            return
        s = self.meta.image_size
        index = {c: i for i, c in enumerate(self.meta.classes)}
        for photo in photos:
            self.samples[photo.name] = resize_center_crop(photo.image.permute(1, 2, 0).contiguous().numpy(), s)
            self.sample_expected[photo.name] = [self.meta.class_names[index[c]] for c in photo.expected if c in index]
            self.gallery.append(ImageRecord(f"sample-{photo.name}", "sample", len(self.gallery), -1, "", photo.caption))
        self.gallery_source = "scikit-image"
        self.gallery_note = "example photos from scikit-image (skimage.data): real photos, unlabelled, not from ImageNet"

    def _sample(self, image_id: str) -> np.ndarray | None:
        """The example photo ``sample-<name>``, None for any other kind of id, 404 for an unknown one."""
        m = _SAMPLE_RE.fullmatch(image_id or "")
        if not (image_id or "").startswith("sample-"):
            return None
        if m is None or m.group(1) not in self.samples:
            raise ExplorerError(404, f"no image {image_id[:60]!r}")
        return self.samples[m.group(1)]

    def _record(self, split: str, index: int, label: int | None = None) -> ImageRecord:
        ds = self.splits[split]
        if label is None:
            targets = _targets(ds)
            label = int(targets[index]) if targets is not None else int(ds[index][1])
        class_id = ds.classes[label]
        names = getattr(ds, "class_names", None) or ds.classes
        return ImageRecord(f"{split}-{index}", split, index, label, class_id, names[label])

    def parse_id(self, image_id: str) -> tuple[str, int]:
        """A dataset image id ``val-12`` / ``train-345`` -> (split, index); anything else is a 404."""
        m = _ID_RE.fullmatch(image_id or "")
        ds = self.splits.get(m.group(1)) if m else None
        if m is None or ds is None or not 0 <= int(m.group(2)) < len(ds):
            raise ExplorerError(404, f"no image {image_id[:60]!r}")
        split, index = m.group(1), int(m.group(2))
        return split, index

    def _load_item(self, split: str, index: int) -> tuple[np.ndarray, int]:
        """A dataset image as uint8 [S, S, 3] at the model's stored size, and its dataset label."""
        try:
            img, label = self.splits[split][index]
        except (DecodeError, OSError, ValueError) as exc:
            raise ExplorerError(422, f"image {split}-{index} could not be read: {exc}") from None
        arr = img.permute(1, 2, 0).contiguous().numpy() if isinstance(img, Tensor) else np.asarray(img)
        s = self.meta.image_size
        if arr.shape[0] != s or arr.shape[1] != s:
            arr = resize_center_crop(arr, s)
        return arr, int(label)

    def image_jpeg(self, image_id: str) -> bytes:
        """The dataset image ``image_id`` (as the model sees it before cropping), JPEG-encoded.

        Only dataset items addressed by index are served: no part of the request becomes a path.
        """
        sample = self._sample(image_id)
        if sample is not None:
            return encode_jpeg(sample, quality=90)
        split, index = self.parse_id(image_id)
        key = f"{split}-{index}"
        hit = self._jpeg_cache.get(key)
        if hit is not None:
            return hit
        arr, _ = self._load_item(split, index)
        return self._jpeg_cache.put(key, encode_jpeg(arr, quality=90))

    # ------------------------------------------------------------------ uploads

    def check_upload(self, data: bytes, content_type: str | None) -> None:
        """Refuse what is not worth decoding: a wrong content type, no bytes, too many bytes."""
        ctype = (content_type or "").split(";")[0].strip().lower()
        if ctype not in ALLOWED_CONTENT_TYPES:
            raise ExplorerError(415, f"unsupported content type {ctype or 'none'!r}: upload a JPEG, PNG, GIF, WebP or BMP image")
        if not data:
            raise ExplorerError(400, "the uploaded file is empty")
        if len(data) > self.max_upload_bytes:
            raise ExplorerError(413, f"upload of {len(data)} bytes exceeds the limit of {self.max_upload_bytes}")

    def decode_upload(self, data: bytes, content_type: str | None) -> np.ndarray:
        """Untrusted upload bytes -> uint8 [S, S, 3], or :class:`ExplorerError` (4xx).

        The format is sniffed from the bytes; pixels are counted from the header before any
        decoding, and JPEGs are decoded straight at reduced size (DCT scaling) when large.
        A phone photo is turned upright by its EXIF orientation.
        """
        self.check_upload(data, content_type)
        s = self.meta.image_size
        with self._decode_slots:
            try:
                arr = decode_image(data, max_pixels=self.max_upload_pixels, min_side=s, orient=True)
            except DecodeError as exc:
                status = 413 if exc.reason == "too_large" else 422
                what = {
                    "not_an_image": "the file is not an image",
                    "truncated": "the image is truncated",
                    "too_large": f"the image has too many pixels (limit {self.max_upload_pixels:,})",
                }.get(exc.reason, "the image could not be decoded")
                raise ExplorerError(status, what) from None  # the words, not the internal reason code
            return resize_center_crop(arr, s)

    # ------------------------------------------------------------------ model

    @torch.no_grad()
    def _forward_locked(self, images: np.ndarray, layers: Sequence[str]) -> dict[str, Tensor]:
        x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).to(self.device)
        acts = self.model.forward_layers(self.transform(x), list(layers))
        return {k: v.float().cpu() for k, v in acts.items()}

    def _forward(self, images: np.ndarray, layers: Sequence[str]) -> dict[str, Tensor]:
        """uint8 [B, S, S, 3] -> requested activations (serialised: one forward pass at a time)."""
        with self._model_lock:
            return self._forward_locked(images, layers)

    def _forward_one(self, image: np.ndarray, layers: Sequence[str]) -> dict[str, Tensor]:
        """One image's activations, batched with whatever other requests are waiting.

        Callers queue their image and then take the model lock; whoever holds it runs every
        queued image (up to ``max_batch``) in one forward pass and hands each caller its
        slice. Under load this turns many single-image passes into a few batched ones (about
        3x the throughput of the paper's network on CPU) with no extra thread; alone, a
        request runs at once. In eval mode every image's result is independent of the batch.
        """
        job = _Job(image, tuple(layers))
        with self._pending_lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self._model_lock:
                if job.done.is_set():  # an earlier lock holder ran it
                    break
                with self._pending_lock:
                    batch = self._pending[: self.max_batch]
                    del self._pending[: len(batch)]
                wanted = {name for j in batch for name in j.layers}
                layers_all = [name for name in self.model.layer_names if name in wanted]
                try:
                    acts = self._forward_locked(np.stack([j.image for j in batch]), layers_all)
                    for i, j in enumerate(batch):
                        j.result = {name: acts[name][i : i + 1] for name in j.layers}
                except Exception as exc:  # every waiting caller hears about it, none hangs
                    for j in batch:
                        j.error = exc
                finally:
                    for j in batch:
                        j.done.set()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _analyse(self, key: str, name: str, image: np.ndarray, true_index: int | None) -> Analysis:
        # At most max_batch analyses in flight: enough to fill a batch, few enough that their
        # activations and renderings stay a bounded amount of memory.
        with self._analysis_slots:
            return self._analyse_now(key, name, image, true_index)

    def _analyse_now(self, key: str, name: str, image: np.ndarray, true_index: int | None) -> Analysis:
        acts = self._forward_one(image, [*CONV_LAYERS, "fc7", "fc8"])
        c = self.meta.input_size
        s = image.shape[0]
        top = (s - c) // 2
        crop = image[top : top + c, top : top + c]
        big_crop = _upscale(crop, 224)
        layers = {}
        for layer in CONV_LAYERS:
            a = acts[layer][0].numpy()  # [C, H, W]
            strength = a.mean(axis=(1, 2))
            order = np.argsort(-strength, kind="stable")[: self.top_channels]
            channels = [
                {
                    "channel": int(ch),
                    "mean": round(float(strength[ch]), 4),
                    "max": round(float(a[ch].max()), 4),
                    "png": data_url(png_bytes(_upscale(heatmap_rgb(a[ch]), 48))),
                }
                for ch in order
            ]
            summary = a[order].sum(axis=0)
            layers[layer] = {
                "layer": layer,
                "role": LAYER_ROLES[layer][0],
                "description": LAYER_ROLES[layer][1],
                "shape": [int(d) for d in a.shape],
                "active_fraction": round(float((a > 0).mean()), 4),
                "channels": channels,
                "overlay": jpeg_url(overlay(big_crop, summary)),
            }
        probs = torch.softmax(acts["fc8"][0], 0).numpy()
        return Analysis(
            id=key,
            name=name,
            true_index=true_index,
            crop=jpeg_url(big_crop),
            layers=layers,
            probs=probs,
            fc7=acts["fc7"][0].numpy().astype(np.float32),
            image=image,
        )

    def _cached(self, key: str, make: Callable[[], Analysis]) -> Analysis:
        hit = self._cache.get(key)
        return hit if hit is not None else self._cache.put(key, make())

    def analyse_id(self, image_id: str) -> Analysis:
        """Analysis of a dataset image (``val-3``) or of a recent upload (``upload-<hash>``)."""
        if image_id.startswith("upload-"):
            hit = self._cache.get(image_id)
            if hit is None:
                raise ExplorerError(404, "this upload is no longer cached; upload the file again")
            return hit
        sample = self._sample(image_id)
        if sample is not None:
            name = next((r.class_name for r in self.gallery if r.id == image_id), image_id)
            return self._cached(image_id, lambda: self._analyse(image_id, name, sample, None))
        split, index = self.parse_id(image_id)

        def make() -> Analysis:
            image, label = self._load_item(split, index)
            rec = self._record(split, index, label)
            return self._analyse(rec.id, rec.class_name, image, self.class_to_index.get(rec.class_id))

        return self._cached(f"{split}-{index}", make)

    def analyse_upload(self, data: bytes, content_type: str | None, filename: str | None) -> Analysis:
        """Analysis of uploaded bytes; identical uploads share one cached result."""
        self.check_upload(data, content_type)  # before the cache: a hit must pass the same checks
        key = "upload-" + hashlib.sha256(data).hexdigest()[:24]
        name = _display_name(filename)

        def make() -> Analysis:
            return self._analyse(key, name, self.decode_upload(data, content_type), None)

        return self._cached(key, make)

    # ------------------------------------------------------------------ results

    def predictions(self, a: Analysis, k: int = 5) -> dict[str, Any]:
        k = max(1, min(k, len(a.probs)))
        order = np.argsort(-a.probs, kind="stable")[:k]
        top = [
            {
                "index": int(i),
                "class": self.meta.classes[i],
                "name": self.meta.class_names[i],
                "prob": round(float(a.probs[i]), 6),
                "correct": a.true_index is not None and int(i) == a.true_index,
            }
            for i in order
        ]
        true = None
        if a.true_index is not None:
            rank = int((a.probs > a.probs[a.true_index]).sum()) + 1
            true = {
                "index": a.true_index,
                "class": self.meta.classes[a.true_index],
                "name": self.meta.class_names[a.true_index],
                "prob": round(float(a.probs[a.true_index]), 6),
                "rank": rank,
            }
        return {
            "image": {"id": a.id, "name": a.name},
            "top": top,
            "true_label": true,
            "correct_top1": None if true is None else true["rank"] == 1,
            "correct_top5": None if true is None else true["rank"] <= 5,
            "scope": self.evidence.verdict(a.probs),
            # an example photo: the classes a right answer would fall in ([]: none of the model's)
            "expected": self.sample_expected.get(a.id.removeprefix("sample-")) if a.id.startswith("sample-") else None,
        }

    def layer(self, a: Analysis, layer: str) -> dict[str, Any]:
        if layer not in a.layers:
            raise ExplorerError(404, f"unknown layer {layer!r}; choose from {list(CONV_LAYERS)}")
        return {"image": {"id": a.id, "name": a.name}, **a.layers[layer]}

    def neighbors(self, a: Analysis, k: int = 8) -> dict[str, Any]:
        idx = self.index
        base = {
            "ready": idx.ready.is_set(),
            "indexed": len(idx.records),
            "progress": [idx.done, idx.total],
            "dim": int(a.fc7.shape[0]),
        }
        if "train" not in self.splits:
            return {**base, "available": False, "neighbors": []}
        if not idx.ready.is_set():
            return {**base, "available": True, "neighbors": []}
        hits = idx.search(a.fc7, max(1, min(k, 32)), exclude=a.id)
        return {
            **base,
            "available": True,
            "neighbors": [
                {
                    "id": r.id,
                    "url": f"/api/images/{r.id}",
                    "class": r.class_id,
                    "name": r.class_name,
                    "distance": round(d, 4),
                }
                for r, d in hits
            ],
        }

    def kernels(self) -> dict[str, Any]:
        """The loaded model's conv1 kernels as one picture (one block per tower where it has towers)."""
        if self._kernels is None:
            from alexnet.analysis.filters import conv1_weight, kernel_grid, tower_summary

            weight = conv1_weight(self.model)
            self._kernels = {
                "count": int(weight.shape[0]),
                "kernel_size": int(weight.shape[-1]),
                "towers": tower_summary(self.model),
                "png": data_url(png_bytes(kernel_grid(self.model, pad=2))),
            }
        return self._kernels

    # ------------------------------------------------------------------ anatomy and the stencil

    def anatomy(self) -> dict[str, Any]:
        """The loaded model's layer table (:func:`alexnet.anatomy.anatomy`), computed once.

        The hooks it registers would fire for any forward pass running at the same time,
        so it holds the model lock.
        """
        if self._anatomy is None:
            from alexnet.anatomy import anatomy

            with self._model_lock:
                table = anatomy(self.model, self.meta.input_size, name=self.meta.model)
            self._anatomy = table.to_dict()
        return self._anatomy

    def _conv_pass(self, a: Analysis, layer: str) -> tuple[dict[str, Any], Tensor, Tensor, Tensor]:
        """The ``layer`` convolution's geometry, its input and output, and the stage's activation.

        Taken by a forward hook on the model's own forward pass (``forward_layers`` up to
        ``layer``), so they are exactly what the network computed. conv1 is the first
        ``Conv2d`` the pass runs, conv2 the second. Cached per (image, layer), bounded.
        """
        key = (a.id, layer)
        hit = self._conv_io.get(key)
        if hit is not None:
            return hit
        if a.image is None:
            raise ExplorerError(404, "this image's pixels are no longer cached; choose it again")
        captured: list[tuple[nn.Conv2d, Tensor, Tensor]] = []

        me = threading.get_ident()

        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if threading.get_ident() != me:  # another thread's pass (the atlas, an attribution): not ours
                return
            captured.append((module, inputs[0].detach().float().cpu(), output.detach().float().cpu()))

        names = {m: n for n, m in self.model.named_modules()}
        x = torch.from_numpy(np.array(a.image, dtype=np.uint8)).permute(2, 0, 1)[None].to(self.device)
        with self._model_lock, torch.no_grad():
            handles = [m.register_forward_hook(record) for m in self.model.modules() if isinstance(m, nn.Conv2d)]
            try:
                stage = self.model.forward_layers(self.transform(x), [layer])[layer][0].float().cpu()
            finally:
                for h in handles:
                    h.remove()
        index = STENCIL_LAYERS.index(layer)
        if len(captured) <= index:
            raise ExplorerError(404, f"{self.meta.model} has no {layer} convolution")
        conv, inp, out = captured[index]
        k, s, p = (int(v[0]) if isinstance(v, tuple) else int(v) for v in (conv.kernel_size, conv.stride, conv.padding))
        geometry = {
            "module": names.get(conv, "?"),
            "kernel_size": k,
            "stride": s,
            "padding": p,
            "groups": int(conv.groups),
            "in_channels": int(conv.in_channels),
            "out_channels": int(conv.out_channels),
            "weight": conv.weight.detach().float().cpu(),
            "bias": None if conv.bias is None else conv.bias.detach().float().cpu(),
        }
        result = (geometry, inp[0], out[0], stage)
        return self._conv_io.put(key, result)

    def stencil(self, a: Analysis, layer: str, kernel: int) -> dict[str, Any]:
        """One kernel of conv1 or conv2 as a stencil over its input, for the page to slide.

        Everything the page needs to redo the convolution position by position: the
        kernel's weights and bias, the input it slides over (the normalised crop for
        conv1; for conv2 the pooled conv1 maps of the kernel's own tower), the geometry,
        and the real output map for that kernel, all float32 (little-endian, base64) so
        the page's dot products are the model's own numbers. The map is the convolution
        module's output in the model's forward pass: *before* the ReLU (and before batch
        norm in models that have it); ``relu_is_stage`` says whether max(0, map) is the
        layer's recorded activation as well (true when nothing sits between them).
        """
        if layer not in STENCIL_LAYERS:
            raise ExplorerError(404, f"no stencil for layer {layer!r}; choose from {list(STENCIL_LAYERS)}")
        geo, inp, out, stage = self._conv_pass(a, layer)
        count = geo["out_channels"]
        if not 0 <= kernel < count:
            raise ExplorerError(404, f"{layer} has kernels 0..{count - 1}, not {kernel}")
        per_group_out = count // geo["groups"]
        group = kernel // per_group_out
        cg = geo["in_channels"] // geo["groups"]
        c0 = group * cg
        weight = geo["weight"][kernel]  # [cg, k, k]
        bias = 0.0 if geo["bias"] is None else float(geo["bias"][kernel])
        relu_is_stage = stage.shape == out.shape and bool(
            torch.allclose(out[kernel].clamp_min(0), stage[kernel], rtol=1e-4, atol=1e-5)
        )
        payload: dict[str, Any] = {
            "image": {"id": a.id, "name": a.name},
            "layer": layer,
            "module": geo["module"],
            "kernel": kernel,
            "kernels": count,
            "kernel_size": geo["kernel_size"],
            "stride": geo["stride"],
            "padding": geo["padding"],
            "groups": geo["groups"],
            "group": group,
            "input_channels": [c0, c0 + cg],
            "input": _f32(inp[c0 : c0 + cg]),
            "weight": _f32(weight),
            "bias": bias,
            "map": _f32(out[kernel]),
            "activation": "pre-ReLU: the convolution's own output in the forward pass, before its ReLU"
            + ("" if relu_is_stage else " (and before the normalisation that follows it in this model)"),
            "relu_is_stage": relu_is_stage,
        }
        if layer == "conv1":  # every kernel too, small: the page draws them to pick from
            payload["bank"] = _f32(geo["weight"])
        if layer == "conv1" and a.image is not None:  # the crop's pixels, to draw what is normalised
            c = self.meta.input_size
            top = (a.image.shape[0] - c) // 2
            payload["picture"] = data_url(png_bytes(a.image[top : top + c, top : top + c]))
        return payload

    def info(self) -> dict[str, Any]:
        return {
            "model": self.meta.model,
            "describe": self.meta.describe(),
            "options": self.meta.model_options,
            "params": self.meta.num_params(),
            "checkpoint": None if self.checkpoint is None else Path(self.checkpoint).name,
            "num_classes": self.meta.num_classes,
            "classes": self.meta.class_names,
            "image_size": self.meta.image_size,
            "input_size": self.meta.input_size,
            "layers": [{"layer": name, "role": r[0], "description": r[1]} for name, r in LAYER_ROLES.items()],
            "data": None if self.data is None else self.data.name,
            "gallery_size": len(self.gallery),
            "gallery_source": self.gallery_source,
            "gallery_note": self.gallery_note,
            "top_channels": self.top_channels,
            "neighbors": {
                "available": "train" in self.splits,
                "ready": self.index.ready.is_set(),
                "indexed": len(self.index.records),
            },
            "atlas": self.evidence.status(),
            "limits": {"max_upload_bytes": self.max_upload_bytes, "max_upload_pixels": self.max_upload_pixels},
            "timeline": TIMELINE,
            "human_top5_error": HUMAN_TOP5_ERROR,
        }

    def gallery_items(self) -> list[dict[str, Any]]:
        return [
            {"id": r.id, "url": f"/api/images/{r.id}", "class": r.class_id, "name": r.class_name}
            for r in self.gallery
        ]

    # ------------------------------------------------------------------ retrieval index

    def build_index(self, batch_size: int = 32) -> None:
        """fc7 features of up to ``index_size`` training images (class-balanced); run once."""
        idx = self.index
        ds = self.splits.get("train")
        if ds is None or idx.ready.is_set():
            idx.ready.set()
            return
        try:
            picks = class_balanced(ds, self._index_size)
            idx.total = len(picks)
            feats: list[Tensor] = []
            for start in range(0, len(picks), batch_size):
                images, records = [], []
                for i in picks[start : start + batch_size]:
                    try:
                        image, label = self._load_item("train", i)
                    except ExplorerError:
                        idx.skipped += 1
                        continue
                    images.append(image)
                    records.append(self._record("train", i, label))
                if images:
                    feats.append(self._forward(np.stack(images), ["fc7"])["fc7"])
                    idx.records.extend(records)
                idx.done = min(idx.total, start + batch_size)
            if feats:
                from alexnet.analysis.retrieval import FeatureIndex

                ds_names = getattr(ds, "class_names", None) or ds.classes
                idx.index = FeatureIndex(
                    features=torch.cat(feats),
                    labels=torch.tensor([r.label for r in idx.records], dtype=torch.int64),
                    paths=[r.id for r in idx.records],
                    classes=list(ds.classes),
                    class_names=list(ds_names),
                    info={"model": self.meta.model, "split": "train"},
                )
        except Exception as exc:  # the page degrades to "no neighbours"; the server keeps running
            log.exception("building the fc7 index failed")
            idx.error = str(exc)
        finally:
            idx.ready.set()

    def start_atlas(self) -> threading.Thread:
        """Load or build the unit atlas and probes of these weights in the background."""
        return self.evidence.start_atlas()

    def start_index(self) -> threading.Thread:
        t = threading.Thread(target=self.build_index, name="fc7-index", daemon=True)
        t.start()
        return t


def _is_imagenet(meta: ModelMeta) -> bool:
    """True for a model over ImageNet's 1000 synsets (torchvision's weights, an ImageNet run)."""
    if meta.num_classes != 1000:
        return False
    from alexnet.data.imagenet import IMAGENET_SYNSETS

    return list(meta.classes) == list(IMAGENET_SYNSETS)


def _f32(t: Tensor) -> dict[str, Any]:
    """A tensor as ``{"shape", "data"}``: float32 little-endian bytes in base64 (exact and compact:
    a fifth of the size of decimal JSON, and the page reads it with one Float32Array)."""
    arr = np.ascontiguousarray(t.detach().float().cpu().numpy(), dtype="<f4")
    return {"shape": [int(d) for d in arr.shape], "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def _display_name(filename: str | None) -> str:
    """A short, harmless label for an uploaded file (its stem), shown in the status line."""
    stem = Path(filename or "").stem if filename else ""
    stem = re.sub(r"[^\w .,()+-]", "", stem.replace("_", " ")).strip()[:40]
    return stem or "your image"
