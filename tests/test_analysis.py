"""The report and its figures: real PNGs of the expected size, a self-contained HTML page,
kernels drawn per tower, and graceful handling of damaged run directories."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import test_analysis_support as support
import torch
from PIL import Image
from test_analysis_support import NUM_CLASSES, VAL_PER_CLASS, TinyRun

from alexnet.analysis import plots
from alexnet.analysis.filters import (
    colourfulness,
    conv1_weight,
    kernel_grid,
    normalise_kernels,
    tower_summary,
)
from alexnet.analysis.report import ReportError, read_metrics, write_report
from alexnet.checkpoint import load_model
from alexnet.cli import main
from alexnet.models import AlexNetSplit, create_model

tiny_run = support.tiny_run

FIGURES = {
    "training_curves.png": (1500, 420),
    "confusion_matrix.png": (900, 800),
    "imagenet_timeline.png": (900, 500),
}


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # decodes every pixel: a truncated file fails here
        assert im.getextrema() != ((0, 0),) * len(im.getbands())  # not blank black
        return im.size


@pytest.fixture(scope="module")
def report(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run.run_dir, run)
    # Through the command line, as a user runs it (8 queries, 8 samples: the defaults).
    assert main(["report", str(run), "--device", "cpu", "--max-index", "40", "--workers", "0"]) == 0
    return run / "report" / "report.html"


def test_report_pngs_are_real_images_of_the_expected_size(report: Path, tiny_run: TinyRun) -> None:
    out = report.parent
    for name, size in FIGURES.items():
        assert _png_size(out / name) == size, name
    model, _ = load_model(tiny_run.checkpoint)
    grid = kernel_grid(model)
    assert _png_size(out / "conv1_kernels.png") == (grid.shape[1], grid.shape[0])
    # top-5: 8 samples in 2 rows of 4 (3.2 x 4.4 in per cell); retrieval: 8 queries x (1 + 6).
    assert _png_size(out / "top5_predictions.png") == (1280, 880)
    assert _png_size(out / "retrieval.png") == (round(100 * (1.6 * 7 + 0.4)), round(100 * (1.7 * 8 + 0.3)))


def test_report_html_links_its_figures_with_real_alt_text(report: Path) -> None:
    page = report.read_text()
    assert page.startswith("<!doctype html>")
    assert len(page.encode()) < 100_000  # figures linked, not embedded (the embedded page was 2.4 MB)
    images = re.findall(r"<img [^>]*>", page)
    sources = [re.search(r'src="([^"]+)"', i).group(1) for i in images]
    assert sorted(sources) == sorted(p.name for p in report.parent.glob("*.png")) and len(sources) == 7
    for tag, src in zip(images, sources, strict=True):  # each a PNG beside the page, described in words
        Image.open(report.parent / src).verify()
        alt = re.search(r'alt="([^"]+)"', tag).group(1)
        assert len(alt.split()) >= 12 and alt != Path(src).stem, alt
    assert "http://" not in page and "https://" not in page
    for section in ("Training curves", "conv1 kernels", "What the units respond to", "Retrieval", "Top-5",
                    "Confusion", "ImageNet"):
        assert section in page
    assert "not the 1000 ILSVRC classes" in page  # a 4-class run is not placed on the timeline
    # A single-column model's kernels are not called the paper's two-tower Figure 3.
    assert "Figure 3" not in page and "single-column" in page


def test_kernel_caption_speaks_of_towers_only_where_there_are_towers(tmp_path: Path) -> None:
    from alexnet.analysis.report import _kernel_section

    paper = _kernel_section(create_model("alexnet"), tmp_path / "paper.png")
    assert "Figure 3" in paper.title and "tower A" in paper.html and "96 kernels of 11x11x3" in paper.title
    owt = _kernel_section(create_model("alexnet_owt"), tmp_path / "owt.png")
    assert "Figure 3" not in owt.title and not owt.html and "64 learned 11x11x3" in owt.title


def test_report_unit_atlas_figure_is_stored_with_the_run(report: Path) -> None:
    run = report.parent.parent
    assert list((run / "analysis").glob("*/atlas/atlas.json"))  # built once, kept with the run
    page = report.read_text()
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        assert f"<li>{layer}: of " in page  # the measured caption of every layer
    assert "What each layer already knows" in page and "<td>fc7</td>" in page and "Out-of-class check" in page
    with Image.open(report.parent / "unit_atlas.png") as im:
        assert im.size[0] > 600 and im.size[1] > 600


def test_report_evaluation_json_matches_the_run(report: Path) -> None:
    doc = json.loads((report.parent / "evaluation.json").read_text())
    assert doc["num_images"] == NUM_CLASSES * VAL_PER_CLASS
    assert sum(map(sum, doc["confusion"])) == doc["num_images"]


def test_report_survives_a_torn_metrics_line_and_a_missing_dataset(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "loss": 1.2, "st')  # killed mid-write
    records, bad = read_metrics(run / "metrics.jsonl")
    assert bad == 1 and records
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(tmp_path / "moved_away")
    (run / "config.json").write_text(json.dumps(config))
    page = write_report(run, device="cpu").read_text()
    assert "1 unreadable line(s) skipped" in page
    assert "could not be opened" in page
    assert (run / "report" / "conv1_kernels.png").is_file()


def test_report_errors(tmp_path: Path, capsys) -> None:
    with pytest.raises(ReportError, match="not found"):
        write_report(tmp_path / "nope")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ReportError, match="no checkpoints"):
        write_report(tmp_path / "empty_run")
    assert main(["report", str(tmp_path / "empty_run")]) == 2
    assert "error:" in capsys.readouterr().err


# --------------------------------------------------------------------------- conv1 kernels


def test_kernel_grid_one_block_per_tower() -> None:
    paper = create_model("alexnet")
    grid = kernel_grid(paper, scale=4, cols=16, pad=2)
    # Two towers of 48 kernels = 3 rows of 16 each; 11x11 kernels at 4 px per tap.
    cell = 11 * 4 + 2
    assert grid.shape == (2 * (3 * cell + 2) + 12, 16 * cell + 2, 3) and grid.dtype == np.uint8
    assert [t["kernels"] for t in tower_summary(paper)] == [48, 48]
    owt = create_model("alexnet_owt")
    assert [t["kernels"] for t in tower_summary(owt)] == [64]
    # The split (two-device) model draws the same picture as the grouped one.
    split = AlexNetSplit.from_grouped(paper, ["cpu", "cpu"])
    torch.testing.assert_close(conv1_weight(split), conv1_weight(paper))
    assert np.array_equal(kernel_grid(split, scale=2), kernel_grid(paper, scale=2))


def test_kernels_are_contrast_normalised_each_on_its_own() -> None:
    w = torch.randn(3, 3, 5, 5) * torch.tensor([0.001, 1.0, 100.0]).view(3, 1, 1, 1)
    n = normalise_kernels(w)
    assert torch.allclose(n.amin((1, 2, 3)), torch.zeros(3)) and torch.allclose(n.amax((1, 2, 3)), torch.ones(3))


def test_colourfulness_separates_grey_from_colour_kernels() -> None:
    pattern = torch.randn(1, 1, 11, 11)
    grey = pattern.repeat(1, 3, 1, 1)  # the same edge in R, G and B
    colour = torch.cat([pattern, -pattern, torch.zeros_like(pattern)], 1)  # red against green
    c = colourfulness(torch.cat([grey, colour]))
    assert c[0] < 1e-6 and c[1] > 0.9


# --------------------------------------------------------------------------- plots


def test_timeline_places_the_run_only_when_given(tmp_path: Path) -> None:
    a = plots.plot_timeline(tmp_path / "a.png")
    b = plots.plot_timeline(tmp_path / "b.png", run_top5_error=0.183)
    assert _png_size(a) == _png_size(b) == (900, 500)
    assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert [e for y, e, _ in plots.IMAGENET_TIMELINE if y == 2012] == [16.4]
    assert plots.HUMAN_TOP5_ERROR == 5.1


def test_confusion_plot_handles_many_classes(tmp_path: Path) -> None:
    cm = torch.zeros(1000, 1000, dtype=torch.int64)
    cm[torch.arange(50), torch.arange(50) % 7] = 3  # 50 classes present: drawn as an image
    path = plots.plot_confusion(cm, [f"c{i}" for i in range(1000)], tmp_path / "cm.png")
    assert _png_size(path) == (900, 800)


def test_curves_plot_without_step_records(tmp_path: Path) -> None:
    records = [{"kind": "epoch", "epoch": e, "loss": 2 - e / 10, "lr": 0.01, "val_top1": 0.1 * e} for e in range(3)]
    assert _png_size(plots.plot_training_curves(records, tmp_path / "c.png")) == (1500, 420)


def test_demo_writes_the_report(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    """`alexnet demo` ends with the report (issue: "alexnet demo produces the report")."""
    from alexnet.training.demo import run_demo

    out = tmp_path / "demo"
    run_demo(out, minutes=0.05, data=tiny_run.data,
             overrides={"epochs": 1, "batch_size": 16, "tensorboard": False, "progress": False, "num_workers": 0})
    assert f"report: {out / 'report' / 'report.html'}" in capsys.readouterr().out
    assert _png_size(out / "report" / "training_curves.png") == FIGURES["training_curves.png"]
    assert len(re.findall(r"<img ", (out / "report" / "report.html").read_text())) == 7


def test_only_imagenet_runs_go_on_the_timeline(tiny_run: TinyRun) -> None:
    import copy

    from alexnet.analysis.report import _is_imagenet
    from alexnet.data.imagenet import IMAGENET_CLASSES

    _, meta = load_model(tiny_run.checkpoint)
    assert not _is_imagenet(meta)
    imagenet = copy.deepcopy(meta)
    imagenet.classes = [s for s, _ in IMAGENET_CLASSES]
    imagenet.class_names = [n for _, n in IMAGENET_CLASSES]
    imagenet.num_classes = 1000
    assert _is_imagenet(imagenet)


def test_report_without_config_needs_data(tiny_run: TinyRun, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run.run_dir / "model.safetensors", run / "model.safetensors")  # an export alone
    page = write_report(run, device="cpu").read_text()
    assert "pass --data DIR" in page and "conv1 kernels" in page
    page = write_report(run, data=tiny_run.data, device="cpu", num_queries=2, max_eval=6, max_index=20).read_text()
    assert "top-1 error" in page and "Retrieval" in page
    assert json.loads((run / "report" / "evaluation.json").read_text())["num_images"] == 6


def test_training_curves_share_one_epoch_axis() -> None:
    """Logged steps sit at their fraction of the epoch, so every panel has the same x-axis."""
    records = [{"kind": "epoch", "epoch": 1, "step": 10}, {"kind": "epoch", "epoch": 2, "step": 30},
               {"kind": "epoch", "epoch": 3, "step": 40, "partial": True}]
    to_epoch = plots._epoch_axis(records)
    assert [to_epoch(s) for s in (0, 5, 10, 20, 30, 40)] == [0, 0.5, 1, 1.5, 2, 2.5]
    assert plots._epoch_axis([{"kind": "step", "step": 3}]) is None
