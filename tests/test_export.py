"""Exports compute what the PyTorch model computes: ONNX through onnxruntime, TorchScript
reloaded, safetensors through load_model; each carries the metadata needed to feed it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import test_analysis_support as support
import torch
from test_analysis_support import NUM_CLASSES, TinyRun

from alexnet.checkpoint import load_model
from alexnet.cli import main
from alexnet.export import META_KEY, export_model, load_torchscript

tiny_run = support.tiny_run
torchvision_weights = support.torchvision_weights


@pytest.fixture(scope="module")
def loaded(tiny_run: TinyRun):
    return load_model(tiny_run.checkpoint)


def test_onnx_matches_pytorch_with_dynamic_batch(loaded, tmp_path: Path) -> None:
    model, meta = loaded
    path = export_model(model, meta, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # exported with batch 2: the batch dimension must be dynamic
        x = torch.randn(batch, 3, meta.input_size, meta.input_size)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == (batch, NUM_CLASSES)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    doc = json.loads(props[META_KEY])
    assert doc["classes"] == meta.classes and doc["input_size"] == meta.input_size
    assert doc["norm_mode"] == meta.norm_mode and len(doc["channel_mean"]) == 3


def test_torchscript_reloads_and_matches(loaded, tmp_path: Path) -> None:
    model, meta = loaded
    path = export_model(model, meta, "torchscript", tmp_path / "m.pt")
    module, doc = load_torchscript(path)
    x = torch.randn(3, 3, meta.input_size, meta.input_size)
    with torch.no_grad():
        torch.testing.assert_close(module(x), model(x), atol=1e-5, rtol=1e-5)
    assert doc["class_names"] == meta.class_names and doc["num_classes"] == NUM_CLASSES


def test_safetensors_roundtrip_keeps_weights_and_meta(loaded, tmp_path: Path) -> None:
    model, meta = loaded
    path = export_model(model, meta, "safetensors", tmp_path / "m.safetensors")
    again, meta2 = load_model(path)
    assert meta2.classes == meta.classes and meta2.norm_mode == meta.norm_mode
    torch.testing.assert_close(meta2.stats.mean, meta.stats.mean)
    x = torch.randn(2, 3, meta.input_size, meta.input_size)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_unknown_format_is_an_error(loaded, tmp_path: Path) -> None:
    model, meta = loaded
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, meta, "tflite", tmp_path / "m")


def test_cli_export_verifies_each_format(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    for fmt in ("safetensors", "onnx", "torchscript"):
        out = tmp_path / f"model.{fmt}"
        assert main(["export", "--checkpoint", str(tiny_run.checkpoint), "--format", fmt, "--output", str(out)]) == 0
        assert out.is_file() and out.stat().st_size > 0
        assert "verified" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--format", "onnx",
                 "--output", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_torchvision_weights_export(torchvision_weights: Path, tmp_path: Path) -> None:
    """torchvision alexnet weights -> alexnet_owt -> safetensors with the ImageNet metadata,
    computing the same logits when loaded back (the other formats are format-generic and
    tested on the tiny model above; tracing the 61M-parameter net here would only cost time)."""
    model, meta = load_model(torchvision_weights)
    x = torch.randn(1, 3, 224, 224)
    st = export_model(model, meta, "safetensors", tmp_path / "tv.safetensors")
    again, meta2 = load_model(st)
    assert meta2.model == "alexnet_owt" and meta2.num_classes == 1000 and meta2.classes == meta.classes
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
