"""The paper's SGD update, exactly, beside PyTorch's (``optimizer`` = ``"paper"`` | ``"torch"``).

The paper (Section 5) writes the update of a weight ``w`` with learning rate ``lr``::

    v <- 0.9 v - 0.0005 lr w - lr grad
    w <- w + v

The learning rate is *inside* the velocity. PyTorch's :class:`torch.optim.SGD` keeps it
outside: ``b <- m b + (grad + wd w); w <- w - lr b``. With a constant ``lr`` the two are the
same sequence of weights (``v = -lr b``), but when the learning rate changes PyTorch rescales
the whole accumulated velocity at once: after a divide-by-10 the next step moves by a tenth
of the old momentum, while the paper's rule lets the old velocity (taken at the old rate)
decay geometrically at 0.9 per step. :class:`PaperSGD` is the paper's rule; the trainer
builds it for ``optimizer = "paper"`` (the ``imagenet-paper`` preset) and PyTorch's SGD for
``"torch"`` (fused on a GPU, Nesterov available).

Which parameters decay is decided by the parameter groups (``weight_decay`` per group):
see :func:`alexnet.training.trainer.parameter_groups` and the ``decay_bias`` config key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from alexnet.errors import ConfigError
from alexnet.training.config import OPTIMIZERS


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum as the paper writes it: ``v <- m v - wd lr w - lr g; w <- w + v``.

    Per parameter group: ``lr``, ``momentum`` and ``weight_decay`` (the group's own values,
    so biases can sit in a group without decay). The velocity ``v`` is the optimiser's only
    state (``state[p]["velocity"]``, created as zeros at a parameter's first step); it goes
    through :meth:`state_dict` / :meth:`load_state_dict` like PyTorch's momentum buffers, so
    a checkpointed run resumes with the same velocities and the same next step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        for name, value, ok in (
            ("lr", lr, lr > 0),
            ("momentum", momentum, 0 <= momentum < 1),
            ("weight_decay", weight_decay, weight_decay >= 0),
        ):
            if not ok:
                raise ConfigError(f"PaperSGD: invalid {name} {value!r}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient (the paper's two lines)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ConfigError("PaperSGD does not take sparse gradients")
                state = self.state[p]
                v = state.get("velocity")
                if v is None:
                    v = state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                # v <- m v - wd lr w - lr g, in this order (the hand-written loop in the tests)
                v.mul_(m)
                if wd != 0:
                    v.add_(p, alpha=-wd * lr)
                v.add_(p.grad, alpha=-lr)
                p.add_(v)
        return loss


# Where each kind keeps its velocity in ``state_dict()["state"][i]``.
_VELOCITY_KEY = {"paper": "velocity", "torch": "momentum_buffer"}


def state_kind(state: dict[str, Any]) -> str | None:
    """Which optimiser wrote the ``state_dict`` ``state``: "paper", "torch", or None when it
    holds no velocity yet (no step taken: either kind loads it)."""
    for per_param in state.get("state", {}).values():
        for kind, key in _VELOCITY_KEY.items():
            if isinstance(per_param, dict) and per_param.get(key) is not None:
                return kind
    return None


def convert_state(state: dict[str, Any], target: str) -> dict[str, Any]:
    """An optimiser ``state_dict`` with its velocities rewritten for the ``target`` kind,
    moving the same way (its ``param_groups`` as they were: see :func:`load_state`).

    The paper's velocity is ``v = -lr b`` in terms of PyTorch's momentum buffer ``b`` (at the
    learning rate of the step that wrote it, each group's ``lr`` in the state), so a run
    resumed with the other optimiser continues with the velocity it had instead of starting
    from rest (which, with momentum 0.9, would be ten times slower for a while).
    """
    source = state_kind(state)
    if target not in _VELOCITY_KEY:
        raise ConfigError(f"config key 'optimizer': expected one of {', '.join(OPTIMIZERS)} (got {target!r})")
    if source is None or source == target:
        return state
    converted: dict[Any, dict[str, Any]] = {}
    for group in state["param_groups"]:
        lr = float(group["lr"])
        for index in group["params"]:
            old = state["state"].get(index)
            if not old or old.get(_VELOCITY_KEY[source]) is None:
                continue
            velocity = old[_VELOCITY_KEY[source]]
            if target == "paper":
                new = velocity * -lr
            else:
                new = velocity / -lr if lr > 0 else torch.zeros_like(velocity)
            converted[index] = {_VELOCITY_KEY[target]: new}
    return {"state": converted, "param_groups": state["param_groups"]}


def load_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], kind: str) -> str | None:
    """Load a ``state_dict`` into ``optimizer`` (of ``kind``, "paper" or "torch"): velocities
    written by the other kind are converted (:func:`convert_state`), and the optimiser keeps
    its own group settings (weight decay, momentum, Nesterov, lr scale: the run's config,
    which a resume with changes may have changed; the learning rate is the schedule's anyway).
    Returns the kind the state was converted from, or None. A state of other parameter groups
    raises ``ValueError`` (PyTorch's)."""
    source = state_kind(state)
    converted = source is not None and source != kind
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(convert_state(state, kind))
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        params = group["params"]
        group.clear()  # the other kind's keys (torch's dampening, ...) go
        group.update(own, params=params)
    return source if converted else None


def build_optimizer(
    kind: str,
    groups: list[dict[str, Any]],
    *,
    lr: float,
    momentum: float,
    nesterov: bool = False,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The optimiser named by the ``optimizer`` config key over parameter ``groups`` (each
    with its own ``weight_decay``). ``nesterov`` and ``fused`` are PyTorch's options; the
    paper's rule has neither, so asking for Nesterov with it is a :class:`ConfigError`."""
    if kind == "paper":
        if nesterov:
            raise ConfigError("config key 'nesterov': the paper's update rule (optimizer 'paper') has no Nesterov form; "
                              "use optimizer 'torch'")
        return PaperSGD(groups, lr=lr, momentum=momentum)
    if kind == "torch":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, fused=fused)
    raise ConfigError(f"config key 'optimizer': expected one of {', '.join(OPTIMIZERS)} (got {kind!r})")
