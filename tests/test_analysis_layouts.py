"""The analyses follow the model's own layers, not AlexNet's: ``alexnet_fast`` (conv1 .. conv7,
fc8; no fc6/fc7) gets a report, atlas, probes, retrieval, neighbours, Grad-CAM and feature
visualisation over its own rows, while the AlexNet layout keeps its conv1..conv5 / fc7
answers; the explorer, whose page is written for AlexNet's eight layers, refuses it in one
line at startup."""

from __future__ import annotations

import json
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alexnet.analysis.atlas import CONV_LAYERS, build_atlas, receptive_fields
from alexnet.analysis.attribution import Attributor, _gradcam_from_rows
from alexnet.analysis.probes import PROBE_LAYERS
from alexnet.analysis.retrieval import INDEX_FILE, FeatureIndex
from alexnet.checkpoint import load_model
from alexnet.cli import main
from alexnet.data.splits import open_splits
from alexnet.data.synth import generate
from alexnet.errors import UsageError
from alexnet.evaluation import Predictor
from alexnet.models import LAYER_NAMES, create_model
from alexnet.training.config import from_dict, preset
from alexnet.training.trainer import train

FAST_CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7")


@dataclass
class FastRun:
    data: Path
    run_dir: Path
    checkpoint: Path


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors on a shared 2-core machine: one thread is faster (see test_atlas.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> FastRun:
    """alexnet_fast at width 1/8 trained for one epoch (3 steps) on 3 classes of 32 px images."""
    root = tmp_path_factory.mktemp("fast")
    data = generate(root / "data", num_classes=3, train_per_class=12, val_per_class=4, size=32, workers=1)
    overrides = {"data": str(data), "out": str(root / "run"), "epochs": 1, "batch_size": 16,
                 "model": "alexnet_fast", "model_options": {"width": 0.125}, "tensorboard": False,
                 "progress": False, "num_workers": 0, "device": "cpu"}
    run_dir = Path(train(from_dict(overrides, preset("demo")).validate()).run_dir)
    return FastRun(data, run_dir, run_dir / "checkpoints" / "best.pt")


@pytest.fixture(scope="module")
def fast(fast_run: FastRun):
    model, meta = load_model(fast_run.checkpoint)
    train_set, val, _ = open_splits(fast_run.data, "val", 0.1)
    return model, meta, train_set, val


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- the rule


def test_layer_kinds_come_from_the_layer_names() -> None:
    fast = create_model("alexnet_fast", width=0.125)
    assert fast.conv_layers == FAST_CONVS and fast.hidden_layers == FAST_CONVS and fast.embedding_layer == "conv7"
    for name, options in (("alexnet_owt", {}), ("alexnet_small", {"width": 0.125})):
        with torch.device("meta"):
            model = create_model(name, **options)
        assert model.layer_names == LAYER_NAMES
        assert model.conv_layers == CONV_LAYERS == ("conv1", "conv2", "conv3", "conv4", "conv5")
        assert model.hidden_layers == PROBE_LAYERS == (*CONV_LAYERS, "fc6", "fc7")
        assert model.embedding_layer == "fc7"


def test_predictor_features_default_to_the_embedding_layer(fast, fast_run: FastRun) -> None:
    model, meta, train_set, _ = fast
    images = torch.stack([train_set[i][0] for i in range(2)])
    got = Predictor(model, meta, 1, "cpu").features(images)
    x = meta.eval_transform()(images)
    with torch.no_grad():
        want = model.forward_layers(x, ["conv7"])["conv7"].flatten(1)
    assert got.shape == want.shape and want.shape[1] == 32 * 3 * 3  # conv7: 32 maps of 3x3 at width 1/8
    torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- atlas and probes


def test_atlas_and_probes_cover_conv1_to_conv7(fast) -> None:
    model, meta, train_set, val = fast
    atlas = build_atlas(model, meta, train_set, val, sample=None, top_k=3, batch_size=16)
    assert tuple(atlas.layers) == FAST_CONVS
    assert tuple(atlas.probes.probes) == FAST_CONVS
    assert atlas.layers["conv7"].channels == 32 and atlas.ood is not None
    assert [r["layer"] for r in atlas.to_json()["probes"]] == list(FAST_CONVS)


def test_receptive_fields_of_alexnet_fast_are_exactly_the_pixels_a_unit_sees() -> None:
    """As test_atlas checks for alexnet_small: a pixel just outside the field leaves the unit alone,
    the field's last row changes it (whitening 2x2, 3x3 convolutions, 2/2 pools)."""
    torch.manual_seed(0)
    model = create_model("alexnet_fast", num_classes=3, width=0.125, input_size=64).eval().double()
    with torch.no_grad():  # random kernels: the Dirac start uses only each kernel's centre tap
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_()
    rfs = receptive_fields(model, 64)
    assert tuple(rfs) == FAST_CONVS
    assert [rfs[n].size for n in FAST_CONVS] == [2, 5, 9, 15, 23, 35, 51]
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    for name, rf in rfs.items():
        y0 = x0 = 1
        top, _, size = rf.box(y0, x0)
        base = model.forward_layers(x, [name])[name][0, :, y0, x0]
        row = top + size - 1
        assert row + 1 < 64, name
        outside = x.clone()
        outside[..., row + 1 :, :] += 5.0
        assert torch.equal(model.forward_layers(outside, [name])[name][0, :, y0, x0], base), name
        inside = x.clone()
        inside[..., row, :] += 5.0
        assert not torch.equal(model.forward_layers(inside, [name])[name][0, :, y0, x0], base), name


# --------------------------------------------------------------------------- the report


def test_report_of_an_alexnet_fast_run(fast_run: FastRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(fast_run.run_dir, run)
    assert main(["report", str(run), "--device", "cpu", "--max-index", "40", "--workers", "0"]) == 0
    page = (run / "report" / "report.html").read_text()
    for layer in FAST_CONVS:
        assert f"<li>{layer}: of " in page  # an atlas row per conv layer
        assert f"<td>{layer}</td>" in page  # a probe row per hidden layer
    assert "<td>fc6</td>" not in page and "<td>fc7</td>" not in page and "by fc7" not in page
    assert "Retrieval by conv7 (Figure 4, right)" in page
    assert "indexed by conv7 (288-d)" in page and "by conv7 distance" in page
    assert "one row per conv layer (conv1 to conv7)" in page
    assert "24 fixed 2x2x3 whitening filters (fitted to the training patches, not learned)" in page
    assert "learned 2x2x3" not in page
    assert (run / "report" / "retrieval.png").is_file() and (run / "report" / "unit_atlas.png").is_file()


# --------------------------------------------------------------------------- the commands


def test_cli_atlas_lists_the_models_layers(fast_run: FastRun, tmp_path: Path, capsys) -> None:
    args = ["atlas", "--checkpoint", str(fast_run.run_dir), "--cache", str(tmp_path), "--sample", "20",
            "--device", "cpu", "--workers", "0", "--batch-size", "16", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["layers"]) == list(FAST_CONVS)
    assert [row["layer"] for row in doc["probes"]] == list(FAST_CONVS)


def test_cli_neighbors_indexes_conv7(fast_run: FastRun, tmp_path: Path, capsys) -> None:
    query = next((fast_run.data / "val").rglob("*.jpg"))
    index = tmp_path / "index"
    args = ["neighbors", "--checkpoint", str(fast_run.run_dir), "--index", str(index), "--query", str(query),
            "-k", "3", "--device", "cpu", "--workers", "0", "--json"]
    assert main(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found[0]["neighbours"]) == 3
    doc = json.loads((index / INDEX_FILE).read_text())
    assert doc["layer"] == "conv7" and doc["dim"] == 288
    assert main(args) == 0  # reused: the queries are read at the index's layer
    again = json.loads(capsys.readouterr().out)[0]["neighbours"]  # (features kept as float16 on disk)
    assert [n["path"] for n in again] == [n["path"] for n in found[0]["neighbours"]]
    # An index stored without its layer is fc7's (the format before it was recorded): a layer
    # this model does not have is refused in one line, not a traceback.
    del doc["layer"]
    (index / INDEX_FILE).write_text(json.dumps(doc))
    assert FeatureIndex.load(index).layer == "fc7"
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "fc7" in line and "alexnet_fast" in line


def test_gradcam_defaults_to_the_last_convolution(fast) -> None:
    """conv7 flows into a functional global max pool (no module to hook): Grad-CAM is still its
    definition, and the path that does without a module computes what Captum does where both can."""
    model, meta, train_set, _ = fast
    images = torch.stack([train_set[i][0] for i in range(3)])
    att = Attributor(model, meta, "cpu")
    maps = att.gradcam(images, relu=False)
    x = att.inputs(images)
    with torch.enable_grad():
        out = model.forward_layers(x, ["conv7", "fc8"])
        a, h = out["conv7"], out["fc8"]
        chosen = h.argmax(1)
        (grad,) = torch.autograd.grad(h.gather(1, chosen.unsqueeze(1)).sum(), a)
    cam = (grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).detach()
    cam = F.interpolate(cam, size=(meta.input_size,) * 2, mode="bilinear", align_corners=False)[:, 0]
    for b, m in enumerate(maps):
        assert m.params["layer"] == "conv7" and m.target == int(chosen[b])
        torch.testing.assert_close(m.values, cam[b], atol=1e-5, rtol=1e-4)
    captum = att.gradcam(images, targets=[0, 1, 2], layer="conv6", relu=False)  # conv7 takes it: Captum's path
    with torch.enable_grad():
        mine = _gradcam_from_rows(model, "conv6", x.clone().requires_grad_(True), [0, 1, 2], relu=False)
    mine = F.interpolate(mine.detach(), size=(meta.input_size,) * 2, mode="bilinear", align_corners=False)[:, 0]
    for b, m in enumerate(captum):
        torch.testing.assert_close(m.values, mine[b], atol=1e-5, rtol=1e-4)


def test_cli_explain_uses_the_models_layers(fast_run: FastRun, fast, tmp_path: Path, capsys) -> None:
    model, meta, train_set, val = fast
    cache = tmp_path / "cache"
    from alexnet.analysis.atlas import ensure_atlas

    ensure_atlas(model, meta, train_set, val, root=cache, sample=20, top_k=2, batch_size=16)
    image = next((fast_run.data / "val").rglob("*.jpg"))
    assert main(["explain", "--checkpoint", str(fast_run.run_dir), str(image), "--out", str(tmp_path),
                 "--cache", str(cache), "--device", "cpu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)[0]
    assert doc["gradcam"]["params"]["layer"] == "conv7" and Path(doc["gradcam"]["png"]).is_file()
    assert list(doc["by_layer"]["probs"]) == [*FAST_CONVS, "fc8"]
    assert "outside" in doc


def test_cli_visualise_takes_any_layer_of_the_model(fast_run: FastRun, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v.png"
    base = ["visualise", "--checkpoint", str(fast_run.run_dir), "--unit", "1", "--steps", "2", "--device", "cpu"]
    assert main([*base, "--layer", "conv7", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "conv7 unit 1" in capsys.readouterr().out
    assert main([*base, "--layer", "fc7", "--out", str(tmp_path / "w.png")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "alexnet_fast has no layer 'fc7'" in line and "conv7" in line
    assert not (tmp_path / "w.png").exists()


# --------------------------------------------------------------------------- the explorer


def test_explorer_refuses_a_model_without_alexnets_layers(fast_run: FastRun, capsys) -> None:
    from alexnet.explorer import create_app

    with pytest.raises(UsageError, match="alexnet_fast"):
        create_app(fast_run.checkpoint, fast_run.data, build_index=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["explore", "--checkpoint", str(fast_run.run_dir), "--port", str(port)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "alexnet_fast" in line and "no fc6, fc7" in line and "conv6, conv7" in line and "alexnet report" in line


def test_explorer_admits_the_alexnet_layout() -> None:
    from alexnet.explorer.engine import check_layout

    for name in ("alexnet_owt", "alexnet_small"):
        with torch.device("meta"):
            check_layout(create_model(name), name)  # no error
