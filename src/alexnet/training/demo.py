"""``alexnet demo``: the whole system in a few minutes on a laptop CPU.

Generates the embedded dataset if it is missing, trains the small AlexNet on it with the
``demo`` preset, sized so that training fits the time budget (a short throughput probe
picks the number of epochs, and a hard time limit stops cleanly if the machine is slower
than probed), evaluates, writes the run directory and its report, and prints the accuracy
and the command that opens the explorer on the checkpoint.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alexnet.training.config import TrainConfig, from_dict, preset
from alexnet.training.trainer import TrainResult, default_crop, train

# Of the budget, the share kept for what follows training (final validation, report).
_AFTER_TRAINING = 0.08
_MAX_EPOCHS = 40


def probe_images_per_s(cfg: TrainConfig, num_classes: int, seconds: float = 3.0) -> float:
    """Training images per second of this config's model on this machine (random inputs,
    forward + backward + SGD step), on a throwaway copy so the real run is untouched."""
    from alexnet.models import create_model

    with torch.random.fork_rng(devices=[]):
        options = dict(cfg.model_options)
        options.setdefault("input_size", cfg.crop)
        model = create_model(cfg.model, num_classes=num_classes, **options)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(cfg.batch_size, 3, cfg.crop, cfg.crop)
        y = torch.randint(0, num_classes, (cfg.batch_size,))
        done, t0, start = 0, None, time.perf_counter()
        for i in range(1000):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i == 1:  # the first two steps warm up allocators and kernels
                t0 = time.perf_counter()
            elif i > 1:
                done += cfg.batch_size
                if time.perf_counter() - start > seconds and done >= 2 * cfg.batch_size:
                    break
    return done / max(time.perf_counter() - (t0 or start), 1e-9)


def plan_epochs(train_images: int, images_per_s: float, train_seconds: float, data_overhead: float = 1.15) -> int:
    """Whole epochs that fit ``train_seconds`` at ``images_per_s`` (plus decoding and
    validation overhead), at least 1."""
    per_epoch = train_images / max(images_per_s, 1e-9) * data_overhead
    return max(1, min(_MAX_EPOCHS, math.floor(train_seconds / per_epoch)))


def run_demo(
    out: str | Path = "runs/demo",
    minutes: float = 6.0,
    data: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    report: bool = True,
) -> TrainResult:
    """Run the demo; returns the training result. ``minutes`` bounds the training time."""
    t_start = time.perf_counter()
    from alexnet.data.folder import open_dataset

    if data is None:
        from alexnet.data.synth import ensure_embedded_dataset

        data = ensure_embedded_dataset(progress=True)
    data = Path(data).resolve()
    t_data = time.perf_counter() - t_start

    cfg = preset("demo")
    cfg = from_dict({"data": str(data), "out": str(out), **(overrides or {})}, cfg)
    train_set = open_dataset(data, "train", validate="none")
    cfg.crop = cfg.crop or default_crop(cfg.model, train_set.image_size, train_set.image_size)
    budget = max(0.05, minutes) * 60 * (1 - _AFTER_TRAINING)
    if "epochs" not in (overrides or {}):
        ips = probe_images_per_s(cfg, len(train_set.classes))
        cfg.epochs = plan_epochs(len(train_set), ips, budget)
        print(
            f"demo: {len(train_set)} training images, {len(train_set.classes)} classes; "
            f"{ips:.0f} images/s here -> {cfg.epochs} epochs in about {budget / 60:.1f} min",
            flush=True,
        )
    cfg.time_limit_minutes = budget / 60
    result = train(cfg.validate(), resume=False)

    run_dir = Path(result.run_dir)
    if report:
        _write_report(run_dir)
    total = time.perf_counter() - t_start
    ckpt = Path(result.best_checkpoint or result.checkpoint)
    print()
    if result.val_top1 is not None:
        print(f"val top-1: {result.val_top1:.1%}  top-5: {result.val_top5:.1%}")
    chance = 1 / max(result.num_classes, 1)
    print(
        f"({result.num_classes} classes, chance {chance:.1%}; {result.epochs} epochs, {result.step} steps; "
        f"data {t_data:.0f} s, training {result.elapsed_s / 60:.1f} min, total {total / 60:.1f} min)"
    )
    print(f"run directory: {run_dir}")
    if (run_dir / "report" / "report.html").exists():
        print(f"report: {run_dir / 'report' / 'report.html'}")
    print(f"explore it:  alexnet explore --checkpoint {ckpt} --data {data}")
    return result


def _write_report(run_dir: Path) -> None:
    """The evaluation report, when the analysis package provides one."""
    try:
        from alexnet.analysis.report import write_report
    except ImportError:
        return
    try:
        write_report(run_dir)
    except Exception as exc:  # the report must never cost the user the trained model
        print(f"warning: the report could not be written: {exc}", file=sys.stderr)
