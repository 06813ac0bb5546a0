"""``alexnet demo``: a tiny-budget run in the default suite, the real one as a slow test."""

from __future__ import annotations

import json
import re
import time

import pytest

from alexnet.checkpoint import load_model
from alexnet.cli import main

LINE = re.compile(r"^val top-1: (\d+\.\d)%  top-5: (\d+\.\d)%$", re.M)


def test_demo_tiny_budget(tmp_path, capsys):
    from alexnet.data.synth import generate

    data = generate(tmp_path / "data", num_classes=4, train_per_class=32, val_per_class=8, size=32, workers=1)
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["demo", "--data", str(data), "--out", str(out), "--minutes", "0.15", "--no-progress"]) == 0
    elapsed = time.perf_counter() - t0
    printed = capsys.readouterr().out
    match = LINE.search(printed)
    assert match, printed
    top1, top5 = float(match.group(1)), float(match.group(2))
    assert 0 <= top1 <= top5 <= 100
    assert f"alexnet explore --checkpoint {out / 'checkpoints' / 'best.pt'} --data {data.resolve()}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_top1"] == pytest.approx(top1 / 100, abs=1e-3)
    assert summary["status"] in ("completed", "time_limit") and summary["step"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "demo" and config["data"] == str(data.resolve())
    # the plan in plain words, a line per epoch (the output is not a terminal), what it did
    assert re.search(r"^demo: 128 training images in 4 classes\. An epoch takes about \d+ s here \(measured\), "
                     r"so the plan is \d+ epochs in 0\.1 min", printed, re.M), printed
    partial = summary["step"] > summary["epochs"] * summary["steps_per_epoch"]
    epoch_lines = re.findall(r"^epoch \d+/\d+( \(stopped after \d+ of its \d+ steps\))?  step \d+", printed, re.M)
    assert len(epoch_lines) == summary["epochs"] + partial and bool(epoch_lines[-1]) == partial
    assert re.search(r"^training (completed|stopped at the time limit) .*: \d+ steps, [\d,]+ images/s", printed, re.M)
    # config.json and summary.json agree with what ran: the budget set before validation
    assert config["epochs"] == summary["planned_epochs"] and config["fit_time_limit"] is True
    assert config["time_limit_minutes"] == pytest.approx(0.15 * 0.92)
    _model, meta = load_model(out / "checkpoints" / "best.pt")
    assert meta.model == "alexnet_small" and meta.num_classes == 4 and meta.image_size == 32
    assert elapsed < 0.15 * 60 + 30  # the budget bounds training; set-up and evaluation are small
    # a second demo into the same directory refuses unless told to replace it
    assert main(["demo", "--data", str(data), "--out", str(out), "--minutes", "0.1"]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo_meets_its_target(tmp_path, capsys):
    """The README's first command: <= 10 minutes in all on 2 cores, accuracy far above chance."""
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    elapsed = time.perf_counter() - t0
    printed = capsys.readouterr().out
    top1 = float(LINE.search(printed).group(1))
    assert top1 > 50.0, printed  # 20 classes: chance is 5%
    assert elapsed < 10 * 60, f"demo took {elapsed / 60:.1f} min"
