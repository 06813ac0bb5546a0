"""The paper's SGD update, exactly, beside PyTorch's and Muon (``optimizer`` = ``"paper"`` |
``"torch"`` | ``"muon"``).

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

``"muon"`` (:class:`Muon`) is the CIFAR-10 speed runs' optimiser of 2024 (Keller Jordan's
Muon, used by airbench94_muon): convolution filters take momentum steps made orthogonal, every
other parameter takes PyTorch's SGD step.

Which parameters decay is decided by the parameter groups (``weight_decay`` per group):
see :func:`alexnet.training.trainer.parameter_groups` and the ``decay_bias`` config key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
        loss = _closure_loss(closure)
        for _, p, lr, m, wd in _with_gradients(self):
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


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """The loss of ``closure`` (re-evaluated with gradients), as torch's optimisers take it."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _with_gradients(optimizer: torch.optim.Optimizer) -> Iterator[tuple[dict[str, Any], Tensor, float, float, float]]:
    """(group, parameter, lr, momentum, weight decay) for every parameter with a gradient."""
    for group in optimizer.param_groups:
        lr, m, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        for p in group["params"]:
            if p.grad is not None:
                yield group, p, lr, m, wd


# Newton-Schulz quintic coefficients from Muon: they maximise the slope at zero, so three
# iterations take the singular values of a normalised matrix close to 1 (a random 64x576
# gradient: all within [0.67, 0.94]; SGD would keep their spread).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(g: Tensor, steps: int = 3) -> Tensor:
    """Roughly ``U V^T`` of the 2-d ``g = U S V^T``: the same directions, every singular value
    near 1. Three quintic Newton-Schulz iterations in bf16 (matmuls only, so cheap next to a
    training step: 6.3 GFLOP for alexnet_fast's filters against 725 for a batch of 1024)."""
    a, b, c = _NS_COEFFICIENTS
    x = g.to(torch.bfloat16)
    x = x / (x.norm() + 1e-7)  # the largest singular value <= 1, where the iteration converges
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T  # iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked ``orthogonal``, PyTorch's SGD (Nesterov available) for the rest.

    A filter bank ``W`` (``out x in x k x k``) keeps a momentum buffer of its gradient, as
    SGD does (``b <- m b + g``, Nesterov: ``u = g + m b``), but steps along
    :func:`orthogonalize` ``(u)`` reshaped to ``out x (in k k)``: every direction the
    gradient has moves at the same rate, where SGD crawls along its small singular
    directions. Its size no longer depends on the gradient's scale, so ``lr`` is the step's
    size relative to the weights, and with ``normalize`` the bank is first scaled back to a
    Frobenius norm of ``sqrt(out)`` (a layer followed by batch norm computes the same
    function at any scale: this keeps the relative step fixed, and is the only weight decay
    such layers need). Without ``normalize`` the group's ``weight_decay`` is decoupled:
    ``W <- (1 - lr wd) W``.

    State: ``state[p]["momentum_buffer"]`` for every parameter, the same form as PyTorch's
    SGD, so a checkpoint converts to and from the paper's rule like the ``"torch"`` kind.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 3,
    ) -> None:
        if not 0 <= momentum < 1 or lr <= 0 or weight_decay < 0 or ns_steps < 1:
            raise ConfigError(f"Muon: invalid settings (lr {lr}, momentum {momentum}, weight decay {weight_decay})")
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
                    "orthogonal": False, "normalize": False, "ns_steps": ns_steps}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["orthogonal"] and any(p.ndim < 2 for p in group["params"]):
                raise ConfigError("Muon: an orthogonal group takes matrices and filter banks only (ndim >= 2)")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = _closure_loss(closure)
        for group, p, lr, m, wd in _with_gradients(self):
            g = p.grad
            if wd != 0 and not group["orthogonal"]:
                g = g.add(p, alpha=wd)  # SGD's coupled decay, as torch.optim.SGD
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.clone()
            else:
                buf.mul_(m).add_(g)
            u = g.add(buf, alpha=m) if group["nesterov"] else buf
            if not group["orthogonal"]:
                p.add_(u, alpha=-lr)
                continue
            if group["normalize"]:
                p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
            elif wd != 0:
                p.mul_(1 - lr * wd)
            p.add_(orthogonalize(u.reshape(len(u), -1), group["ns_steps"]).view_as(p), alpha=-lr)
        return loss


# Where each kind keeps its velocity in ``state_dict()["state"][i]``; Muon's is SGD's.
_VELOCITY_KEY = {"paper": "velocity", "torch": "momentum_buffer"}


def _form(kind: str) -> str:
    """The velocity form an optimiser kind keeps: Muon's momentum buffer is torch's."""
    return "torch" if kind == "muon" else kind


def state_kind(state: dict[str, Any]) -> str | None:
    """Which velocity form the ``state_dict`` ``state`` holds: "paper", "torch" (also Muon's),
    or None when it holds no velocity yet (no step taken: any kind loads it)."""
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
    if target not in OPTIMIZERS:
        raise ConfigError(f"config key 'optimizer': expected one of {', '.join(OPTIMIZERS)} (got {target!r})")
    target = _form(target)
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
    converted = source is not None and source != _form(kind)
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
    if kind == "muon":
        return Muon(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ConfigError(f"config key 'optimizer': expected one of {', '.join(OPTIMIZERS)} (got {kind!r})")
