"""Learning-rate schedules, evaluated per optimiser step, with plain-data state.

A schedule maps (step, validation history) to a learning rate. It is written as one
small class instead of ``torch.optim.lr_scheduler`` objects so that its whole state is
a dict of numbers (checkpointed with ``weights_only=True``) and so that resuming in the
middle of an epoch gives exactly the learning rate the uninterrupted run had.

* ``plateau`` (the paper): divide by ``1/factor`` (10) when the validation error has not
  improved by ``threshold`` for ``patience`` epochs, at most ``max_reductions`` (3) times.
* ``step``: multiply by ``gamma`` every ``step_size`` epochs.
* ``cosine``: linear warm-up, then half a cosine from ``lr`` down to ``min_lr``.
* ``linear``: linear warm-up, then a straight line from ``lr`` down to ``min_lr`` (airbench's
  Muon runs: no warm-up, decay to zero).
* ``onecycle``: rise from ``lr/div`` to ``lr`` over ``pct`` of the run (cosine), then anneal
  to ``lr/final_div`` (Smith & Topin 2018).
* ``constant``.

Every schedule but ``onecycle`` accepts a linear warm-up of ``warmup_epochs``.

Re-planning. A time-boxed run may change its length as it goes (``fit_time_limit``):
:meth:`LRSchedule.replan` keeps the learning rate where it is and lays what is left of the
schedule over the steps that are left, so the run follows one schedule, continuous and
monotone where the schedule is, that ends at its final value. One-cycle re-planned during
its rise keeps rising from where it was, only at another pace.
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
        self.total_steps = self.planned_steps = max(1, cfg.epochs * self.steps_per_epoch)
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.cfg = cfg
        # plateau state
        self.best_error = math.inf
        self.bad_epochs = 0
        self.reductions = 0
        self.history: list[dict[str, float]] = []
        # Re-plans, as [step, position, total_steps]: from ``step`` on the schedule's
        # formulas are read at ``position`` (a step of the new plan of ``total_steps``),
        # moving evenly to the plan's end. Empty for a run that was never re-planned.
        self.replans: list[list[float]] = []

    # ------------------------------------------------------------------ evaluation

    def lr(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (0-based, counted over the whole run)."""
        c, base = self.cfg, self.base_lr
        total, pos = self._plan_at(step)
        if self.kind == "onecycle":
            peak = self._knee(total)
            start, end = base / c.onecycle_div, base / c.onecycle_final_div
            if pos < peak:
                return _cos_interp(start, base, pos / peak)
            return _cos_interp(base, end, min(1.0, (pos - peak) / max(1, total - peak)))
        warm = (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
        epoch = step // self.steps_per_epoch
        if self.kind == "plateau":
            lr = base * c.plateau_factor**self.reductions
        elif self.kind == "step":
            lr = base * c.step_gamma ** int(epoch // c.step_size)
        elif self.kind in ("cosine", "linear"):
            span = max(1, total - self.warmup_steps)
            t = min(1.0, max(0, pos - self.warmup_steps) / span)
            lr = _cos_interp(base, c.min_lr, t) if self.kind == "cosine" else base + (c.min_lr - base) * t
        else:  # constant
            lr = base
        return lr * warm

    def replan(self, total_steps: int, at_step: int) -> None:
        """The run now ends after ``total_steps`` steps; ``at_step`` is the next step to take.
        The learning rate at ``at_step`` stays what it was (see the module docstring)."""
        total_steps = max(1, total_steps)
        if total_steps == self.total_steps:
            return
        old_total, pos = self._plan_at(at_step)
        # Where the old plan stands, as a fraction of its current phase (rise or warm-up,
        # then decay); the same fraction of the same phase of the new plan.
        knee, new_knee = self._knee(old_total), self._knee(total_steps)
        if pos < knee:
            new_pos = pos / knee * new_knee if self.kind == "onecycle" else pos
        else:
            done = min(1.0, (pos - knee) / max(1, old_total - knee))
            new_pos = new_knee + done * (total_steps - new_knee)
        self.total_steps = total_steps
        self.replans.append([at_step, new_pos, total_steps])

    def _knee(self, total_steps: int) -> int:
        """The step where the schedule turns: one-cycle's peak, the end of the warm-up."""
        if self.kind == "onecycle":
            return max(1, round(self.cfg.onecycle_pct * total_steps))
        return self.warmup_steps

    def _plan_at(self, step: int) -> tuple[int, float]:
        """(total steps of the plan in force at ``step``, the position in that plan to read
        the schedule at): ``step`` itself unless the run was re-planned before it."""
        total, pos = self.planned_steps, step
        for at, start, plan in self.replans:
            if step >= at:
                total, pos = int(plan), start + (plan - start) * (step - at) / max(1, plan - at)
        return total, pos

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
            "planned_steps": int(self.planned_steps),
            "total_steps": int(self.total_steps),
            "replans": [list(r) for r in self.replans],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"checkpoint schedule is {state.get('kind')!r}, config says {self.kind!r}")
        self.best_error = float(state["best_error"])
        self.bad_epochs = int(state["bad_epochs"])
        self.reductions = int(state["reductions"])
        self.history = [dict(h) for h in state.get("history", [])]
        # A re-planned run resumes with its plan; any other takes its length from the config.
        self.replans = [[int(at), float(pos), int(plan)] for at, pos, plan in state.get("replans", [])]
        if self.replans:
            self.planned_steps, self.total_steps = int(state["planned_steps"]), int(state["total_steps"])


def _cos_interp(start: float, end: float, t: float) -> float:
    """Half-cosine from ``start`` (t=0) to ``end`` (t=1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
