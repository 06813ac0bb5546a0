"""A time-boxed run that re-plans its length keeps one schedule: the learning rate never
jumps back, rises and falls where the schedule says so, and ends at its final value; the
re-planned run resumes exactly; config.json and summary.json say what ran."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from test_training import Blobs, tiny_config, weights

from alexnet.training import train
from alexnet.training.config import preset
from alexnet.training.schedules import LRSchedule
from alexnet.training.trainer import Trainer


def shape_ok(lrs: list[float]) -> bool:
    """Non-decreasing up to the maximum, non-increasing after it (one-cycle's shape)."""
    d, peak = np.diff(lrs), int(np.argmax(lrs))
    return bool((d[:peak] >= 0).all() and (d[peak:] <= 0).all())


def test_the_demos_replan_keeps_one_cycle_smooth():
    """The issue's case: the demo re-plans from 40 to 80 epochs after the first (156 steps).
    Before, the warm-up restarted there (lr 0.00207 -> 0.00114); now it goes on rising."""
    cfg = preset("demo")
    cfg.epochs = 40
    s = LRSchedule(cfg, steps_per_epoch=156)
    lrs = [s.lr(i) for i in range(156)]
    s.replan(80 * 156, at_step=156)
    lrs += [s.lr(i) for i in range(156, 30 * 156)]
    s.replan(60 * 156, at_step=30 * 156)  # slower than hoped: shrink, during the decay
    lrs += [s.lr(i) for i in range(30 * 156, 60 * 156)]
    assert lrs[156] >= lrs[155] > 0.002  # no jump back at the re-plan
    assert shape_ok(lrs)
    assert max(lrs) == pytest.approx(cfg.lr, rel=1e-4)  # the peak is reached once
    end = cfg.lr / cfg.onecycle_final_div
    assert s.lr(s.total_steps) == pytest.approx(end, rel=1e-12)  # the schedule's final value
    assert lrs[-1] == pytest.approx(end, abs=1e-4 * cfg.lr)  # where the last step stands


@pytest.mark.parametrize("kind", ["onecycle", "cosine", "linear"])
def test_replans_in_either_phase_keep_the_lr_continuous(kind):
    cfg = preset("demo")
    cfg.schedule, cfg.epochs, cfg.warmup_epochs, cfg.min_lr = kind, 10, 1.0, 1e-4
    s = LRSchedule(cfg, steps_per_epoch=20)
    lrs, at = [], 0
    for new_epochs, until in ((14, 10), (12, 60), (8, 100), (9, 150)):  # a re-plan at step `at`
        lrs += [s.lr(i) for i in range(at, until)]
        before = s.lr(until)
        s.replan(new_epochs * 20, at_step=until)
        assert s.lr(until) == pytest.approx(before, rel=1e-9)  # the rate at the re-plan stays
        at = until
    lrs += [s.lr(i) for i in range(at, s.total_steps)]
    assert len(lrs) == 9 * 20 and shape_ok(lrs)
    final = cfg.lr / cfg.onecycle_final_div if kind == "onecycle" else cfg.min_lr
    assert s.lr(s.total_steps) == pytest.approx(final)
    # The state holds the re-plans: a schedule restored from it gives the same rates.
    restored = LRSchedule(cfg, steps_per_epoch=20)
    restored.load_state_dict(s.state_dict())
    assert [restored.lr(i) for i in range(150, 180)] == lrs[150:]


def fake_clock(step: int) -> float:
    """Seconds of training after ``step`` steps: 1 s a step for the first epoch (6 steps),
    then 3 s a step, so the run first stretches its plan, then shrinks it twice."""
    return step if step <= 6 else 6 + 3 * (step - 6)


def replanned_config(out, **kw):
    # 61.2 s: 3 planned epochs -> 6 after epoch 1 (at most twice the plan) -> 5 -> 4, ending at 60 s.
    return tiny_config(out, epochs=3, schedule="onecycle", onecycle_pct=0.5, time_limit_minutes=1.02,
                       fit_time_limit=True, log_every=1,
                       model_options={"width": 0.125, "fc_dim": 128, "dropout": 0.5}, **kw)


def test_a_replanned_run_follows_one_schedule_and_resumes_exactly(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(Trainer, "_elapsed", lambda self: fake_clock(self.step))
    caplog.set_level(logging.INFO, logger="alexnet")
    a = train(replanned_config(tmp_path / "a"), train_set=Blobs(), val_set=Blobs(32, seed=1))
    out = caplog.text  # the trainer's messages go through logging
    assert "new plan: 6 epochs instead of 3" in out and "new plan: 4 epochs instead of 5" in out
    assert a.status == "completed" and a.epochs == a.planned_epochs == 4 and a.step == 24

    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if r["kind"] == "step"]
    assert len(lrs) == 24 and shape_ok(lrs)
    base = 0.05
    assert max(lrs) > 0.95 * base and lrs[-1] < 0.05 * base  # rose to the peak, annealed to the end
    ck = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=True)
    schedule = LRSchedule(replanned_config(tmp_path / "x"), 6)
    schedule.load_state_dict(ck["scheduler"])
    assert schedule.total_steps == 24 and schedule.lr(24) == pytest.approx(base / 1e4)

    # config.json and summary.json agree with what ran
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert config["epochs"] == summary["planned_epochs"] == summary["epochs"] == 4
    assert config["run"]["epochs_first_planned"] == 3

    # Stopped after the last re-plan, resumed: the plan and the schedule continue exactly.
    part = train(replanned_config(tmp_path / "b", max_steps=21), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert part.status == "max_steps" and part.planned_epochs == 4
    done = train(replanned_config(tmp_path / "b"), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    assert done.status == "completed" and done.step == 24 and done.planned_epochs == 4
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lrs_b = [json.loads(x)["lr"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert lrs_b == lrs


def test_linear_schedule_is_a_straight_line_after_the_warm_up():
    cfg = preset("demo")
    cfg.schedule, cfg.epochs, cfg.warmup_epochs, cfg.min_lr = "linear", 10, 1.0, 0.0
    s = LRSchedule(cfg, steps_per_epoch=20)
    decay = [s.lr(i) for i in range(20, 201)]
    assert decay[0] == pytest.approx(cfg.lr) and decay[-1] == pytest.approx(0.0, abs=1e-15)
    assert np.allclose(np.diff(decay), -cfg.lr / 180)  # even steps down, not a cosine's
