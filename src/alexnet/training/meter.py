"""What the training loop measures: running sums on the device and the speed of the steps.

A :class:`Meter` keeps two sets of sums, loss x images, top-1 hits and top-5 hits: one for
the log window (read and cleared every ``log_every`` steps) and one for the epoch (read at
its end, and saved in a checkpoint so that a resumed epoch's figures count the steps before
the stop). Adding a batch queues a few additions on the device and never waits for it;
reading is one host sync.

Speed is images over the seconds the steps took. The loop runs the clock from the first
batch in hand (after the loader has started) to the end of the epoch's steps; checkpoints
and validation stop it, and a process's first step (kernel selection, allocation, compiling)
is not timed. So a short run's images/s is not diluted by set-up.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from alexnet.metrics import topk_hits
from alexnet.training import distributed as D

Sums = tuple[float, float, float, int]  # loss x images, top-1 hits, top-5 hits, images
NO_SUMS: Sums = (0.0, 0.0, 0.0, 0)


class Stopwatch:
    """Seconds accumulated while running; ``start`` and ``stop`` may be repeated."""

    def __init__(self, seconds: float = 0.0) -> None:
        self._total, self._since = float(seconds), None

    @property
    def running(self) -> bool:
        return self._since is not None

    def start(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self._total += time.perf_counter() - self._since
            self._since = None

    def seconds(self) -> float:
        return self._total + (time.perf_counter() - self._since if self._since is not None else 0.0)


class Meter:
    """Running sums of one process's training steps; see the module docstring."""

    def __init__(self, device: torch.device, world_size: int = 1) -> None:
        self.device, self.world_size = device, world_size
        self.clock = Stopwatch()  # the training steps only
        self.images = 0  # images of this process stepped on while the clock ran
        self._window, self._window_n = self._zeros(), 0
        self._window_images, self._window_t = 0, 0.0  # timed images and clock reading
        self._epoch, self._epoch_n = self._zeros(), 0

    def _zeros(self, sums: Sums = NO_SUMS) -> Tensor:
        return torch.tensor(sums[:3], dtype=torch.float32, device=self.device)

    def add(self, loss: Tensor, logits: Tensor, target: Tensor) -> None:
        """One step's batch: its mean ``loss`` and the ``logits`` it was computed from."""
        n = target.numel()
        with torch.no_grad():
            batch = torch.cat([(loss.detach() * n).view(1), topk_hits(logits.detach(), target).float()])
            self._window += batch
            self._epoch += batch
        self._window_n += n
        self._epoch_n += n
        if self.clock.running:
            self.images += n
            self._window_images += n

    # ------------------------------------------------------------------ the log window

    def read_window(self) -> dict[str, float]:
        """This process's means since the last read, and the steps' images/s over all
        processes; clears the window."""
        loss, top1, top5 = self._window.tolist()
        n = max(self._window_n, 1)
        now = self.clock.seconds()
        ips = self._window_images * self.world_size / max(now - self._window_t, 1e-9)
        self._window.zero_()
        self._window_n, self._window_images, self._window_t = 0, 0, now
        return {"loss": loss / n, "images_per_s": ips, "train_top1": top1 / n, "train_top5": top5 / n}

    # ------------------------------------------------------------------ the epoch

    def epoch_sums(self) -> Sums:
        """This process's sums over the epoch in progress: what a checkpoint keeps."""
        loss, top1, top5 = self._epoch.tolist()
        return loss, top1, top5, self._epoch_n

    def epoch_figures(self) -> dict[str, float]:
        """The epoch's means over every process (a collective: all call it together)."""
        stats = torch.cat([self._epoch, torch.tensor([float(self._epoch_n)], device=self.device)]).double()
        D.all_reduce_sum(stats)
        loss, top1, top5, n = stats.tolist()
        n = max(n, 1.0)
        return {"loss": loss / n, "train_top1": top1 / n, "train_top5": top5 / n}

    def new_epoch(self, sums: Sums = NO_SUMS) -> None:
        """Start the epoch's sums from zero, or from a checkpoint's ``sums`` (resumed mid-epoch)."""
        self._epoch, self._epoch_n = self._zeros(sums), int(sums[3])

    # ------------------------------------------------------------------ speed and state

    def images_per_s(self) -> float:
        """Images per second of the training steps, over all processes and resumed segments."""
        return self.images * self.world_size / max(self.clock.seconds(), 1e-9)

    def state(self) -> dict[str, Any]:
        return {"epoch_sums": list(self.epoch_sums()), "step_seconds": self.clock.seconds(), "images": self.images}

    def load_state(self, state: dict[str, Any]) -> None:
        loss, top1, top5, n = state["epoch_sums"]
        self.new_epoch((float(loss), float(top1), float(top5), int(n)))
        # Checkpoints written before the step clock existed: time this segment only.
        self.clock, self.images = Stopwatch(float(state.get("step_seconds", 0.0))), int(state.get("images", 0))
        self._window_t = self.clock.seconds()
