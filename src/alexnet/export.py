"""Export a trained model for use outside this package: safetensors, ONNX or TorchScript.

Every format carries the metadata needed to use the model correctly (classes, input
size, normalisation), because logits without the preprocessing are useless:

* ``safetensors``: weights + statistics + :class:`ModelMeta` (loads back with
  :func:`alexnet.checkpoint.load_model`).
* ``onnx``: input ``input`` float32 ``[N, 3, crop, crop]`` (already normalised), output
  ``logits [N, C]``, dynamic batch; the ONNX ``metadata_props`` hold ``alexnet.meta``
  (JSON: classes, names, sizes, normalisation mode, channel mean/std).
* ``torchscript``: a traced module with the same signature; ``alexnet_meta.json`` is
  stored as an extra file in the archive.

Files are written to a temporary name and renamed, so a failed export leaves no
half-written model under the requested name.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.checkpoint import ModelMeta, load_model, save_safetensors
from alexnet.errors import ExportError
from alexnet.files import atomic_target

FORMATS = ("safetensors", "onnx", "torchscript")
META_KEY = "alexnet.meta"
TORCHSCRIPT_META_FILE = "alexnet_meta.json"


def export_meta(meta: ModelMeta) -> dict[str, Any]:
    """JSON-safe description of how to feed the exported network (no tensors beyond mean/std)."""
    return {
        "model": meta.model,
        "options": meta.model_options,
        "num_classes": meta.num_classes,
        "classes": meta.classes,
        "class_names": meta.class_names,
        "image_size": meta.image_size,
        "input_size": meta.input_size,
        "norm_mode": meta.norm_mode,
        "channel_mean": [float(v) for v in meta.stats.mean],
        "channel_std": [float(v) for v in meta.stats.std],
        "pixel_scale": "0..255",
        "input": "float32 [N, 3, input_size, input_size], normalised like training (see norm_mode)",
        "output": "logits [N, num_classes]; softmax for probabilities",
    }


def _example_input(meta: ModelMeta, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, meta.input_size, meta.input_size)


def export_onnx(model: nn.Module, meta: ModelMeta, output: Path, opset: int | None = None) -> Path:
    """ONNX with a dynamic batch dimension, via the torch.export-based exporter."""
    import onnx

    model = model.cpu().eval()
    with atomic_target(output) as tmp:
        try:
            # The exporter prints progress and logs about absent torchvision ops: keep it quiet.
            quiet_logger = logging.getLogger("torch.onnx")
            level = quiet_logger.level
            quiet_logger.setLevel(logging.ERROR)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model,
                    (_example_input(meta),),
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    dynamo=True,
                    opset_version=opset,
                    verbose=False,
                )
        except Exception as exc:  # the exporter raises many internal types
            raise ExportError(f"ONNX export of {meta.model} failed: {exc}") from exc
        finally:
            quiet_logger.setLevel(level)
        proto = program.model_proto
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(export_meta(meta))
        proto.doc_string = f"AlexNet ({meta.model}, {meta.num_classes} classes) exported by the alexnet package"
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
    return output


def export_torchscript(model: nn.Module, meta: ModelMeta, output: Path) -> Path:
    """A traced TorchScript module (eval mode: dropout off) with the metadata inside the archive."""
    model = model.cpu().eval()
    with atomic_target(output) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(model, _example_input(meta), check_trace=False)
                traced = torch.jit.freeze(traced)
                extra = {TORCHSCRIPT_META_FILE: json.dumps(export_meta(meta))}
                torch.jit.save(traced, str(tmp), _extra_files=extra)
        except Exception as exc:
            raise ExportError(f"TorchScript export of {meta.model} failed: {exc}") from exc
    return output


def export_model(model: nn.Module, meta: ModelMeta, fmt: str, output: str | Path) -> Path:
    """Write ``model`` in ``fmt`` (one of :data:`FORMATS`) to ``output``."""
    output = Path(output)
    if fmt == "safetensors":
        return save_safetensors(output, {k: v.cpu() for k, v in model.state_dict().items()}, meta)
    if fmt == "onnx":
        return export_onnx(model, meta, output)
    if fmt == "torchscript":
        return export_torchscript(model, meta, output)
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Reload a TorchScript export and its metadata (for checks and for users)."""
    extra = {TORCHSCRIPT_META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream, still works
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra[TORCHSCRIPT_META_FILE] or "{}")


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
        module, _ = load_torchscript(path)
        with torch.inference_mode():
            got = module(x)
    else:
        reloaded, _ = load_model(path)
        with torch.inference_mode():
            got = reloaded(x)
    return float((got - ref).abs().max())
