"""A newcomer's path (issue 18): every command behaves as the others lead one to expect.

One way to name a model (a run directory wherever a model is taken, the run's dataset as
the default), a bad file named for what it is, ``data info`` that recognises a run and
verifies a folder, statistics stored with the embedded dataset, and the model presented as
it really is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_analysis_support as support
from test_analysis_support import TinyRun

from alexnet.cli import main

tiny_run = support.tiny_run


def test_evaluate_a_run_directory_with_its_own_dataset(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    """`alexnet evaluate RUN --crops 10` just works: the run's best checkpoint, its dataset."""
    assert main(["evaluate", str(tiny_run.run_dir), "--crops", "10", "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "model: alexnet_small(" in out and "parameters" in out and f"data: {tiny_run.data}" in out
    explicit = tmp_path / "b.json"
    assert main(["evaluate", "--checkpoint", str(tiny_run.checkpoint), "--data", str(tiny_run.data),
                 "--crops", "10", "--json", str(explicit)]) == 0
    capsys.readouterr()
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads(explicit.read_text())
    assert a["top1_accuracy"] == b["top1_accuracy"] and a["num_images"] == b["num_images"] == 16  # the same images, the same model
    loose = tmp_path / "loose.pt"  # outside a run: no dataset to default to, said in one line
    loose.write_bytes(tiny_run.checkpoint.read_bytes())
    assert main(["evaluate", str(loose)]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and len(err.strip().splitlines()) == 1
    assert main(["evaluate", str(tiny_run.run_dir), "--checkpoint", str(loose)]) == 2  # the model given twice
    capsys.readouterr()


@pytest.mark.parametrize("command", ["predict", "export", "models"])
def test_every_checkpoint_option_takes_a_run_directory(tiny_run: TinyRun, tmp_path: Path, capsys, command: str) -> None:
    image = str(next((tiny_run.data / "val").glob("*/*.jpg")))
    argv = {
        "predict": ["predict", "--checkpoint", str(tiny_run.run_dir), image],
        "export": ["export", "--checkpoint", str(tiny_run.run_dir), "--format", "safetensors",
                   "--output", str(tmp_path / "m.safetensors")],
        "models": ["models", "--checkpoint", str(tiny_run.run_dir)],
    }[command]
    assert main(argv) == 0
    out = capsys.readouterr().out
    if command != "export":
        assert "alexnet_small(" in out and "norm='bn'" in out  # the real configuration, not the zoo default


def test_a_directory_that_is_not_a_run_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["predict", "--checkpoint", str(tmp_path), "x.jpg"]) == 2
    assert "not a training run" in capsys.readouterr().err


def test_data_info_recognises_a_run_directory(tiny_run: TinyRun, capsys) -> None:
    assert main(["data", "info", str(tiny_run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "is a training run directory, not a dataset" in out and str(tiny_run.data) in out
    assert "classes: checkpoints" not in out and "4 classes" in out


def test_data_info_verify_decodes_every_file_of_a_folder(tmp_path: Path, capsys) -> None:
    from alexnet.data.synth import generate

    data = generate(tmp_path / "d", num_classes=2, train_per_class=6, val_per_class=2, size=24, workers=1)
    victim = sorted((data / "train").glob("*/*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:-150])  # the header still reads: only a full decode sees it
    assert main(["data", "info", str(data)]) == 0
    assert "train: 12 images" in capsys.readouterr().out  # the header probe cannot tell
    assert main(["data", "info", str(data), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "train: 11 images" in out and "every file decoded (1 unreadable)" in out and victim.name in out
    assert "val: 4 images" in out and "every file decodes" in out


def test_the_embedded_dataset_stores_its_statistics(tmp_path: Path, capsys, monkeypatch) -> None:
    from alexnet.data import synth

    path = synth.ensure_embedded_dataset(tmp_path / "embedded", progress=False, num_classes=2,
                                         train_per_class=5, val_per_class=1, size=24)
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "statistics: stored in" in out and "from 10 images" in out


def test_predict_says_what_the_model_knows(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    """Never a forced choice presented as recognition: predict says the model knows only its
    N classes; once an atlas of these weights exists, whether the image looks like one."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)  # its own analysis cache
    image = str(next((tiny_run.data / "val").glob("*/*.jpg")))
    assert main(["predict", "--checkpoint", str(run), image, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["scope"].startswith("the model only knows these 4 classes")
    assert "alexnet atlas" in doc[0]["scope"]
    assert main(["atlas", "--checkpoint", str(run), "--data", str(tiny_run.data), "--sample", "48"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), image]) == 0
    out = capsys.readouterr().out
    assert "the model only knows these 4 classes; its confidence" in out


def test_an_embedded_dataset_generated_before_gets_its_statistics(tmp_path: Path) -> None:
    from alexnet.data import synth
    from alexnet.data.stats import STATS_FILE

    path = synth.ensure_embedded_dataset(tmp_path / "embedded", progress=False, num_classes=2,
                                         train_per_class=4, val_per_class=1, size=24)
    (path / STATS_FILE).unlink()  # as a cache made by an earlier version left it
    assert synth.ensure_embedded_dataset(tmp_path / "embedded", progress=False) == path
    assert (path / STATS_FILE).is_file()
