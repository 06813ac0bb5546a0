"""The training engine in one process: run directory, metrics, exact resume, NaN, full disk."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from alexnet.checkpoint import load_checkpoint, load_model, load_safetensors
from alexnet.data.stats import compute_stats
from alexnet.training import TrainingError, from_dict, train
from alexnet.training import trainer as trainer_mod


class Blobs(Dataset):
    """Tiny in-memory dataset: each class a colour, plus noise (learnable in a few steps)."""

    def __init__(self, n: int = 96, classes: int = 4, size: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.targets = [i % classes for i in range(n)]
        colours = torch.randint(0, 256, (classes, 3, 1, 1), generator=torch.Generator().manual_seed(7))
        noise = torch.randint(-50, 50, (n, 3, size, size), generator=g)
        self.images = (colours[torch.tensor(self.targets)] + noise).clamp(0, 255).to(torch.uint8)
        self.classes = [f"c{i}" for i in range(classes)]
        self.class_names = [f"colour {i}" for i in range(classes)]
        self.image_size = size
        self.stats = compute_stats([self.images])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def tiny_config(out: Path, **kw):
    values = {
        "out": str(out),
        "model": "alexnet_small",
        "model_options": {"width": 0.125, "fc_dim": 128},
        "crop": 12,
        "norm_mode": "channel",
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.05,
        "schedule": "cosine",
        "num_workers": 0,
        "log_every": 2,
        "progress": False,
        "tensorboard": False,
        "deterministic": True,
        **kw,
    }
    return from_dict(values)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(run / "model.safetensors")[0]


def test_run_directory_metrics_and_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(run, epochs=3, tensorboard=True), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert result.status == "completed" and result.epochs == 3 and result.step == 3 * (96 // 16)
    assert result.val_top1 is not None and result.val_top1 > 0.5  # 4 classes: chance is 0.25
    for name in ("config.json", "summary.json", "metrics.jsonl", "model.safetensors",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "alexnet_small" and config["run"]["global_batch"] == 16
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    epochs = [r for r in lines if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert {"loss", "lr", "images_per_s", "train_top1", "train_top5", "time"} <= steps[0].keys()
    assert {"val_loss", "val_top1", "val_top5", "train_top1"} <= epochs[0].keys()
    assert all(0 <= r["val_top1"] <= r["val_top5"] <= 1 for r in epochs)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_top1"] == result.val_top1
    # every artifact rebuilds the model with its preprocessing
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["meta"].class_names == [f"colour {i}" for i in range(4)] and ck["meta"].input_size == 12
    assert ck["train_state"]["step"] == result.step and "optimizer" in ck
    model, meta = load_model(run / "checkpoints" / "best.pt")
    assert meta.options["input_size"] == 12 and model(torch.zeros(1, 3, 12, 12)).shape == (1, 4)
    # an existing run is not silently overwritten
    with pytest.raises(TrainingError, match="--resume"):
        train(tiny_config(run), train_set=Blobs(), val_set=Blobs(32, seed=1))


def test_stopped_then_resumed_equals_uninterrupted(tmp_path):
    """Stop mid-epoch (max_steps), resume: bit-identical final weights (dropout, augmentation,
    momentum, schedule and batch order all continue exactly)."""
    opts = {"model_options": {"width": 0.125, "fc_dim": 128, "dropout": 0.5}, "schedule": "onecycle"}
    train(tiny_config(tmp_path / "a", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1))
    part = train(tiny_config(tmp_path / "b", max_steps=9, **opts), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert part.status == "max_steps" and part.step == 9  # 6 steps per epoch: mid-epoch 2
    ts = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["train_state"]
    assert (ts["epoch"], ts["batch_in_epoch"]) == (1, 3)
    done = train(tiny_config(tmp_path / "b", **opts), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    assert done.status == "completed" and done.step == 12
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the killed run's extra log lines were dropped: steps are unique and increasing
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "step"]
    assert steps == sorted(set(steps))


@pytest.mark.reliability
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_ce = torch.nn.functional.cross_entropy
    calls = {"train": 0}

    def poisoned(logits, target, **kw):
        loss = real_ce(logits, target, **kw)
        if kw.get("reduction", "mean") == "mean":  # training steps only, not validation
            calls["train"] += 1
            if calls["train"] > 8:
                return loss * float("nan")
        return loss

    class F:  # the trainer's view of torch.nn.functional, with a poisoned loss
        def __getattr__(self, name):
            return poisoned if name == "cross_entropy" else getattr(torch.nn.functional, name)

    monkeypatch.setattr(trainer_mod, "F", F())
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"diverged: the loss became nan .* step 10") as err:
        train(tiny_config(run, epochs=3, checkpoint_every=4), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert "last good checkpoint" in str(err.value)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    # step 9 went NaN, seen at the next loss read-back (step 10); the step-8 checkpoint is kept
    assert ck["train_state"]["step"] == 8
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "error" and "diverged" in last["error"]


@pytest.mark.reliability
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell files apart")
def test_full_disk_while_checkpointing_loses_nothing(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = train(tiny_config(run, max_steps=6), train_set=Blobs(), val_set=Blobs(32, seed=1))
    assert first.step == 6
    before = (run / "checkpoints" / "last.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):  # the disk fills while the next checkpoint is flushed
        real_fsync(fd)
        if ".last.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(TrainingError, match=r"disk is full.*previous checkpoint .* \(step 6\) is intact"):
        train(tiny_config(run, checkpoint_every=2), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["step"] == 6
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    # with space again, the run resumes from what was kept and finishes
    done = train(tiny_config(run), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    assert done.status == "completed" and done.step == 12


def test_label_smoothing_and_plateau_run(tmp_path):
    result = train(
        tiny_config(tmp_path / "run", schedule="plateau", label_smoothing=0.1, plateau_patience=1, epochs=2),
        train_set=Blobs(),
        val_set=Blobs(32, seed=1),
    )
    assert result.status == "completed"
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert len(ck["scheduler"]["history"]) == 2


def test_bad_settings_are_clear_errors(tmp_path):
    from alexnet.training import ConfigError

    with pytest.raises(ConfigError, match="'crop'"):
        train(tiny_config(tmp_path / "a", crop=64), train_set=Blobs(), val_set=None)
    with pytest.raises(ConfigError, match="'batch_size'"):
        train(tiny_config(tmp_path / "b", batch_size=500), train_set=Blobs(), val_set=None)
    with pytest.raises(ConfigError, match="'model'"):
        train(tiny_config(tmp_path / "c", model="lenet"), train_set=Blobs(), val_set=None)


# --------------------------------------------------------------------------- helpers for the subprocess tests


def write_folder_dataset(root: Path, classes: int = 4, train: int = 24, val: int = 6, size: int = 16) -> Path:
    """An ImageNet-layout folder (train/, val/ with class folders) of small PNG files."""
    from PIL import Image

    ds = Blobs(classes * (train + val), classes=classes, size=size, seed=3)
    counts: dict[tuple[str, int], int] = {}
    for i in range(len(ds)):
        x, y = ds[i]
        k = counts.get(("n", y), 0)
        counts[("n", y)] = k + 1
        split = "train" if k < train else "val"
        folder = root / split / f"class{y}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(folder / f"{k:03d}.png")
    return root


def cli_env() -> dict[str, str]:
    """One thread per process: faster on a shared 2-core machine, and identical float order
    in every run (exact-resume comparisons)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data), "--out", str(out), "--preset", "demo",
        "--set", "model_options={width: 0.125, fc_dim: 128}", "--crop", "12",
        "--batch-size", "8", "--workers", "0", "--no-progress", "--no-tensorboard", "--deterministic",
        *extra,
    ]


def test_fit_time_limit_replans_epochs_and_schedule(tmp_path):
    from alexnet.training.trainer import Trainer

    cfg = tiny_config(tmp_path / "run", epochs=10, time_limit_minutes=1.0, fit_time_limit=True, schedule="onecycle")
    t = Trainer(cfg, train_set=Blobs(), val_set=None)
    t.epoch, t.train_time = 2, 20.0  # 2 epochs took 20 s: 40 s left fit 4 more
    # The plan is the trainer's (t.epochs); the caller's configuration is left as it was given.
    assert t._refit_epochs(10.0) and t.epochs == 6 and t.schedule.total_steps == 6 * t.steps_per_epoch
    t.train_time = 10.0  # faster than feared: stretch, but at most to twice the plan
    assert t._refit_epochs(1.0) and t.epochs == 20
    assert cfg.epochs == 10
    t.train_time = 59.0
    assert not t._refit_epochs(10.0)  # not one more epoch fits: stop at this boundary


def test_fit_time_limit_does_not_move_the_plan_up_and_down_with_wobbling_epoch_times(tmp_path):
    from alexnet.training.trainer import Trainer

    # 100 s, 9 epochs planned, epochs of 9.9-10.2 s: 10 would fit after the first epoch only
    # if nothing slows down; a plan raised to 10 would come down to 9 a few epochs later
    # (what a 10-minute CIFAR-10 run did: 8 -> 9 -> 10 -> 9 -> 10 -> 9).
    cfg = tiny_config(tmp_path / "run", epochs=9, time_limit_minutes=100 / 60, fit_time_limit=True)
    t = Trainer(cfg, train_set=Blobs(), val_set=None)
    plans = []
    for t.epoch, seconds in enumerate((9.9, 10.2, 9.9, 10.2, 9.9), start=1):
        t.train_time = 10.0 * t.epoch
        assert t._refit_epochs(seconds)
        plans.append(t.epochs)
    assert plans == [9, 9, 9, 9, 9]
    t.epoch, t.train_time = 5, 50.0
    assert t._refit_epochs(8.0) and t.epochs == 10  # clearly faster: 5 more fit with 5% to spare
    assert t._refit_epochs(12.5) and t.epochs == 9  # slower: shortened at once
