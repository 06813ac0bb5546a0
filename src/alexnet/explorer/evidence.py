"""The explorer's evidence: what the loaded model's units respond to, and why it answers as it does.

The page's claims ("edges build textures build parts build the label") are shown from the
model, not captioned by hand. This module adapts the analysis library to the explorer:

* **Unit atlas and probes** (:mod:`alexnet.analysis.atlas`, :mod:`alexnet.analysis.probes`):
  built once per set of weights from the explorer's training split, in a background
  thread, and stored in the model's cache directory (keyed by the weights' digest), so a
  restart reuses it. Any atlas already stored for these weights (e.g. by ``alexnet atlas``)
  is reused as it is: its patches are stored with it, so nothing needs the images again.
  While it builds, :meth:`Evidence.status` says so and the page shows the live activations
  without the measured captions.
* **Attribution** (:class:`alexnet.analysis.attribution.Attributor`): occlusion and Grad-CAM
  for any class, batched (several classes of one image in one call) and cached.
* **Feature visualisation** (:mod:`alexnet.analysis.featvis`): the number of optimisation
  steps is chosen from one timed step so that a unit finishes within a few seconds on the
  loaded model and device, then cached on disk beside the atlas.
* **Outside the classes**: the out-of-class calibration stored with the atlas.

Heavy work (attribution, visualisation) runs at most ``max_jobs`` at a time; a request
that cannot get a slot within ``wait_seconds`` gets 503 rather than queueing without bound.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from alexnet.checkpoint import ModelMeta
from alexnet.errors import AlexNetError, ExplorerError
from alexnet.explorer.common import (
    Analysis,
    _upscale,
    data_url,
    heatmap_rgb,
    jpeg_url,
    overlay,
    png_bytes,
)
from alexnet.lru import LRU
from alexnet.models import CONV_LAYER_NAMES as CONV_LAYERS
from alexnet.models import LAYER_NAMES

if TYPE_CHECKING:
    from alexnet.analysis.atlas import Atlas

log = logging.getLogger(__name__)

# The engine admits AlexNet's layout only (alexnet.explorer.engine.check_layout).
FC_LAYERS: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n not in CONV_LAYERS)
METHODS: tuple[str, ...] = ("occlusion", "gradcam")


class Engine(Protocol):
    """What this module uses of :class:`alexnet.explorer.engine.Engine` (which owns an
    :class:`Evidence`; typed structurally so the two modules do not import each other)."""

    model: nn.Module
    meta: ModelMeta
    device: torch.device
    data: Path | None
    splits: dict[str, Any]
    checkpoint: str | None

    def _forward_one(self, image: np.ndarray, layers: Any) -> dict[str, Tensor]: ...


class AtlasJob:
    """The atlas of the loaded weights: building, built, or unavailable (and why)."""

    def __init__(self) -> None:
        self.atlas: Atlas | None = None
        self.ready = threading.Event()  # set when there is nothing more to wait for
        self.started: float | None = None
        self.seconds: float | None = None
        self.built = False  # True: built by this process; False: read from the cache
        self.error: str | None = None
        self.unavailable: str | None = None  # why there can be no atlas (no training data)


def _uint8_batch(image: np.ndarray) -> Tensor:
    """uint8 [S, S, 3] (as the engine keeps images) -> [1, 3, S, S]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)


class Evidence:
    """Atlas, probes, attribution and feature visualisation for one :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        cache_root: str | Path | None = None,
        atlas_sample: int = 2000,
        atlas_top_k: int = 9,
        featvis_seconds: float = 6.0,
        max_jobs: int = 1,
        wait_seconds: float = 60.0,
    ) -> None:
        self.engine = engine
        if cache_root is None:  # where `alexnet atlas` keeps it too: RUN/analysis, else <data home>/analysis
            from alexnet.analysis.atlas import cache_root as default_root

            cache_root = default_root(engine.checkpoint)
        self.cache_root = Path(cache_root)
        self.atlas_sample, self.atlas_top_k = atlas_sample, atlas_top_k
        self.featvis_seconds = featvis_seconds
        self.job = AtlasJob()
        if "train" not in engine.splits:
            self.job.unavailable = "no training split was given (--data DIR with a train/ folder), so no unit atlas"
            self.job.ready.set()
        self._digest: str | None = None
        self._attributor: Any = None
        self._slots = threading.BoundedSemaphore(max_jobs)
        self.wait_seconds = wait_seconds
        self._acts: LRU[Tensor] = LRU(16)
        self._knowledge: LRU[dict[str, Any]] = LRU(64)
        self._step_seconds: float | None = None
        self._unit_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ identity and cache

    @property
    def digest(self) -> str:
        """SHA-256 of the loaded weights (computed once: it keys every cache of this module)."""
        if self._digest is None:
            from alexnet.analysis.retrieval import weights_fingerprint

            self._digest = weights_fingerprint(self.engine.model)
        return self._digest

    def cache_dir(self) -> Path:
        from alexnet.analysis.atlas import model_cache_dir

        return model_cache_dir(self.digest, self.cache_root)

    # ------------------------------------------------------------------ the atlas

    def build_atlas(self, batch_size: int = 32) -> None:
        """Load the stored atlas of these weights, or build and store one; run once, in the background."""
        job = self.job
        if job.ready.is_set():
            return
        from alexnet.analysis.atlas import Atlas, ensure_atlas, model_cache_dir

        eng = self.engine
        job.started = time.monotonic()
        try:
            directory = model_cache_dir(self.digest, self.cache_root) / "atlas"
            atlas = None
            if (directory / "atlas.json").is_file():
                try:
                    atlas = Atlas.load(directory)
                except AlexNetError as exc:
                    log.warning("%s; building it again", exc)
                if atlas is not None and atlas.info.get("weights_sha256") != self.digest:
                    atlas = None
            if atlas is None:
                data = None if eng.data is None else str(eng.data.resolve())
                atlas, _ = ensure_atlas(
                    eng.model, eng.meta, eng.splits["train"], eng.splits.get("val"), root=self.cache_root,
                    rebuild=True, data=data, sample=self.atlas_sample, top_k=self.atlas_top_k,
                    batch_size=batch_size, device=eng.device, num_workers=0,
                )
                job.built = True
            job.atlas = atlas
        except Exception as exc:  # the page degrades to live activations only; the server keeps running
            log.exception("building the unit atlas failed")
            job.error = str(exc) or type(exc).__name__
        finally:
            job.seconds = round(time.monotonic() - job.started, 2)
            job.ready.set()

    def start_atlas(self) -> threading.Thread:
        t = threading.Thread(target=self.build_atlas, name="unit-atlas", daemon=True)
        t.start()
        return t

    def status(self) -> dict[str, Any]:
        """For ``/api/info``: whether the atlas is there, being built, or cannot be."""
        job = self.job
        out: dict[str, Any] = {
            "available": job.unavailable is None,
            "ready": job.atlas is not None,
            "building": job.unavailable is None and not job.ready.is_set(),
            "error": job.error,
            "reason": job.unavailable,
        }
        if job.started is not None:
            out["seconds"] = job.seconds if job.seconds is not None else round(time.monotonic() - job.started, 1)
        if job.atlas is not None:
            out.update(built=job.built, sample=job.atlas.info.get("sample"), top_k=job.atlas.info.get("top_k"),
                       probes=job.atlas.probes is not None, calibrated=job.atlas.ood is not None)
        return out

    def _atlas(self) -> Atlas:
        """The atlas, or 503 with why not (the page retries while it builds)."""
        job = self.job
        if job.atlas is not None:
            return job.atlas
        if job.unavailable is not None:
            raise ExplorerError(404, job.unavailable)
        if job.error is not None:
            raise ExplorerError(503, f"the unit atlas could not be built: {job.error}")
        raise ExplorerError(503, "the unit atlas is still being built; try again in a few seconds")

    def atlas_summary(self) -> dict[str, Any]:
        """Measured captions, per-layer summaries, probe accuracies and the out-of-class calibration."""
        atlas = self._atlas()
        return {"ready": True, **atlas.to_json(), "status": self.status()}

    # ------------------------------------------------------------------ one channel

    def _activation(self, a: Analysis, layer: str) -> Tensor:
        """``layer``'s whole activation [C, H, W] on the analysed image (cached, bounded)."""
        key = (a.id, layer)
        hit = self._acts.get(key)
        if hit is not None:
            return hit
        if a.image is None:
            raise ExplorerError(404, "this image's pixels are no longer cached; choose it again")
        return self._acts.put(key, self.engine._forward_one(a.image, [layer])[layer][0])

    def unit(self, a: Analysis, layer: str, channel: int) -> dict[str, Any]:
        """One channel: its activation map on this image, enlarged, and its top training patches."""

        if layer not in CONV_LAYERS:
            raise ExplorerError(404, f"unknown layer {layer!r}; choose from {list(CONV_LAYERS)}")
        act = self._activation(a, layer)
        if not 0 <= channel < act.shape[0]:
            raise ExplorerError(404, f"{layer} has channels 0..{act.shape[0] - 1}, not {channel}")
        m = act[channel].numpy()
        means = act.mean((1, 2))
        crop = self._crop(a)
        out: dict[str, Any] = {
            "image": {"id": a.id, "name": a.name},
            "layer": layer,
            "channel": channel,
            "channels": int(act.shape[0]),
            "shape": [int(d) for d in m.shape],
            "max": round(float(m.max()), 4),
            "mean": round(float(m.mean()), 4),
            # 1: the layer's most active channel (means compared as one reduction: a channel is never above itself)
            "rank": int((means > means[channel]).sum()) + 1,
            "map": data_url(png_bytes(_upscale(heatmap_rgb(m), 192))),
            "overlay": jpeg_url(overlay(_upscale(crop, 192), m)),
        }
        job = self.job
        if job.atlas is None:
            out["atlas"] = {"ready": False, "message": job.unavailable or job.error
                            or "the unit atlas is still being built: top patches appear when it is ready"}
            return out
        la = job.atlas.layers[layer]
        info = la.unit(channel)
        names = job.atlas.info.get("class_names") or []
        hits = []
        for r, hit in enumerate(info.pop("hits")):
            patch = la.patches[channel, r].permute(1, 2, 0).contiguous().numpy()
            label = hit["label"]
            hits.append({**hit, "name": names[label] if 0 <= label < len(names) else str(label),
                         "patch": data_url(png_bytes(_upscale(patch, 64)))})
        s = la.summary
        out["atlas"] = {
            "ready": True,
            "hits": hits,
            "stats": {k: round(v, 4) for k, v in info.items() if isinstance(v, float)},
            "receptive_field": la.rf.size,
            "sample": job.atlas.info.get("sample"),
            "thresholds": {"oriented": _const("ORIENTED"), "coloured": _const("COLOURED")},
            "layer_caption": job.atlas.caption(layer),
            "layer_purity": s.get("purity"),
        }
        return out

    def _crop(self, a: Analysis) -> np.ndarray:
        if a.image is None:
            raise ExplorerError(404, "this image's pixels are no longer cached; choose it again")
        c = self.engine.meta.input_size
        top = (a.image.shape[0] - c) // 2
        return a.image[top : top + c, top : top + c]

    # ------------------------------------------------------------------ what each layer knows

    def knowledge(self, a: Analysis) -> dict[str, Any]:
        """Per layer, the probe's probability of the label (the true one when known, else the
        model's answer): how much each depth already knows, measured."""
        from alexnet.analysis.probes import layer_knowledge

        atlas = self._atlas()
        if atlas.probes is None:
            raise ExplorerError(404, "the stored atlas has no probes")
        key = a.id
        hit = self._knowledge.get(key)
        if hit is not None:
            return hit
        if a.image is None:
            raise ExplorerError(404, "this image's pixels are no longer cached; choose it again")
        probes = atlas.probes
        probs = layer_knowledge(self.engine.model, self.engine.meta, probes, _uint8_batch(a.image),
                                device=self.engine.device)
        order = [name for name in (*probes.probes, "fc8") if name in probs]
        target, source = None, "the model's answer"
        if a.true_index is not None:
            cls = self.engine.meta.classes[a.true_index]
            if cls in probes.classes:
                target, source = probes.classes.index(cls), "the true label"
        if target is None:
            target = int(probs["fc8"][0].argmax())
        acc = {p.layer: p.val_accuracy for p in probes.probes.values()}
        layers = []
        for name in order:
            row = probs[name][0]
            best = int(row.argmax())
            layers.append({
                "layer": name,
                "prob": round(float(row[target]), 6),
                "top": {"index": best, "name": probes.class_names[best], "prob": round(float(row[best]), 6)},
                "val_accuracy": None if name == "fc8" or not np.isfinite(acc.get(name, float("nan"))) else round(acc[name], 4),
                "kind": "model" if name == "fc8" else "probe",
            })
        out = {
            "image": {"id": a.id, "name": a.name},
            "target": {"index": target, "name": probes.class_names[target], "source": source},
            "classes": len(probes.classes),
            "chance": round(1.0 / max(1, len(probes.classes)), 6),
            "layers": layers,
        }
        return self._knowledge.put(key, out)

    def verdict(self, probs: np.ndarray) -> dict[str, Any]:
        """Whether an answer can be read as recognition: always the model's class count; with the
        calibration stored in the atlas, whether this image's confidence is typical of its classes."""
        n = len(probs)
        job = self.job
        if job.atlas is None or job.atlas.ood is None:
            why = "still being calibrated" if job.unavailable is None and job.error is None else "not calibrated"
            return {"outside": None, "num_classes": n, "calibrated": False,
                    "message": f"the model only knows these {n} classes and must answer with one of them "
                               f"(the out-of-class check is {why})"}
        from alexnet.analysis.probes import outside_classes

        v = outside_classes(torch.from_numpy(np.asarray(probs, dtype=np.float32)), job.atlas.ood)[0]
        return {**v.to_dict(), "calibrated": True, "keep": job.atlas.ood.keep}

    # ------------------------------------------------------------------ heavy work

    def _slot(self) -> threading.BoundedSemaphore:
        if not self._slots.acquire(timeout=self.wait_seconds):
            raise ExplorerError(503, "the explorer is busy explaining other images; try again shortly")
        return self._slots

    def attribution(self, a: Analysis, targets: list[int] | None, methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
        """Occlusion and/or Grad-CAM maps of one image for each class in ``targets`` (default:
        the model's answer), computed in one batch per method and cached by the attributor."""
        from alexnet.analysis.attribution import Attributor, default_window
        from alexnet.analysis.attribution import overlay as attribution_overlay

        n = self.engine.meta.num_classes
        chosen = list(dict.fromkeys(targets or [int(np.argmax(a.probs))]))
        bad = [t for t in chosen if not 0 <= t < n]
        if bad:
            raise ExplorerError(422, f"class {bad[0]} is outside 0..{n - 1}")
        for m in methods:
            if m not in METHODS:
                raise ExplorerError(422, f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if a.image is None:
            raise ExplorerError(404, "this image's pixels are no longer cached; choose it again")
        images = _uint8_batch(a.image).expand(len(chosen), -1, -1, -1)
        crop = torch.from_numpy(np.ascontiguousarray(self._crop(a))).permute(2, 0, 1)
        slot = self._slot()
        try:
            if self._attributor is None:
                self._attributor = Attributor(self.engine.model, self.engine.meta, device=self.engine.device)
            results: dict[str, list[Any]] = {}
            seconds: dict[str, float] = {}
            for m in methods:
                t0 = time.perf_counter()
                results[m] = self._attributor.explain(images, m, chosen)
                seconds[m] = round(time.perf_counter() - t0, 4)
        finally:
            slot.release()
        window, stride = default_window(self.engine.meta.input_size)
        rows = []
        for i, t in enumerate(chosen):
            row: dict[str, Any] = {"index": t, "class": self.engine.meta.classes[t], "name": self.engine.meta.class_names[t],
                                   "prob": round(float(a.probs[t]), 6)}
            for m in methods:
                amap = results[m][i]
                v = amap.values
                row[m] = {
                    "overlay": jpeg_url(_upscale(attribution_overlay(crop, v).permute(1, 2, 0).numpy(), 224)),
                    "max": round(float(v.max()), 6),
                    "min": round(float(v.min()), 6),
                    "params": amap.params,
                    "compute_seconds": round(amap.seconds, 4),  # when it was computed (this request or an earlier one)
                }
            rows.append(row)
        return {
            "image": {"id": a.id, "name": a.name},
            "methods": list(methods),
            "seconds": seconds,
            "occlusion_window": {"window": window, "stride": stride},
            "targets": rows,
        }

    def _steps(self) -> int:
        """Optimisation steps that fit ``featvis_seconds`` on this model and device (16..128, a
        multiple of 16 so the cache key is stable), from one timed forward and backward pass."""
        if self._step_seconds is None:
            model, c = self.engine.model, self.engine.meta.input_size
            x = torch.rand(1, 3, c, c, device=self.engine.device, requires_grad=True)
            t0 = time.perf_counter()
            with torch.enable_grad():
                model.forward_layers(x, ["fc8"])["fc8"].sum().backward()
            # The step also runs the image's FFT parameterisation and random transforms: about
            # three times a bare pass (measured on alexnet_small and alexnet_owt). Corrected by
            # the measured time of every visualisation computed since (see featvis).
            self._step_seconds = max(1e-4, (time.perf_counter() - t0) * 3.0)
        steps = int(self.featvis_seconds / self._step_seconds) // 16 * 16
        return max(16, min(128, steps))

    def featvis(self, layer: str, unit: int) -> dict[str, Any]:
        """The input that maximises ``unit`` of ``layer`` (conv: channel mean; fc: the unit), cached."""
        from alexnet.analysis.featvis import cached_visualisation

        model = self.engine.model
        names = list(getattr(model, "layer_names", ()))
        if layer not in names or layer not in (*CONV_LAYERS, *FC_LAYERS):
            raise ExplorerError(404, f"unknown layer {layer!r}; choose from {[*CONV_LAYERS, *FC_LAYERS]}")
        size = self._units(layer)
        if not 0 <= unit < size:
            raise ExplorerError(404, f"{layer} has units 0..{size - 1}, not {unit}")
        directory = self.cache_dir() / "featvis"
        slot = self._slot()
        try:
            # A unit visualised before is reused at the step count it was computed with (the
            # budget's estimate of a step changes as visualisations are timed).
            done = sorted(directory.glob(f"{layer}-{unit}-s*-r0.png"))
            found = re.fullmatch(rf"{layer}-{unit}-s(\d+)-r0\.png", done[0].name) if done else None
            steps = int(found.group(1)) if found else self._steps()
            t0 = time.perf_counter()
            image, computed = cached_visualisation(model, self.engine.meta, layer, unit, directory,
                                                   steps=steps, digest=self.digest)
            seconds = round(time.perf_counter() - t0, 3)
            if computed:  # what a step really costs here, for the next unit's budget
                self._step_seconds = max(1e-4, seconds / steps)
        finally:
            slot.release()
        out = {
            "layer": layer,
            "unit": unit,
            "steps": steps,
            "computed": computed,
            "seconds": seconds,
            "png": data_url(png_bytes(_upscale(image.permute(1, 2, 0).contiguous().numpy(), 192))),
        }
        if layer == "fc8":
            out["class"] = self.engine.meta.class_names[unit]
        return out

    def _units(self, layer: str) -> int:
        """Units (channels) of ``layer``, from one forward pass of a blank input (cached per layer)."""
        if layer not in self._unit_counts:
            c = self.engine.meta.input_size
            with torch.no_grad():
                out = self.engine.model.forward_layers(torch.zeros(1, 3, c, c, device=self.engine.device), [layer])[layer]
            self._unit_counts[layer] = int(out.shape[1])
        return self._unit_counts[layer]


def _const(name: str) -> float:
    from alexnet.analysis import atlas

    return float(getattr(atlas, name))
