"""What the training loop reports: images/s of the steps alone, progress in plain words,
a line per epoch where the output is not a terminal; top-k hits counted in one place."""

from __future__ import annotations

import logging
import re
import time

import pytest
import torch
from test_training import Blobs, tiny_config

from alexnet.data.loader import EpochBatches
from alexnet.metrics import topk_hits
from alexnet.training import format_summary, train
from alexnet.training import trainer as trainer_mod
from alexnet.training.trainer import Trainer


def test_topk_hits_caps_k_at_the_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.2], [0.8, 0.1, 0.3, 0.2], [0.0, 0.1, 0.2, 0.3]])
    target = torch.tensor([1, 2, 0])
    assert topk_hits(logits, target).tolist() == [1, 3]  # 4 classes: top-5 is every row
    assert topk_hits(logits, target, ks=(1, 2, 3)).tolist() == [1, 2, 2]


def test_images_per_s_excludes_set_up_validation_and_checkpoints(tmp_path, monkeypatch):
    """The loader's start (1 s an epoch here), validation and checkpoint writes (0.5 s each)
    are not training steps: images/s counts the steps' time alone (``train --max-steps 30``
    reported 59 images/s, set-up included)."""
    real_epoch, real_validate, real_save = EpochBatches.epoch, Trainer.validate, trainer_mod.save_checkpoint

    def slow_start(self, epoch, start=0):
        time.sleep(1.0)  # e.g. worker processes starting, the first files opened
        yield from real_epoch(self, epoch, start)

    def slow(real):
        def wrapper(*args, **kw):
            time.sleep(0.5)
            return real(*args, **kw)

        return wrapper

    monkeypatch.setattr(EpochBatches, "epoch", slow_start)
    monkeypatch.setattr(Trainer, "validate", slow(real_validate))
    monkeypatch.setattr(trainer_mod, "save_checkpoint", slow(real_save))
    run = tmp_path / "run"
    result = train(tiny_config(run, epochs=2, checkpoint_every=3), train_set=Blobs(), val_set=Blobs(32, seed=1))
    # The run's clock took 4 s of sleeps: two loader starts, a validation, three checkpoints.
    assert result.step == 12 and result.elapsed_s > 4.0
    # images/s counts the steps alone (the first, a warm-up, untimed): its seconds for the
    # 12 steps are far below the run's, however long the steps themselves took here.
    step_seconds = result.step * 16 / result.images_per_s
    assert step_seconds < result.elapsed_s - 3.0, (step_seconds, result.elapsed_s)


def test_a_stop_inside_an_epoch_is_told_in_words(tmp_path, caplog):
    """``train --max-steps 30`` printed "0 epochs" beside "epoch 1/8 (partial)"."""
    caplog.set_level(logging.INFO, logger="alexnet")
    result = train(tiny_config(tmp_path / "run", max_steps=3), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert (result.status, result.epochs, result.planned_epochs, result.steps_per_epoch) == ("max_steps", 0, 2, 6)
    printed = caplog.text  # the library logs its progress; the command line shows it on stdout
    assert "epoch 1/2 (stopped after 3 of its 6 steps)" in printed
    first = format_summary(result).splitlines()[0]
    assert "stopped at max_steps in epoch 1 of 2, 3 of its 6 steps done; 3 steps" in first
    assert "0 epochs" not in first and "0 of" not in first

    done = train(tiny_config(tmp_path / "run"), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    assert "completed after 2 of 2 epochs; 12 steps" in format_summary(done)


def test_output_that_is_not_a_terminal_gets_a_line_per_epoch(tmp_path, capsys, caplog):
    """Progress bars only where stderr is a terminal; a log file still shows every epoch."""
    caplog.set_level(logging.INFO, logger="alexnet")
    train(tiny_config(tmp_path / "run", epochs=3, progress=True), train_set=Blobs(), val_set=Blobs(32, seed=1))
    captured = capsys.readouterr()
    text = "\n".join(r.getMessage() for r in caplog.records)
    lines = re.findall(r"^epoch (\d)/3  step (\d+)  loss [0-9.]+  train top-1 .* val top-1 .*$", text, re.M)
    assert lines == [("1", "6"), ("2", "12"), ("3", "18")]
    assert "batch/s" not in captured.err and "\r" not in captured.err


@pytest.mark.parametrize("status", ["completed", "time_limit", "interrupted"])
def test_summary_words_for_each_status(status):
    from alexnet.training import TrainResult

    r = TrainResult(run_dir="runs/x", status=status, epochs=5, step=5 * 10 + (4 if status == "interrupted" else 0),
                    val_top1=None, val_top5=None, val_loss=None, best_val_top1=None, train_loss=None,
                    elapsed_s=60.0, images_per_s=1234.0, world_size=1, checkpoint="c", best_checkpoint=None,
                    model="m", num_classes=2, data="d", planned_epochs=8, steps_per_epoch=10)
    expected = {
        "completed": "completed after 5 of 8 epochs; 50 steps",
        "time_limit": "stopped at the time limit after 5 of 8 epochs; 50 steps",
        "interrupted": "stopped by a signal in epoch 6 of 8, 4 of its 10 steps done; 54 steps",
    }[status]
    assert format_summary(r) == f"run: runs/x: {expected}, 1.0 min, 1,234 images/s of training steps"
