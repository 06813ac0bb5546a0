"""A resume continues the run it names, or says why not; no run's records are ever lost.

``--resume`` with another dataset, learning rate or seed used to go on silently and
overwrite config.json; a resume after deleting a damaged ``last.pt`` started afresh and
deleted the old metrics and best checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_training import train_args, write_folder_dataset

from alexnet.cli import main

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def stopped(data, tmp_path, capsys) -> Path:
    """A run stopped at --max-steps: a last.pt to resume, metrics and a best.pt to keep."""
    out = tmp_path / "run"
    assert main(train_args(data, out, "--epochs", "2", "--max-steps", "15")) == 0
    capsys.readouterr()
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "checkpoints" / "best.pt").is_file()
    return out


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        (["--lr", "0.5"], ["lr"]),
        (["--seed", "7"], ["seed"]),
        (["--set", "momentum=0.5", "--set", "weight_decay=0"], ["momentum", "weight_decay"]),
        (["--set", "model_options={width: 0.25, fc_dim: 128}"], ["model_options"]),
        (["--label-smoothing", "0.2"], ["label_smoothing"]),
        (["--epochs", "5"], ["epochs"]),
    ],
)
def test_a_resume_that_would_compute_something_else_is_refused(stopped, data, capsys, change, keys) -> None:
    config_before = (stopped / "config.json").read_text()
    assert main(train_args(data, stopped, "--epochs", "2", "--resume", *change)) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and all(f"{k} (" in err for k in keys), err
    assert (stopped / "config.json").read_text() == config_before  # nothing overwritten


def test_another_dataset_is_refused(stopped, data, tmp_path, capsys) -> None:
    other = write_folder_dataset(tmp_path / "other")
    assert main(train_args(other, stopped, "--epochs", "2", "--resume")) == 1
    assert "data (" in capsys.readouterr().err


def test_what_only_watches_or_stops_a_run_may_change(stopped, data, capsys) -> None:
    """Workers, logging cadence and stop limits do not change the result: the resume goes on."""
    assert main(train_args(data, stopped, "--epochs", "2", "--resume", "--log-every", "5",
                           "--checkpoint-every", "4")) == 0
    assert json.loads((stopped / "summary.json").read_text())["status"] == "completed"


def test_allow_changes_goes_on_and_records_them(stopped, data, capsys) -> None:
    assert main(train_args(data, stopped, "--epochs", "2", "--resume", "--lr", "0.5", "--allow-changes")) == 0
    assert "resuming with changed settings: lr" in capsys.readouterr().err
    config = json.loads((stopped / "config.json").read_text())
    assert config["lr"] == 0.5 and config["run"]["resumed_with_changes"]["lr"][1] == 0.5


@pytest.mark.parametrize("resume", [True, False])
def test_records_are_never_deleted_when_last_pt_is_gone(stopped, data, capsys, resume) -> None:
    """A damaged last.pt deleted by hand: neither --resume nor a fresh start may delete the
    metrics or the best checkpoint; the run is refused, naming what it keeps."""
    (stopped / "checkpoints" / "last.pt").unlink()
    metrics = (stopped / "metrics.jsonl").read_bytes()
    best = (stopped / "checkpoints" / "best.pt").read_bytes()
    assert main(train_args(data, stopped, "--epochs", "2", *(["--resume"] if resume else []))) == 1
    err = capsys.readouterr().err
    assert "previous run's records" in err and "nothing was deleted" in err
    assert (stopped / "metrics.jsonl").read_bytes() == metrics
    assert (stopped / "checkpoints" / "best.pt").read_bytes() == best


def test_resuming_a_finished_run_trains_nothing_more(data, tmp_path, capsys) -> None:
    """A later torchrun round (or a user) resuming a run that already finished its plan must
    not train past it: the same steps, the same weights, status completed."""
    out = tmp_path / "done"
    assert main(train_args(data, out, "--epochs", "2")) == 0
    before = json.loads((out / "summary.json").read_text())
    weights = (out / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(train_args(data, out, "--epochs", "2", "--resume")) == 0
    after = json.loads((out / "summary.json").read_text())
    assert after["step"] == before["step"] == 2 * 12 and after["status"] == "completed"
    assert after["epochs"] == 2 and (out / "model.safetensors").read_bytes() == weights
