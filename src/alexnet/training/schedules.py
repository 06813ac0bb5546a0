"""Learning-rate schedules, evaluated per optimiser step, with plain-data state.

A schedule maps (step, validation history) to a learning rate. It is written as one
small class instead of ``torch.optim.lr_scheduler`` objects so that its whole state is
a dict of numbers (checkpointed with ``weights_only=True``) and so that resuming in the
middle of an epoch gives exactly the learning rate the uninterrupted run had.

* ``plateau`` (the paper): divide by ``1/factor`` (10) when the validation error has not
  improved by ``threshold`` for ``patience`` epochs, at most ``max_reductions`` (3) times.
* ``step``: multiply by ``gamma`` every ``step_size`` epochs.
* ``cosine``: linear warm-up, then half a cosine from ``lr`` down to ``min_lr``.
* ``onecycle``: rise from ``lr/div`` to ``lr`` over ``pct`` of the run (cosine), then anneal
  to ``lr/final_div`` (Smith & Topin 2018).
* ``constant``.

Every schedule but ``onecycle`` accepts a linear warm-up of ``warmup_epochs``.
"""

from __future__ import annotations

import math
from typing import Any

from alexnet.training.config import TrainConfig


class LRSchedule:
    """Learning rate as a function of the global step; ``epoch_end`` feeds validation error."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.kind = cfg.schedule
        self.base_lr = cfg.lr
        self.steps_per_epoch = max(1, steps_per_epoch)
        # Planned over ``epochs`` even when ``max_steps`` stops a run early, so that a run
        # stopped and resumed follows the same curve as one that never stopped.
        self.total_steps = max(1, cfg.epochs * self.steps_per_epoch)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.cfg = cfg
        # plateau state
        self.best_error = math.inf
        self.bad_epochs = 0
        self.reductions = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ evaluation

    def lr(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (0-based, counted over the whole run)."""
        c, base = self.cfg, self.base_lr
        if self.kind == "onecycle":
            peak = max(1, round(c.onecycle_pct * self.total_steps))
            start, end = base / c.onecycle_div, base / c.onecycle_final_div
            if step < peak:
                return _cos_interp(start, base, step / peak)
            return _cos_interp(base, end, min(1.0, (step - peak) / max(1, self.total_steps - peak)))
        warm = (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
        epoch = step // self.steps_per_epoch
        if self.kind == "plateau":
            lr = base * c.plateau_factor**self.reductions
        elif self.kind == "step":
            lr = base * c.step_gamma ** int(epoch // c.step_size)
        elif self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, max(0, step - self.warmup_steps) / span)
            lr = _cos_interp(base, c.min_lr, t)
        else:  # constant
            lr = base
        return lr * warm

    def epoch_end(self, val_error: float | None) -> bool:
        """Record an epoch's validation error (fraction); True when the plateau rule fired."""
        if val_error is None or not math.isfinite(val_error):
            return False
        fired = False
        if val_error < self.best_error - self.cfg.plateau_threshold:
            self.best_error, self.bad_epochs = val_error, 0
        else:
            self.bad_epochs += 1
            if (
                self.kind == "plateau"
                and self.bad_epochs >= self.cfg.plateau_patience
                and self.reductions < self.cfg.plateau_max_reductions
            ):
                self.reductions += 1
                self.bad_epochs = 0
                fired = True
        self.history.append({"val_error": float(val_error), "reductions": float(self.reductions)})
        return fired

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "best_error": float(self.best_error),
            "bad_epochs": int(self.bad_epochs),
            "reductions": int(self.reductions),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint schedule is {state.get('kind')!r}, config says {self.kind!r}")
        self.best_error = float(state["best_error"])
        self.bad_epochs = int(state["bad_epochs"])
        self.reductions = int(state["reductions"])
        self.history = [dict(h) for h in state.get("history", [])]


def _cos_interp(start: float, end: float, t: float) -> float:
    """Half-cosine from ``start`` (t=0) to ``end`` (t=1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
