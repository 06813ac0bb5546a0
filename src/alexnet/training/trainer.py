"""The training loop: one process or many (DDP through torchrun), resumable to the exact step.

``train(config)`` runs the paper's recipe (or any :class:`TrainConfig`) and writes a run
directory (see ``docs/architecture.md``)::

    RUN/config.json  checkpoints/last.pt  checkpoints/best.pt  model.safetensors
    RUN/metrics.jsonl  tb/  summary.json

The loop. :meth:`Trainer._loop` reads top to bottom: for each batch, set the learning rate,
:meth:`Trainer.train_step`, add to the :class:`~alexnet.training.meter.Meter`, log at log
points, then :meth:`Trainer._should_stop`, the one place that decides to stop (signal, time
limit, ``max_steps``) or to checkpoint. At an epoch's end: validate, log, checkpoint, and a
time-boxed run re-plans its length (:meth:`Trainer._refit_epochs`). What is not the loop
lives beside it: ``meter.py`` (running sums, images/s), ``schedules.py``, ``rng.py``,
``signals.py``, ``runlog.py``.

Speed. bf16 autocast wherever the hardware has native bf16, GPU or CPU (fp32 master
weights: the parameters and the optimiser stay fp32); on CUDA also channels_last, optional
``torch.compile``, pinned host memory with non-blocking copies, augmentation on the device.
The loss and accuracy are accumulated on the device and read back only every ``log_every``
steps, so a step never waits for the GPU otherwise. images/s counts the training steps
alone: not the loader's start, a process's first (warm-up) step, validation or checkpoints.

Exact resumption. A checkpoint is taken between two optimiser steps and holds the model,
the optimiser (momentum buffers), the schedule, every rank's RNGs (torch CPU and CUDA,
Python, NumPy and the augmentation generator) and running sums of the epoch in progress,
the epoch and the index of the next batch. The batch order of an epoch depends only on
(seed, epoch), so a resumed run skips the batches already done and continues with
bit-identical state: in deterministic mode its final weights equal those of a run that
was never interrupted.

Faults. SIGTERM (and SIGINT) ask for a checkpoint at the next step boundary and a clean
exit. A NaN or infinite loss stops the run with :class:`TrainingError` before anything
is saved, so the last checkpoint stays the last good one. A failed checkpoint write (a full
disk) leaves the previous checkpoint untouched (atomic write) and stops with a clear error.
Under ``torchrun --max-restarts`` a restarted worker resumes from ``last.pt`` by itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alexnet.checkpoint import (
    CheckpointError,
    ModelMeta,
    load_checkpoint,
    save_checkpoint,
    save_safetensors,
)
from alexnet.data.loader import EpochBatches
from alexnet.data.splits import open_splits
from alexnet.devices import autocast_dtype, resolve_device
from alexnet.errors import TrainingError, UsageError
from alexnet.files import atomic_write_bytes
from alexnet.metrics import topk_hits
from alexnet.runs import RunPaths
from alexnet.training import distributed as D
from alexnet.training.config import ConfigError, TrainConfig
from alexnet.training.meter import Meter
from alexnet.training.optim import build_optimizer, load_state
from alexnet.training.rng import rng_state, seed_everything, set_rng_state
from alexnet.training.runlog import RunLog
from alexnet.training.schedules import LRSchedule
from alexnet.training.signals import StopFlag

logger = logging.getLogger(__name__)
# Training images a data-dependent first layer is fitted to (alexnet_fast: 2,048 x 31 x 31 patches).
INIT_SAMPLE = 2048

__all__ = [
    "TrainResult",
    "Trainer",
    "TrainingError",
    "format_summary",
    "optimizer_for",
    "parameter_groups",
    "seed_everything",
    "train",
]


@dataclass
class TrainResult:
    """What :func:`train` returns (also written as ``RUN/summary.json``)."""

    run_dir: str
    status: str  # "completed", "interrupted" (signal), "time_limit", "max_steps"
    epochs: int  # epochs fully completed
    step: int  # optimiser steps taken in all
    val_top1: float | None
    val_top5: float | None
    val_loss: float | None
    best_val_top1: float | None
    train_loss: float | None
    elapsed_s: float
    images_per_s: float
    world_size: int
    checkpoint: str
    best_checkpoint: str | None
    model: str
    num_classes: int
    data: str
    # Source files skipped as unreadable (path, reason), train and val: counted, never guessed at.
    bad_files: list[dict[str, str]] = field(default_factory=list)
    planned_epochs: int = 0  # the plan at the end (a time-boxed run may have re-planned it)
    steps_per_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- set-up helpers


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_bias: bool, bias_lr_scale: float = 1.0,
    orthogonal: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Weight decay on the weights of convolutions and linear layers (the paper's ``w``); biases
    and normalisation parameters (1-d tensors) without, unless ``decay_bias``. The 1-d
    parameters' learning rate is ``lr x bias_lr_scale`` (each group's ``lr_scale``, which
    :meth:`Trainer._set_lr` applies): airbench found that BN shifts can take a 64x larger rate.
    ``orthogonal`` (Muon's group settings: ``lr_scale``, ``momentum``, ``normalize``) puts the
    convolution filters (4-d weights) in a group of their own, marked ``orthogonal``."""
    filters, weights, biases = [], [], []
    for p in model.parameters():
        if p.requires_grad:
            (biases if p.ndim <= 1 else filters if p.ndim == 4 and orthogonal is not None else weights).append(p)
    if decay_bias and bias_lr_scale == 1.0 and not filters:  # one group, as the paper's formula reads
        return [{"params": weights + biases, "weight_decay": weight_decay, "lr_scale": 1.0}]
    groups = [{"params": weights, "weight_decay": weight_decay, "lr_scale": 1.0}]
    if biases:
        groups.append({"params": biases, "weight_decay": weight_decay if decay_bias else 0.0,
                       "lr_scale": bias_lr_scale})
    if filters:
        groups.append({"params": filters, "weight_decay": weight_decay, "orthogonal": True, **(orthogonal or {})})
    return groups


def optimizer_for(model: nn.Module, cfg: TrainConfig, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """The optimiser a run of ``cfg`` trains ``model`` with: ``cfg.optimizer`` ("paper": the
    paper's rule exactly, optim.PaperSGD; "torch": torch's SGD; "muon": optim.Muon, its filter
    group at ``muon_lr``) over :func:`parameter_groups`. Benchmarks that time a step build it
    here too, so they time the update the run will make."""
    orthogonal = ({"lr_scale": cfg.muon_lr / cfg.lr, "momentum": cfg.muon_momentum, "normalize": cfg.muon_normalize}
                  if cfg.optimizer == "muon" else None)
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_bias, cfg.bias_lr_scale, orthogonal=orthogonal)
    return build_optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- the engine


class Trainer:
    """One training run. ``Trainer(cfg).fit()``; see :func:`train`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        train_set: Any = None,
        val_set: Any = None,
        resume: bool = False,
        allow_changes: bool = False,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        env = D.env_info()
        try:
            self.device = resolve_device(cfg.device, env.local_rank)
        except UsageError as exc:
            raise ConfigError(f"config key 'device': {exc}") from None
        self.dist = D.setup(self.device)
        if self.dist.enabled and cfg.split_devices:
            raise ConfigError("config key 'split_devices': the two-device model split cannot be combined with DDP")
        self.run_dir = Path(cfg.out)
        self.paths = RunPaths(self.run_dir)
        self.ckpt_dir, self.last_path, self.best_path = self.paths.checkpoints, self.paths.last, self.paths.best
        # A restarted torchrun worker continues from the last checkpoint on its own.
        self.resume = resume or self.dist.restart_count > 0 or self._later_round_of_this_job()
        self.allow_changes = allow_changes
        self.resumed_changes: dict[str, list[Any]] = {}
        seed_everything(cfg.seed + self.dist.rank, cfg.deterministic)
        self.is_main = self.dist.is_main
        self._open_data(train_set, val_set)
        self._build_model()

        from alexnet.data.transforms import EvalTransform, TrainAugment

        self.augment = TrainAugment(
            self.crop, self.stats, self.norm_mode, lighting=cfg.lighting, flip=cfg.flip, random_crop=cfg.random_crop,
            cutout=cfg.cutout,
        ).to(self.device)
        self.eval_tf = EvalTransform(self.crop, self.stats, self.norm_mode).to(self.device)
        self.aug_gen = torch.Generator(device=self.device)
        self.aug_gen.manual_seed(cfg.seed * 1000 + self.dist.rank + 1)

        # torch's SGD: one fused kernel for all parameters on a GPU (the same update, less launch overhead)
        self.optimizer = optimizer_for(self.model, cfg, fused=self.device.type == "cuda" or None)
        self.train_batches = self._loader(train=True)
        self.val_batches = self._loader(train=False) if self.val_set is not None and len(self.val_set) else None
        self.steps_per_epoch = self.train_batches.per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"config key 'batch_size': {cfg.batch_size} x {self.dist.world_size} process(es) is larger than "
                f"the {len(self.train_set)} training images"
            )
        self.schedule = LRSchedule(cfg, self.steps_per_epoch)

        # ---- position
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        # The run's plan: cfg.epochs, unless a time-boxed run re-plans it (fit_time_limit).
        self.epochs = cfg.epochs
        self.best_top1: float | None = None
        self.last_val: dict[str, float] = {}
        self.train_time = 0.0  # seconds spent training, summed over resumed segments
        self.last_saved_step: int | None = None
        self.last_train_loss: float | None = None
        # This process's running sums (log window, epoch in progress) and its steps' speed.
        self.meter = Meter(self.device, self.dist.world_size)

    # ------------------------------------------------------------------ set-up

    def _open_data(self, train_set: Any, val_set: Any) -> None:
        """The splits, given or opened from ``cfg.data`` (default: the embedded dataset)."""
        cfg = self.cfg
        if train_set is None:
            path = cfg.data
            if path is None:
                from alexnet.data.synth import ensure_embedded_dataset

                path = str(ensure_embedded_dataset(progress=self.is_main)) if self.is_main else None
                path = D.broadcast_object(path)
            self.data_path = str(Path(path).resolve())
            train_set, val_set, self.held_out = open_splits(self.data_path, cfg.val_split, cfg.val_fraction)
        else:
            self.data_path = cfg.data or "<in-memory>"
            self.held_out = False
        self.train_set, self.val_set = train_set, val_set
        if len(train_set) == 0:
            raise TrainingError(f"{self.data_path}: the training split has no images")
        self.classes = list(train_set.classes)
        self.class_names = list(train_set.class_names)
        self.image_size = int(train_set.image_size)
        self.stats = train_set.stats

    def _build_model(self) -> None:
        """The model for these classes and this input side (from the registry's metadata),
        placed, wrapped for DDP or compiled as asked; its metadata for the checkpoints."""
        cfg = self.cfg
        from alexnet.models import model_info

        info = model_info(cfg.model)  # validate() has checked the name against the zoo
        self.crop = cfg.crop or info.input_size_for(self.image_size)
        if self.crop > self.image_size:
            raise ConfigError(
                f"config key 'crop': {self.crop} px crops do not fit the dataset's {self.image_size} px images "
                f"(model {cfg.model!r}; use alexnet_small for small images, or set crop)"
            )
        if cfg.cutout > self.crop:
            raise ConfigError(f"config key 'cutout': a {cfg.cutout} px square does not fit the {self.crop} px crops")
        options = dict(cfg.model_options)
        if info.flexible_input:
            options.setdefault("input_size", self.crop)
        self.norm_mode = cfg.norm_mode
        if self.norm_mode == "image" and (
            self.stats.mean_image is None or tuple(self.stats.mean_image.shape[-2:]) != (self.image_size,) * 2
        ):
            if self.is_main:
                logger.warning("note: no mean image for this dataset; normalising per channel instead")
            self.norm_mode = "channel"
        self.meta = ModelMeta(
            model=cfg.model,
            num_classes=len(self.classes),
            classes=self.classes,
            class_names=self.class_names,
            image_size=self.image_size,
            input_size=self.crop,
            norm_mode=self.norm_mode,
            stats=self.stats,
            options=options,
        )
        from alexnet.models import create_model

        self.split = bool(cfg.split_devices)
        try:
            if self.split:
                if cfg.model != "alexnet":
                    raise ConfigError("config key 'split_devices': only the 'alexnet' model has the two-device split")
                model = create_model("alexnet", num_classes=len(self.classes), devices=cfg.split_devices, **options)
                self.device = model.devices[0]
            else:
                model = create_model(cfg.model, num_classes=len(self.classes), **options).to(self.device)
        except TypeError as exc:
            raise ConfigError(f"config key 'model_options': {exc}") from None
        if hasattr(model, "init_from_data") and not (self.resume and self.last_path.exists()):
            # A data-dependent first layer (alexnet_fast's whitening), fitted before DDP copies
            # rank 0's weights to every process; a resumed run loads it from the checkpoint.
            model.init_from_data(self._sample_inputs(INIT_SAMPLE))
        on_cuda = self.device.type == "cuda"
        self.channels_last = on_cuda if cfg.channels_last is None else cfg.channels_last
        if self.channels_last and not self.split:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the plain module: state dicts, evaluation
        self.amp_dtype = autocast_dtype(cfg.amp, self.device)
        net: nn.Module = model
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if on_cuda else None)
        if cfg.compile:
            net = torch.compile(net, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
        self.net = net

    # ------------------------------------------------------------------ data

    @torch.no_grad()
    def _sample_inputs(self, n: int) -> Tensor:
        """Up to ``n`` training images spread over the split (every class its share), centre
        cropped and normalised as the network sees them, on the device."""
        from alexnet.data.sampling import spaced_indices
        from alexnet.data.transforms import EvalTransform

        idx = spaced_indices(len(self.train_set), n)
        if hasattr(self.train_set, "get_batch"):
            x = self.train_set.get_batch(idx)[0]
        else:
            x = torch.stack([self.train_set[i][0] for i in idx])
        return EvalTransform(self.crop, self.stats, self.norm_mode).to(self.device)(x.to(self.device))

    def _loader(self, train: bool) -> EpochBatches:
        cfg = self.cfg
        return EpochBatches(
            self.train_set if train else self.val_set,
            cfg.batch_size if train else max(cfg.batch_size, 64),
            shuffle=train,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _prep(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and not self.split else x

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints

    def bad_files(self) -> list[dict[str, str]]:
        """Unreadable source files this process skipped, train and val (see ``data.folder``)."""
        return _bad_files_of(self.train_set, self.val_set)

    def model_state(self) -> dict[str, Tensor]:
        """The weights in the one-device layout (a split model is stored grouped)."""
        if self.split:
            from alexnet.models import split_to_grouped

            return split_to_grouped(self.model.state_dict())
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    def _load_model_state(self, state: dict[str, Tensor]) -> None:
        if self.split:
            from alexnet.models import grouped_to_split

            state = grouped_to_split(state)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise TrainingError(f"{self.last_path}: checkpoint weights do not fit {self.cfg.model}: {exc}") from None
        if self.split:
            self.model.place()

    def train_state(self, ranks: list[Any]) -> dict[str, Any]:
        """Where training stands. ``ranks`` holds what each process has of its own: its random
        streams (each rank augments and drops out with its own) and the running sums of the
        epoch in progress, so a resumed DDP run continues each one exactly."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.dist.world_size,
            "best_top1": -1.0 if self.best_top1 is None else float(self.best_top1),
            "last_val": dict(self.last_val),
            "train_time": float(self.train_time),
            "ranks": ranks,
            "seed": self.cfg.seed,
        }

    def _rank_state(self) -> dict[str, Any]:
        return {"rng": rng_state(self.aug_gen), **self.meter.state()}

    def save(self, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt``) from rank 0; every rank waits for it."""
        self.meter.clock.stop()  # writing is not training: the loop restarts the clock
        ranks = D.all_gather_object(self._rank_state())
        if self.is_main:
            try:
                save_checkpoint(
                    self.last_path,
                    self.model_state(),
                    self.meta,
                    optimizer=self.optimizer.state_dict(),
                    scheduler=self.schedule.state_dict(),
                    train_state=self.train_state(ranks),
                )
                if best:
                    save_checkpoint(
                        self.best_path, self.model_state(), self.meta, train_state=self.train_state(ranks)
                    )
            except OSError as exc:
                kept = (
                    f"the previous checkpoint {self.last_path} (step {self.last_saved_step}) is intact"
                    if self.last_saved_step is not None
                    else "no earlier checkpoint existed"
                )
                raise TrainingError(
                    f"could not write a checkpoint at step {self.step}: {exc.strerror or exc}"
                    f"{' (the disk is full)' if getattr(exc, 'errno', None) == 28 else ''}; {kept}. "
                    "Free space and rerun with --resume."
                ) from exc
        self.last_saved_step = self.step
        self._saved_at = time.perf_counter()
        D.barrier()

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        """The checkpoint's velocities under this run's group settings; a resume that switches
        ``optimizer`` (``--allow-changes``) converts them (:func:`optim.load_state`)."""
        try:
            source = load_state(self.optimizer, state, self.cfg.optimizer)
        except (ValueError, KeyError) as exc:
            raise TrainingError(
                f"cannot resume from {self.last_path}: its optimiser state does not fit this run's parameter groups "
                f"({exc}); was decay_bias or bias_lr_scale changed, or the optimizer to or from 'muon' (which "
                f"groups the convolution filters apart)?"
            ) from None
        if source is not None and self.is_main:
            logger.info(f"note: the checkpoint's velocities were converted from the {source!r} optimiser's "
                        f"form to the {self.cfg.optimizer!r} one's (v = -lr b), so the run keeps its motion")

    def load(self) -> bool:
        """Restore ``last.pt`` if there is one; False when starting fresh."""
        if not self.last_path.exists():
            return False
        try:
            ck = load_checkpoint(self.last_path)
        except CheckpointError as exc:
            raise TrainingError(f"cannot resume: {exc}") from None
        meta: ModelMeta = ck["meta"]
        if meta.model != self.meta.model or meta.classes != self.meta.classes:
            raise TrainingError(
                f"cannot resume from {self.last_path}: it holds {meta.model} on {meta.num_classes} classes, "
                f"this run is {self.meta.model} on {self.meta.num_classes}"
            )
        ts = ck.get("train_state")
        if not isinstance(ts, dict) or "optimizer" not in ck:
            raise TrainingError(f"cannot resume from {self.last_path}: it has no optimiser/training state")
        if int(ts["steps_per_epoch"]) != self.steps_per_epoch:
            raise TrainingError(
                f"cannot resume: the checkpoint's epochs have {ts['steps_per_epoch']} steps, this run's "
                f"{self.steps_per_epoch} (batch size, world size or data changed)"
            )
        self._load_model_state(ck["model"])
        self._load_optimizer_state(ck["optimizer"])
        self.schedule.load_state_dict(ck["scheduler"])
        if self.schedule.replans:  # a time-boxed run resumes with the plan it had made
            self.epochs = self.schedule.total_steps // self.steps_per_epoch
        self.epoch, self.batch_in_epoch, self.step = int(ts["epoch"]), int(ts["batch_in_epoch"]), int(ts["step"])
        best = float(ts["best_top1"])
        self.best_top1 = None if best < 0 else best
        self.last_val = {k: float(v) for k, v in ts.get("last_val", {}).items()}
        self.train_time = float(ts.get("train_time", 0.0))
        if int(ts.get("world_size", 1)) == self.dist.world_size:
            ranks = ts.get("ranks")
            if isinstance(ranks, list) and len(ranks) == self.dist.world_size:
                mine = ranks[self.dist.rank]
                set_rng_state(mine["rng"], self.aug_gen)
                self.meter.load_state(mine)
            else:  # written before checkpoints held every rank's state: rank 0's streams
                set_rng_state(ts["rng"], self.aug_gen)
        elif self.is_main:
            logger.warning("note: world size changed since the checkpoint; random streams restart")
        self.last_saved_step = self.step
        return True

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Centre-crop loss, top-1 and top-5 on the validation split (sharded across processes)."""
        if self.val_batches is None:
            return {}
        self.model.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, top1, top5, count
        with torch.random.fork_rng(devices=[]):  # evaluation must not move the training RNG
            for x, y in self.val_batches.epoch(0):
                x, y = self._to_device(x, y)
                with self._autocast():
                    logits = self.model(self._prep(self.eval_tf(x))).float()
                sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
                sums[1:3] += topk_hits(logits, y)
                sums[3] += y.numel()
        D.all_reduce_sum(sums)
        self.model.train()
        loss, top1, top5, n = sums.tolist()
        n = max(n, 1.0)
        return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n}

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        cfg = self.cfg
        resumed = False
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        D.barrier()
        if self.resume and self.last_path.exists():
            self._check_resume_config()
            resumed = self.load()
            if self.is_main:
                logger.info(
                    f"resumed from {self.last_path}: epoch {self.epoch + 1}, batch {self.batch_in_epoch}, "
                    f"step {self.step}" + (f" (restart {self.dist.restart_count})" if self.dist.restart_count else ""),
                )
        elif self.last_path.exists():
            raise TrainingError(
                f"{self.run_dir} already holds a run ({self.last_path}); pass --resume to continue it "
                "or choose another --out"
            )
        else:
            self._refuse_to_overwrite_records()
            if self.resume and self.is_main:
                logger.warning(f"note: nothing to resume in {self.ckpt_dir}; starting fresh")
        if self.is_main:
            try:
                self._write_config()
            except OSError as exc:
                raise TrainingError(f"cannot write {self.paths.config}: {exc}; nothing was changed") from exc
        log = RunLog(self.run_dir, self.is_main, cfg.tensorboard, self.step if resumed else None)
        try:
            with StopFlag() as stop:
                status = self._loop(log, stop)
        finally:
            log.close()
        return self._finish(status)

    def _loop(self, log: RunLog, stop: StopFlag) -> str:
        """Epochs of training steps until the plan is done or :meth:`_should_stop` says
        stop; returns the status ("completed", "interrupted", "time_limit", "max_steps")."""
        cfg = self.cfg
        self._started = time.perf_counter() - self.train_time  # the wall clock of all segments
        self._saved_at, segment_start, segment_epochs = time.perf_counter(), self.train_time, 0
        first_step = self.step  # this process's first step warms up (kernels, allocator, compile)
        self.net.train()
        while True:
            if self.epoch >= self.epochs:  # a finished run resumed (e.g. a later torchrun round): nothing to redo
                return "completed"
            reason = None
            bar = self._progress()
            for x, y in self.train_batches.epoch(self.epoch, self.batch_in_epoch):
                if self.step > first_step:  # timed from the first batch in hand: loader start-up is set-up
                    self.meter.clock.start()
                lr = self._set_lr()
                x, y = self._to_device(x, y)
                loss, logits = self.train_step(x, y)
                self.meter.add(loss, logits, y)
                self.step += 1
                self.batch_in_epoch += 1
                bar.update()
                at_log = self.step % cfg.log_every == 0 or self.batch_in_epoch == self.steps_per_epoch
                if at_log:
                    self._log_steps(log, lr, bar)
                # Every process must take control decisions at the same step: one process
                # decides at every step, DDP processes at log points (one collective).
                if at_log or not self.dist.enabled:
                    reason, checkpoint = self._should_stop(stop)
                    if reason is not None:
                        break
                    if checkpoint and self.batch_in_epoch < self.steps_per_epoch:
                        self._save_mid_epoch(log)
            self.meter.clock.stop()
            bar.close()
            self.train_time = self._elapsed()
            if reason == "interrupted":  # save at once; the epoch's figures wait for the resume
                self._save_mid_epoch(log)
                if self.is_main:
                    logger.info(f"stopped by signal at epoch {self.epoch} step {self.step}; checkpoint {self.last_path}")
                return reason
            self._end_epoch(log)  # also when a limit stopped it midway: the figures so far
            if reason is not None:
                return reason
            if self.epoch >= self.epochs:
                return "completed"
            if cfg.fit_time_limit and cfg.time_limit_minutes is not None:
                segment_epochs += 1
                if not self._refit_epochs((self._elapsed() - segment_start) / segment_epochs):
                    return "time_limit"

    def _set_lr(self) -> float:
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One optimiser step on a uint8 batch on the device: augment, forward, loss, backward,
        update. Returns the loss and the logits (still on the device)."""
        inputs = self._prep(self.augment(x, generator=self.aug_gen))
        with self._autocast():
            logits = self.net(inputs)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss, logits

    def _should_stop(self, stop: StopFlag) -> tuple[str | None, bool]:
        """At a step boundary: why the run stops here (None: it goes on) and whether a
        mid-epoch checkpoint is due. Every process gets the same answer."""
        cfg = self.cfg
        reason = None
        if stop.signal is not None:
            reason = "interrupted"
        elif cfg.time_limit_minutes is not None and self._elapsed() >= cfg.time_limit_minutes * 60:
            reason = "time_limit"
        elif cfg.max_steps is not None and self.step >= cfg.max_steps:
            reason = "max_steps"
        checkpoint = (cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0) or (
            cfg.checkpoint_minutes > 0 and time.perf_counter() - self._saved_at >= cfg.checkpoint_minutes * 60
        )
        if self.dist.enabled:
            reason = D.broadcast_object(reason)
            checkpoint = D.any_flag(checkpoint, self.device)
        return reason, checkpoint

    def _elapsed(self) -> float:
        """Wall-clock seconds of training so far, resumed segments included: the time limit's
        clock (validation and checkpoints count)."""
        return time.perf_counter() - self._started

    # ------------------------------------------------------------------ re-planning

    def _refit_epochs(self, epoch_seconds: float) -> bool:
        """Re-plan the number of epochs so the run ends within its time limit (from the
        measured ``epoch_seconds``, validation included), at most twice the first plan; the
        schedule is re-laid over the new length (:meth:`LRSchedule.replan`). Shortened as soon
        as the plan does not fit, lengthened only when the extra epochs fit with 5% to spare.
        False when not even one more epoch fits."""
        cfg = self.cfg
        left = cfg.time_limit_minutes * 60 - self.train_time
        fit = self.epoch + int(left // max(epoch_seconds, 1e-9))
        if fit >= self.epochs:
            # Lengthen only with 5% to spare: epoch times that wobble around a boundary would
            # otherwise move the plan (and re-lay the schedule) up and down every epoch.
            fit = max(self.epochs, self.epoch + int(left // max(1.05 * epoch_seconds, 1e-9)))
        fit = D.broadcast_object(min(fit, 2 * cfg.epochs))
        if fit <= self.epoch:
            if self.is_main:
                logger.info(
                    f"stopping after epoch {self.epoch} of {self.epochs}: the next would not end within the "
                    f"time limit ({epoch_seconds:.0f} s per epoch here, {max(left, 0):.0f} s left)",
                )
            return False
        if fit != self.epochs:
            if self.is_main:
                logger.info(
                    f"new plan: {fit} epochs instead of {self.epochs}, to end within the time limit "
                    f"({epoch_seconds:.0f} s per epoch here, {left / 60:.1f} min left)",
                )
            self.epochs = fit
            self.schedule.replan(fit * self.steps_per_epoch, at_step=self.step)
            if self.is_main and self.paths.config.exists():  # it records the plan
                try:
                    self._write_config()
                except OSError as exc:
                    logger.warning(f"warning: could not update config.json with the new plan ({exc})")
        return True

    # ------------------------------------------------------------------ the loop's helpers

    def _progress(self) -> Any:
        """A progress bar of the epoch's batches on rank 0 (``update`` per step), shown only
        where stderr is a terminal; elsewhere the epoch lines are the progress."""
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.epochs}",
            unit="batch",
            dynamic_ncols=True,
            disable=None if (self.is_main and self.cfg.progress) else True,  # None: off unless a terminal
            leave=False,
            file=sys.stderr,
        )

    def _log_steps(self, log: RunLog, lr: float, bar: Any) -> None:
        """The log window's figures (one host sync): metrics.jsonl, TensorBoard, the bar."""
        window = self.meter.read_window()
        if not math.isfinite(window["loss"]):
            self._diverged(window["loss"], log)
        ips = window["images_per_s"]
        log.write({
            "kind": "step",
            "epoch": self.epoch + 1,  # the epoch in progress, counted from 1
            "step": self.step,
            "loss": window["loss"],
            "lr": lr,
            "images_per_s": ips,  # of the steps since the last record, over all processes
            "train_top1": window["train_top1"],
            "train_top5": window["train_top5"],
            "time": self._elapsed(),
        })
        left = (self.epochs * self.steps_per_epoch - self.step) * self.cfg.batch_size * self.dist.world_size
        bar.set_postfix(loss=f"{window['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{ips:,.0f}",
                        run_eta=_hms(left / max(ips, 1e-9)), refresh=False)

    def _save_mid_epoch(self, log: RunLog) -> None:
        """A checkpoint between two steps, with the epoch's running sums so far."""
        self._check_finite(log)
        self.train_time = self._elapsed()
        self.save()

    def _check_finite(self, log: RunLog) -> None:
        value = self.meter.epoch_sums()[0]
        if not math.isfinite(value):
            self._diverged(value, log)

    def _diverged(self, value: float, log: RunLog) -> None:
        kept = (
            f"the last good checkpoint is {self.last_path} (step {self.last_saved_step})"
            if self.last_saved_step is not None
            else "no checkpoint had been written yet"
        )
        msg = (
            f"training diverged: the loss became {value} at epoch {self.epoch + 1}, step {self.step}; "
            f"nothing after that was saved and {kept}. Lower the learning rate (now {self.cfg.lr}) "
            "or enable grad_clip, then resume or restart."
        )
        log.write({"kind": "error", "epoch": self.epoch + 1, "step": self.step, "error": msg, "time": self.train_time})
        raise TrainingError(msg)

    def _end_epoch(self, log: RunLog) -> None:
        """Validate, log the epoch's figures and checkpoint. A limit that stopped the run
        midway ends the epoch too: its figures so far, marked partial, and its running sums
        go into the checkpoint so that a resumed run's figures for it are whole."""
        self._check_finite(log)
        train = self.meter.epoch_figures()
        done = self.batch_in_epoch >= self.steps_per_epoch
        if done:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.meter.new_epoch()
        val = self.validate()
        self.last_val, self.last_train_loss = val, train["loss"]
        best = False
        if val:
            if done:
                self.schedule.epoch_end(1.0 - val["val_top1"])
            if self.best_top1 is None or val["val_top1"] > self.best_top1:
                self.best_top1, best = val["val_top1"], True
        record = {
            "kind": "epoch",
            "epoch": self.epoch if done else self.epoch + 1,  # the epoch just ended, from 1
            "partial": not done,  # stopped mid-epoch (time limit, max_steps)
            "step": self.step,
            "loss": train["loss"],
            "lr": self.schedule.lr(max(self.step - 1, 0)),
            "train_top1": train["train_top1"],
            "train_top5": train["train_top5"],
            **val,
            "time": self.train_time,
        }
        log.write(record)
        if self.is_main:
            shown = f"{record['epoch']}/{self.epochs}"
            if not done:
                shown += f" (stopped after {self.batch_in_epoch} of its {self.steps_per_epoch} steps)"
            msg = f"epoch {shown}  step {self.step}  loss {train['loss']:.4f}  train top-1 {train['train_top1']:.1%}"
            if val:
                msg += f"  val top-1 {val['val_top1']:.1%}  top-5 {val['val_top5']:.1%}"
            logger.info(msg)
        self.save(best=best)

    # Keys that change how a run is watched or stopped, not what it computes: a resume may
    # change them. Any other difference from the run's config.json is refused on resume.
    RESUME_FREE_KEYS = frozenset({
        "out", "progress", "tensorboard", "log_every", "checkpoint_every", "checkpoint_minutes",
        "num_workers", "max_steps", "time_limit_minutes",
    })

    def _resolved_config(self) -> dict[str, Any]:
        """The configuration as config.json records it (resolved data path, crop, options)."""
        resolved = self.cfg.to_dict()
        resolved.update(data=self.data_path, crop=self.crop, norm_mode=self.norm_mode,
                        model_options=self.meta.options, epochs=self.epochs)
        return resolved

    def _check_resume_config(self) -> None:
        """Refuse to resume with a configuration that would compute something else than the
        run being resumed (another dataset, learning rate, seed, ...), naming the keys; with
        ``allow_changes`` go on and record the differences in config.json."""
        recorded = self.paths.read_config()
        if recorded is None:
            return  # a run from before config.json recorded everything: nothing to compare
        before = dict(recorded)
        first_planned = (before.get("run") or {}).get("epochs_first_planned")
        if first_planned is not None:  # a time-boxed run re-planned its epochs: compare what was asked
            before["epochs"] = first_planned
        now = json.loads(json.dumps(self._resolved_config()))  # the JSON view, as recorded
        changed = {k: [before.get(k), v] for k, v in now.items()
                   if k not in self.RESUME_FREE_KEYS and k in before and before[k] != v}
        if not changed:
            return
        shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in sorted(changed.items()))
        if not self.allow_changes:
            raise TrainingError(
                f"cannot resume {self.run_dir}: the configuration differs from the run's in what it computes: "
                f"{shown}. Resume with the run's own settings, or pass --allow-changes to go on anyway "
                "(the changes are recorded in config.json)"
            )
        self.resumed_changes = changed
        if self.is_main:
            logger.warning(f"warning: resuming with changed settings: {shown} (recorded in config.json)")

    def _later_round_of_this_job(self) -> bool:
        """Whether this process was restarted by torchrun within the job that wrote this run
        (the same job id in its config.json): then it continues from ``last.pt`` like its
        peers, even where its own agent counts no restart (another node's worker failed)."""
        if self.dist.run_id is None:
            return False
        recorded = self.paths.read_config() or {}
        return (recorded.get("run") or {}).get("torchrun_job") == self.dist.run_id

    def _refuse_to_overwrite_records(self) -> None:
        """A fresh start never deletes a previous run's records (metrics, best checkpoint,
        final weights, summary): with no ``last.pt`` to continue from, the run must go elsewhere."""
        kept = [p for p in (self.paths.metrics, self.paths.best, self.paths.weights, self.paths.summary)
                if p.exists() and p.stat().st_size > 0]
        if kept:
            raise TrainingError(
                f"{self.run_dir} holds a previous run's records ({', '.join(p.name for p in kept)}) but no "
                f"{self.last_path.relative_to(self.run_dir)} to continue from; nothing was deleted. "
                "Choose another --out, or move those files away"
            )

    def _write_config(self) -> None:
        """``RUN/config.json``: the configuration as it runs (the plan of a re-planned run
        included) and what the run found (devices, data sizes)."""
        resolved = self._resolved_config()
        info = {
            "world_size": self.dist.world_size,
            "global_batch": self.cfg.batch_size * self.dist.world_size,
            "device": str(self.device),
            "amp": "bf16" if self.amp_dtype is not None else "none",
            "channels_last": self.channels_last,
            "steps_per_epoch": self.steps_per_epoch,
            "train_images": len(self.train_set),
            "val_images": len(self.val_set) if self.val_set is not None else 0,
            "val_held_out_from_train": self.held_out,
            "image_size": self.image_size,
            "torch": torch.__version__,
        }
        if self.dist.run_id is not None:  # a later round of this torchrun job resumes this run
            info["torchrun_job"] = self.dist.run_id
        if self.epochs != self.cfg.epochs:
            info["epochs_first_planned"] = self.cfg.epochs  # re-planned to fit the time limit
        if self.resumed_changes:  # resumed with --allow-changes: what differs from the run's start
            info["resumed_with_changes"] = self.resumed_changes
        text = json.dumps({**resolved, "run": info}, indent=2) + "\n"
        atomic_write_bytes(self.paths.config, text.encode())

    def _finish(self, status: str) -> TrainResult:
        if self.is_main:
            try:
                save_safetensors(self.paths.weights, self.model_state(), self.meta)
            except OSError as exc:
                raise TrainingError(
                    f"training finished but {self.paths.weights} could not be written ({exc}); "
                    f"the weights are safe in {self.last_path}"
                ) from exc
        val = self.last_val
        result = TrainResult(
            run_dir=str(self.run_dir),
            status=status,
            epochs=self.epoch,
            step=self.step,
            val_top1=val.get("val_top1"),
            val_top5=val.get("val_top5"),
            val_loss=val.get("val_loss"),
            best_val_top1=self.best_top1,
            train_loss=self.last_train_loss,
            elapsed_s=self.train_time,
            images_per_s=self.meter.images_per_s(),
            world_size=self.dist.world_size,
            checkpoint=str(self.last_path),
            best_checkpoint=str(self.best_path) if self.best_path.exists() else None,
            model=self.cfg.model,
            num_classes=len(self.classes),
            data=self.data_path,
            bad_files=self.bad_files(),
            planned_epochs=self.epochs,
            steps_per_epoch=self.steps_per_epoch,
        )
        if self.is_main:
            try:
                atomic_write_bytes(self.paths.summary, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
            except OSError as exc:
                logger.warning(f"warning: could not write summary.json ({exc})")
        D.barrier()
        return result


def _bad_files_of(*datasets: Any) -> list[dict[str, str]]:
    seen: dict[str, str] = {}
    for ds in datasets:
        for path, reason in getattr(ds, "bad_files", None) or []:
            seen.setdefault(str(path), str(reason))
    return [{"path": p, "reason": r} for p, r in sorted(seen.items())]


def train(
    config: TrainConfig,
    *,
    train_set: Any = None,
    val_set: Any = None,
    resume: bool = False,
    allow_changes: bool = False,
) -> TrainResult:
    """Train as ``config`` says; returns the final figures (also in ``RUN/summary.json``).

    ``train_set``/``val_set`` may be given directly (datasets of ``(uint8 [3,S,S], label)``
    with ``.classes``, ``.class_names``, ``.image_size`` and ``.stats``); otherwise they are
    opened from ``config.data`` (default: the embedded dataset). ``resume`` continues from
    ``RUN/checkpoints/last.pt``, refusing a configuration that differs in what it computes
    unless ``allow_changes`` (recorded in ``config.json``). Raises :class:`TrainingError`
    when the run cannot go on.
    """
    try:
        return Trainer(config, train_set=train_set, val_set=val_set, resume=resume, allow_changes=allow_changes).fit()
    finally:
        D.cleanup()


_STATUS_WORDS = {
    "completed": "completed",
    "interrupted": "stopped by a signal",
    "time_limit": "stopped at the time limit",
    "max_steps": "stopped at max_steps",
}


def describe_progress(result: TrainResult) -> str:
    """How far a run got, in words: "completed after 8 of 8 epochs", "stopped at max_steps
    in epoch 1 of 8, 30 of its 156 steps done"."""
    r = result
    planned = f" of {r.planned_epochs}" if r.planned_epochs else ""
    into_epoch = r.step - r.epochs * r.steps_per_epoch if r.steps_per_epoch else 0
    if into_epoch > 0:  # stopped inside an epoch
        where = f"in epoch {r.epochs + 1}{planned}, {into_epoch} of its {r.steps_per_epoch} steps done"
    else:
        where = f"after {r.epochs}{planned} epochs"
    return f"{_STATUS_WORDS.get(r.status, r.status)} {where}"


def format_summary(result: TrainResult) -> str:
    """The final lines printed by ``alexnet train``."""
    r = result
    lines = [f"run: {r.run_dir}: {describe_progress(r)}; {r.step} steps, {r.elapsed_s / 60:.1f} min, "
             f"{r.images_per_s:,.0f} images/s of training steps"]
    if r.val_top1 is not None:
        lines.append(f"val top-1: {r.val_top1:.1%}  top-5: {r.val_top5:.1%}")
    if r.best_val_top1 is not None:
        lines.append(f"best val top-1: {r.best_val_top1:.1%}  ({r.best_checkpoint})")
    if r.bad_files:
        shown = ", ".join(f"{Path(b['path']).name} ({b['reason']})" for b in r.bad_files[:5])
        more = f" and {len(r.bad_files) - 5} more" if len(r.bad_files) > 5 else ""
        lines.append(f"skipped {len(r.bad_files)} unreadable files: {shown}{more} (all in summary.json)")
    return "\n".join(lines)
