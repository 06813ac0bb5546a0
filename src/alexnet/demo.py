"""``alexnet demo``: the whole system in a few minutes on a laptop CPU.

Generates the embedded dataset if it is missing, trains the small AlexNet on it with the
``demo`` preset, sized so that training fits the time budget (a short throughput probe
picks the number of epochs, and a hard time limit stops cleanly if the machine is slower
than probed), evaluates, writes the run directory and its report, and prints the accuracy
and the command that opens the explorer on the checkpoint.

It sits above training and analysis (it runs both); the command line prints its result.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alexnet.data import open_dataset, resolve_data
from alexnet.devices import autocast_dtype
from alexnet.models import model_info
from alexnet.training.config import TrainConfig, from_dict, preset
from alexnet.training.trainer import TrainResult, train

logger = logging.getLogger(__name__)

# Of the budget, the share kept for the set-up and what follows training (report).
_AFTER_TRAINING = 0.08
_MAX_EPOCHS = 40


def probe_epoch_seconds(cfg: TrainConfig, train_set: Any, val_images: int, seconds: float = 3.0) -> float:
    """Seconds one epoch (training + validation) of this config takes on this machine.

    Times the real work per image: decoding a few real batches, then augmentation and
    forward + backward + SGD steps of a throwaway copy of the model (the real run is
    untouched), for about ``seconds`` in all.
    """
    from alexnet.data.loader import make_loader
    from alexnet.data.transforms import TrainAugment
    from alexnet.models import create_model

    with torch.random.fork_rng(devices=[]):
        loader = make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, num_workers=0, drop_last=False)
        t0, decoded, batches = time.perf_counter(), 0, []
        for x, y in loader:
            batches.append((x, y))
            decoded += len(y)
            if len(batches) >= 2 or time.perf_counter() - t0 > seconds / 3:
                break
        decode_s = (time.perf_counter() - t0) / max(decoded, 1)

        options = dict(cfg.model_options)
        options.setdefault("input_size", cfg.crop)
        model = create_model(cfg.model, num_classes=len(train_set.classes), **options)
        augment = TrainAugment(cfg.crop, train_set.stats, cfg.norm_mode, lighting=cfg.lighting)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        # The trainer's precision: bf16 autocast is 10x faster than fp32 on a CPU with AVX512-BF16,
        # so a probe in fp32 would plan a fraction of the epochs that fit.
        dtype = autocast_dtype(cfg.amp, torch.device("cpu"))
        done, t1, start = 0, None, time.perf_counter()
        for i in range(1000):
            x, y = batches[i % len(batches)]
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(augment(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i == 1:  # the first two steps warm up allocators and kernels
                t1 = time.perf_counter()
            elif i > 1:
                done += len(y)
                if time.perf_counter() - start > seconds * 2 / 3 and done >= 2 * len(y):
                    break
        step_s = (time.perf_counter() - (t1 or start)) / max(done, 1)
    # evaluation: decode + a forward pass (about a third of a training step)
    return len(train_set) * (decode_s + step_s) + val_images * (decode_s + step_s / 3)


def plan_epochs(epoch_seconds: float, train_seconds: float) -> int:
    """Whole epochs that fit ``train_seconds``, at least 1 (at most 40)."""
    return max(1, min(_MAX_EPOCHS, math.floor(train_seconds / max(epoch_seconds, 1e-9))))


@dataclass
class DemoResult:
    """What a demo did: the training result, the data and where everything is."""

    train: TrainResult
    data: Path
    first_planned_epochs: int
    data_seconds: float
    total_seconds: float
    report: Path | None

    @property
    def checkpoint(self) -> Path:
        return Path(self.train.best_checkpoint or self.train.checkpoint)


def run_demo(
    out: str | Path = "runs/demo",
    minutes: float = 8.0,
    data: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    report: bool = True,
) -> DemoResult:
    """Run the demo; ``minutes`` bounds the training time. The plan and the training's
    progress are logged (logger ``alexnet``); the result says what was done."""
    t_start = time.perf_counter()
    data = Path(resolve_data(data, progress=True)).resolve()
    t_data = time.perf_counter() - t_start

    overrides = dict(overrides or {})
    base = from_dict({"data": str(data), "out": str(out), **overrides}, preset("demo"))
    train_set = open_dataset(data, "train", validate="none")
    budget = max(0.05, minutes) * 60 * (1 - _AFTER_TRAINING)
    # Everything the demo decides goes into the configuration once, before it is validated.
    plan: dict[str, Any] = {
        "crop": base.crop or model_info(base.model).input_size_for(train_set.image_size),
        "time_limit_minutes": budget / 60,  # a hard stop, whatever the plan says
    }
    about = f"demo: {len(train_set)} training images in {len(train_set.classes)} classes"
    if "epochs" in overrides:
        logger.info("%s; %d epochs as asked, stopping at %.1f min if they take longer", about, base.epochs, budget / 60)
    else:
        val_images = len(open_dataset(data, base.val_split, validate="none")) if (data / base.val_split).is_dir() else 0
        epoch_s = probe_epoch_seconds(from_dict(plan, base), train_set, val_images,
                                      seconds=min(3.0, max(1.0, budget / 20)))
        plan.update(epochs=plan_epochs(epoch_s, budget), fit_time_limit=True)
        logger.info(
            "%s. An epoch takes about %.0f s here (measured), so the plan is %d epochs in %.1f min; it is checked "
            "against the measured time after every epoch", about, epoch_s, plan["epochs"], budget / 60,
        )
    cfg = from_dict(plan, base).validate()
    result = train(cfg, resume=False)
    written = _write_report(Path(result.run_dir)) if report else None
    return DemoResult(result, data, cfg.epochs, t_data, time.perf_counter() - t_start, written)


def _write_report(run_dir: Path) -> Path | None:
    """The evaluation report of the run, or None (with a warning) if it could not be written."""
    from alexnet.analysis.report import write_report

    try:
        return Path(write_report(run_dir))
    except Exception as exc:  # the report must never cost the user the trained model
        logger.warning("warning: the report could not be written: %s", exc)
        return None
