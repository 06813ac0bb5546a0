"""Checkpoints that survive crashes and load without trusting the file.

A checkpoint is one ``torch.save`` file holding plain data only (tensors, numbers,
strings, lists, dicts)::

    {"format": "alexnet-checkpoint", "version": 1,
     "meta": ModelMeta.to_dict(),          # how to rebuild and feed the model
     "model": state_dict,
     "optimizer": ..., "scheduler": ..., "train_state": ...,   # optional (training)
     "sha256": digest of every tensor and value above}

* Writing is atomic: a temporary file in the same directory, flushed and fsynced,
  then ``os.replace`` onto the final name, so a crash at any moment leaves either
  the previous checkpoint or the new one, never a torn file under the real name.
* Reading uses ``torch.load(weights_only=True)``: a payload that would run code when
  unpickled is refused. The embedded digest is recomputed, so a file altered or
  damaged after writing is reported as corrupt instead of being used.
* :func:`load_model` also accepts our ``.safetensors`` exports, a bare state dict of
  the paper model, and torchvision's ``alexnet`` weights (loaded into ``alexnet_owt``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alexnet.data.stats import DatasetStats
from alexnet.data.transforms import MODES
from alexnet.errors import CheckpointError
from alexnet.files import atomic_write_bytes
from alexnet.models import create_model, model_info

FORMAT = "alexnet-checkpoint"
VERSION = 1
SAFETENSORS_META_KEY = "alexnet.meta"
# Bounds on what a checkpoint's metadata may ask to build: the paper's net is 61 M parameters.
MAX_PARAMS = 1_000_000_000
MAX_CLASSES = 100_000


@dataclass
class ModelMeta:
    """Everything needed to rebuild a model and feed it images like it was trained on.

    model/options:  ``create_model(model, num_classes, **options)``.
    classes:        class ids in index order (synsets or folder names).
    class_names:    readable names, same order.
    image_size:     stored side S the images are brought to (256 for ImageNet).
    input_size:     crop fed to the network (224 for ImageNet).
    norm_mode:      "image" (subtract the mean image) or "channel" (mean/std).
    stats:          the training set's :class:`DatasetStats`.
    """

    model: str
    num_classes: int
    classes: list[str]
    class_names: list[str]
    image_size: int
    input_size: int
    norm_mode: str
    stats: DatasetStats
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = self.stats.to_tensors(prefix="")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        """Metadata from an untrusted file, validated in full before anything is built from it."""
        if not isinstance(d, dict):
            raise CheckpointError(f"checkpoint metadata is not a table (got {type(d).__name__})")
        try:
            d = dict(d)
            d["stats"] = DatasetStats.from_tensors(d["stats"], prefix="")
            meta = cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata is invalid: {exc}") from None
        meta.check()
        return meta

    def check(self) -> None:
        """Refuse metadata that names no model of the zoo, carries options the model does not
        take or out of range, wrong types, or sizes that would allocate more than
        :data:`MAX_PARAMS` parameters (counted on the meta device: nothing is allocated)."""

        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise CheckpointError(f"checkpoint metadata {key!r}: {why}")

        need(isinstance(self.model, str), "model", "not a name")
        try:
            info = model_info(self.model)
        except KeyError as exc:
            raise CheckpointError(f"checkpoint metadata 'model': {exc.args[0]}") from None
        count_ok = isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool)
        need(count_ok and 1 <= self.num_classes <= MAX_CLASSES, "num_classes", f"must be 1..{MAX_CLASSES:,}")
        for key in ("classes", "class_names"):
            value = getattr(self, key)
            need(isinstance(value, list) and all(isinstance(c, str) and len(c) <= 1000 for c in value), key,
                 "must be a list of names")
            need(len(value) == self.num_classes, key, f"has {len(value)} entries for {self.num_classes} classes")
        for key in ("image_size", "input_size"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and 8 <= value <= 4096, key, "must be 8..4096")
        need(self.input_size <= self.image_size, "input_size", f"{self.input_size} exceeds image_size {self.image_size}")
        need(self.norm_mode in MODES, "norm_mode", f"must be one of {MODES}")
        need(isinstance(self.options, dict) and all(isinstance(k, str) for k in self.options), "options",
             "must be a table of named options")
        plain = (str, int, float, bool, type(None))
        need(all(isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))
                 for v in self.options.values()), "options", "values must be plain numbers, names or lists of them")
        problem = self.stats.problem(self.image_size)
        need(not problem, "stats", f"malformed ({problem})")
        options = self.model_options
        try:
            params = info.num_params(self.num_classes, **options)
        except Exception as exc:  # the builder's own checks (unknown option, bad value) on foreign data
            raise CheckpointError(f"checkpoint metadata 'options': {self.model} cannot be built with "
                                  f"{options}: {type(exc).__name__}: {exc}") from None
        need(params <= MAX_PARAMS, "options", f"would build {params:,} parameters (more than {MAX_PARAMS:,})")

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """A freshly initialised model of this architecture."""
        return create_model(self.model, num_classes=self.num_classes, **self.model_options).to(device)

    @property
    def model_options(self) -> dict[str, Any]:
        """The options that rebuild the architecture anywhere: ``devices`` (where the paper's
        split model ran) is a placement, not part of the model."""
        return {k: v for k, v in self.options.items() if k != "devices"}

    def num_params(self) -> int:
        """Parameters of this exact configuration (computed on the meta device: no memory)."""
        return model_info(self.model).num_params(self.num_classes, **self.model_options)

    def describe(self) -> str:
        """The model as it really is, in one line: name, options, parameters, input, classes.

        ``alexnet_small`` at its defaults and the demo's 56 px batch-norm variant differ
        by 25x in parameters; wherever a model is presented, this line says which it is.
        """
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(self.model_options.items()))
        norm = "mean image subtracted" if self.norm_mode == "image" else "normalised per channel"
        return (
            f"{self.model}({shown}): {self.num_params():,} parameters, {self.input_size}x{self.input_size} input "
            f"cropped from {self.image_size}x{self.image_size} images ({norm}), {self.num_classes} classes"
        )

    def eval_transform(self, ten_crop: bool = False):
        """The test-time transform (uint8 [B,3,S,S] -> normalised crops) for this model."""
        from alexnet.data.transforms import EvalTransform

        return EvalTransform(self.input_size, self.stats, self.norm_mode, ten_crop=ten_crop)


# --------------------------------------------------------------------------- digest


def _digest(obj: Any) -> str:
    """SHA-256 over a nested structure of tensors and plain values, in a canonical order."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"D")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, list | tuple):
            h.update(b"L" if isinstance(x, list) else b"U")
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())

    walk(obj)
    return h.hexdigest()


# --------------------------------------------------------------------------- atomic write




def save_checkpoint(
    path: str | Path,
    model_state: dict[str, Tensor],
    meta: ModelMeta,
    **extra: Any,
) -> Path:
    """Atomically write a checkpoint. ``extra`` (optimizer, scheduler, train_state, ...) must
    be plain data: tensors, numbers, strings, lists, tuples and dicts."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "meta": meta.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        **extra,
    }
    payload["sha256"] = _digest({k: v for k, v in payload.items() if k != "sha256"})
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


# --------------------------------------------------------------------------- reading


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _pickle_globals(path: Path, limit: int = 1 << 20) -> list[str] | None:
    """The callables a bare pickle file would import (its ``GLOBAL`` / ``STACK_GLOBAL``
    opcodes), without running it; None if the file is not a pickle stream at all."""
    import pickletools

    data = path.read_bytes()[:limit]
    if not data or data[0] != 0x80:  # every pickle torch or Python writes starts with PROTO
        return None
    found, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]))
            if op.name == "STOP":
                break
    except (ValueError, IndexError, TypeError, UnicodeDecodeError):
        return found or None
    return found


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises anything on arbitrary bytes: say what the file is
        with open(path, "rb") as f:
            head = f.read(4)
        named = _GLOBAL_RE.findall(str(exc)) or (_pickle_globals(path) if head[:1] == b"\x80" else None) or []
        if named:
            raise CheckpointError(
                f"refused to load {path}: it contains objects other than tensors and plain data "
                f"({', '.join(sorted(set(named)))}: possibly malicious code); only weights_only checkpoints "
                f"are accepted"
            ) from None
        if head == b"PK\x03\x04":  # a zip archive, as torch.save writes: damaged on the way
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__})") from None
        raise CheckpointError(f"{path} is not a checkpoint (unreadable archive)") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify one of our checkpoints; raises :class:`CheckpointError` if it is not valid."""
    path = Path(path)
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an alexnet checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')}")
    expected = payload.get("sha256")
    actual = _digest({k: v for k, v in payload.items() if k != "sha256"})
    if expected != actual:
        raise CheckpointError(f"checkpoint {path} failed its integrity check (sha256 mismatch)")
    payload["meta"] = ModelMeta.from_dict(payload["meta"])
    return payload


# torchvision alexnet state-dict keys: the signature of a torchvision weights file.
_TORCHVISION_KEYS = {"features.0.weight", "features.10.weight", "classifier.6.weight"}


def imagenet_meta(model: str, num_classes: int = 1000) -> ModelMeta:
    """Metadata for weights trained on ImageNet without ours (torchvision's, a bare state dict):
    the 1000 synsets and names, 256 px images, 224 px crops, the ImageNet channel statistics."""
    classes: list[str]
    names: list[str]
    try:
        from alexnet.data.imagenet import IMAGENET_CLASSES  # synset ids and readable names

        if num_classes == len(IMAGENET_CLASSES):
            classes = [s for s, _ in IMAGENET_CLASSES]
            names = [n for _, n in IMAGENET_CLASSES]
        else:
            raise ImportError
    except ImportError:
        classes = [f"class_{i}" for i in range(num_classes)]
        names = list(classes)
    return ModelMeta(
        model=model,
        num_classes=num_classes,
        classes=classes,
        class_names=names,
        image_size=256,
        input_size=224,
        norm_mode="channel",
        stats=DatasetStats.imagenet_fallback(),
    )


def _meta_for_state_dict(state: dict[str, Tensor], path: Path) -> ModelMeta:
    if state.keys() >= _TORCHVISION_KEYS:
        return imagenet_meta("alexnet_owt", state["classifier.6.weight"].shape[0])
    if {"conv1.weight", "conv2.weight", "fc8.weight"} <= state.keys() and state["conv1.weight"].shape[0] == 96:
        return imagenet_meta("alexnet", state["fc8.weight"].shape[0])
    raise CheckpointError(
        f"{path}: a state dict that is neither an alexnet checkpoint, the paper model's, "
        "nor torchvision's alexnet"
    )


def load_safetensors(path: str | Path) -> tuple[dict[str, Tensor], ModelMeta | None]:
    """Weights and (if present) metadata from a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    stats = {k[len("stats.") :]: v for k, v in tensors.items() if k.startswith("stats.")}
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if not weights:  # a plain weights file written by someone else
        return tensors, None
    meta = None
    if SAFETENSORS_META_KEY in header:
        try:
            d = json.loads(header[SAFETENSORS_META_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata is not valid JSON: {exc}") from None
        d["stats"] = stats
        meta = ModelMeta.from_dict(d)
    return weights, meta


def save_safetensors(path: str | Path, model_state: dict[str, Tensor], meta: ModelMeta) -> Path:
    """Weights (``model.*``), statistics (``stats.*``) and metadata (JSON in the header)."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    tensors.update(meta.stats.to_tensors(prefix="stats."))
    d = meta.to_dict()
    d.pop("stats")
    data = save(tensors, metadata={SAFETENSORS_META_KEY: json.dumps(d)})
    atomic_write_bytes(path, data)
    return Path(path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Any supported weights file -> (model in eval mode on ``device``, its :class:`ModelMeta`).

    Accepts our checkpoints (``.pt``), our safetensors exports, a bare state dict of the
    paper model, and torchvision ``alexnet`` weights (``.pth`` state dict or safetensors).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, meta = load_safetensors(path)
        if meta is None:
            meta = _meta_for_state_dict(state, path)
    else:
        payload = _torch_load(path)
        if isinstance(payload, dict) and payload.get("format") == FORMAT:
            ck = load_checkpoint(path)
            state, meta = ck["model"], ck["meta"]
        elif isinstance(payload, dict) and all(isinstance(v, Tensor) for v in payload.values()):
            state, meta = payload, _meta_for_state_dict(payload, path)
        else:
            raise CheckpointError(f"{path}: unrecognised weights file")
    model = meta.build("cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit {meta.model}: {exc}") from None
    return model.to(device).eval(), meta
