"""Training configuration: one dataclass, named presets, files and command-line overrides.

Precedence, lowest first: the dataclass defaults (the paper's recipe) < a preset < a
TOML/YAML/JSON file < command-line flags < ``--set key=value`` (:func:`resolve`). Every value
goes through :func:`check_value`, the one place for types and ranges: unknown keys, wrong
types, values out of range and non-finite numbers are :class:`ConfigError`\\ s that name
the key. Files are bounded (1 MiB, no YAML aliases) so a hostile one cannot expand.

The learning-rate rule for data-parallel runs: ``batch_size`` is per process, the global
batch is ``batch_size x world_size``, and ``lr`` is used as given. To keep the paper's
recipe on N processes either divide ``batch_size`` by N (same global batch, same lr) or
scale ``lr`` linearly with the global batch (Goyal et al. 2017), with a few warm-up epochs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alexnet.data.transforms import MODES
from alexnet.errors import ConfigError

SCHEDULES = ("plateau", "step", "cosine", "linear", "onecycle", "constant")
AMP_MODES = ("auto", "bf16", "none")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
NORM_MODES = MODES  # the normalisations data.transforms implements: one list
# "paper": the paper's update, lr inside the velocity (training/optim.py: PaperSGD);
# "torch": torch.optim.SGD (lr outside: an lr drop rescales the velocity at once; fused on GPUs)
# "muon": orthogonalised momentum steps for convolution filters, torch's SGD for the rest (optim.Muon)
OPTIMIZERS = ("paper", "torch", "muon")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are the paper's recipe (Section 5)."""

    # data and model
    data: str | None = None  # dataset path; None: the embedded synthetic dataset
    model: str = "alexnet"
    model_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"width": 0.5, "norm": "lrn"}
    crop: int | None = None  # network input side; None: the model's (224) or 7/8 of small images
    norm_mode: str = "image"  # "image": subtract the mean image (paper); "channel": mean/std
    lighting: float = 0.1  # std of the PCA lighting alphas (paper: 0.1); 0 disables
    flip: bool = True
    random_crop: bool = True
    cutout: int = 0  # side of a square set to the mean in each training crop (DeVries & Taylor); 0: off
    val_split: str = "val"
    val_fraction: float = 0.05  # held out from train when the dataset has no validation split
    # optimisation (paper: SGD, momentum 0.9, weight decay 5e-4, batch 128, lr 0.01)
    epochs: int = 90
    batch_size: int = 128  # per process; global batch = batch_size x world size
    lr: float = 0.01
    momentum: float = 0.9
    optimizer: str = "torch"  # "paper": v <- m v - wd lr w - lr g; w <- w + v (exact); "torch": torch SGD
    weight_decay: float = 5e-4
    decay_bias: bool = False  # weight decay on biases and normalisation parameters too
    bias_lr_scale: float = 1.0  # lr multiplier of biases and normalisation parameters (1-d tensors)
    nesterov: bool = False  # torch's optimizer and Muon: the paper's rule has no Nesterov form
    # optimizer "muon": convolution filters (4-d weights) step by lr x muon_lr / lr (so the
    # schedule's shape), with their own momentum; muon_normalize keeps each filter bank at norm
    # sqrt(out channels), for nets whose convolutions feed batch norm (scale-invariant)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_normalize: bool = False
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 disables
    # learning-rate schedule
    schedule: str = "plateau"
    warmup_epochs: float = 0.0
    plateau_factor: float = 0.1  # paper: divide by 10 ...
    plateau_patience: int = 2  # ... when the validation error has not improved for this many epochs
    plateau_max_reductions: int = 3  # ... three times in all
    plateau_threshold: float = 1e-3  # improvement (absolute, in error) that counts
    step_size: float = 30.0  # epochs between step decays
    step_gamma: float = 0.1
    min_lr: float = 0.0  # floor of the cosine schedule
    onecycle_pct: float = 0.25  # fraction of the run spent rising
    onecycle_div: float = 25.0  # start lr = lr / onecycle_div
    onecycle_final_div: float = 1e4  # end lr = lr / onecycle_final_div
    # hardware and speed
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # "auto": bf16 autocast where the hardware has native bf16 (recent GPUs, AVX512-BF16/AMX CPUs)
    channels_last: bool | None = None  # None: on for CUDA
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode; "reduce-overhead" uses CUDA graphs on a GPU
    split_devices: list[str] | None = None  # the paper's two-device model split, e.g. ["cuda:0", "cuda:1"]
    num_workers: int = 2
    seed: int = 0
    deterministic: bool = False
    # bookkeeping
    out: str = "runs/train"
    log_every: int = 20  # steps between loss read-backs (the only host syncs of a step)
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0: only at epoch ends
    checkpoint_minutes: float = 10.0  # also checkpoint when this much time has passed; 0: off
    max_steps: int | None = None  # stop after this many optimiser steps in all (for smoke runs)
    time_limit_minutes: float | None = None  # stop cleanly (checkpoint, validate) after this long
    fit_time_limit: bool = False  # re-plan epochs (and the schedule) after each epoch to end in time
    tensorboard: bool = True
    progress: bool = True
    preset: str | None = None  # the preset these values started from (recorded, not applied)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Every field checked again (type, range, choices) and the fields that go together.

        :func:`from_dict` checks each value it is given; this catches values set on the
        object afterwards (``cfg.lr = -1``), so the trainer can trust what it reads.
        """
        for key in _FIELDS:
            setattr(self, key, check_value(key, getattr(self, key)))
        if self.split_devices is not None:
            if len(self.split_devices) != 2:
                raise ConfigError(f"config key 'split_devices': needs two devices (got {self.split_devices!r})")
            if self.model != "alexnet":
                raise ConfigError(
                    f"config key 'split_devices': only the 'alexnet' model has the two-device split (model {self.model!r})"
                )
        if self.optimizer == "paper" and self.nesterov:
            raise ConfigError("config key 'nesterov': the paper's update rule (optimizer 'paper') has no Nesterov form; "
                              "use optimizer 'torch'")
        return self


# --------------------------------------------------------------------------- presets
# Each preset is a set of overrides on the dataclass defaults. Keep one entry per preset.

PRESETS: dict[str, dict[str, Any]] = {
    # The paper, Section 5: the defaults above, spelt out.
    "imagenet-paper": {
        "model": "alexnet",
        # The one deviation from the paper: biases 0.1 (Caffe's bvlc_alexnet) where the paper
        # puts 1 (conv2/4/5, fc6/7). With 1 and lr 0.01 the loss spiked to 23 and the network
        # sat at chance (docs/recipe.md, bench/paper_recipe.py); with 0.1 it learned.
        # --set model_options={init_bias: 1} is the paper's initialisation exactly.
        "model_options": {"init_bias": 0.1},
        "epochs": 90,
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        # The paper's update exactly (lr inside the velocity): after each divide-by-10 the old
        # velocity decays at 0.9 per step instead of shrinking tenfold at once (torch's SGD).
        "optimizer": "paper",
        "weight_decay": 5e-4,
        # The paper's formula decays "w" and says nothing of biases; read literally it covers
        # every parameter. Krizhevsky's cuda-convnet2 layer parameters give weights and biases
        # separate costs (its documented example: wc=0.0005, wball=0) and Caffe's bvlc_alexnet
        # has decay_mult 0 on biases: the preset keeps biases undecayed, on purpose
        # (docs/recipe.md); decay_bias=true is the literal reading.
        "decay_bias": False,
        "schedule": "plateau",
        "norm_mode": "image",
        "lighting": 0.1,
        "crop": 224,
    },
    # CIFAR-10 in minutes on a CPU (issue 17; bench/cifar10.py, bench/README.md): alexnet_fast
    # (whitened conv1, shift-only batch norm, Dirac-initialised convs) trained the way
    # airbench94_muon found pays in a short run: Muon on the convolution filters (orthogonalised
    # Nesterov momentum 0.6, relative step 0.24, each bank kept at norm sqrt(out)), Nesterov SGD
    # 0.85 at lr 1.5 on the mean loss for the head and (64x) the BN shifts, weight decay 0.002
    # per step at the peak rate (0.002 / lr), label smoothing 0.2, batch 1024, and a straight
    # decay of every rate to zero from the first step. bench/cifar10.py trains on reflect-padded
    # 36 px images with crop 32 (2 px translations).
    "cifar10": {
        "model": "alexnet_fast",
        # width 1 (64/256/256): with Muon, 1.25x the width ties in 15 minutes (91.1%, 15 epochs
        # against 21) and loses at shorter budgets, where fewer epochs fit.
        "model_options": {"width": 1.0},
        "epochs": 20,
        "batch_size": 1024,
        "optimizer": "muon",
        "muon_lr": 0.24,
        "muon_momentum": 0.6,
        "muon_normalize": True,
        "lr": 1.5,
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": 0.002 / 1.5,
        "bias_lr_scale": 64.0,
        "label_smoothing": 0.2,
        "schedule": "linear",
        "warmup_epochs": 0.0,
        "min_lr": 0.0,
        "norm_mode": "channel",
        "lighting": 0.0,
        "crop": 28,
        "val_fraction": 0.1,
        "num_workers": 2,
    },
    # The first wave's CIFAR-10 recipe (88% in 15 min on this CPU), kept for comparison: the
    # classic 5 conv + 3 fc design. Width 0.5 is ~3x faster per image than 1.0 on a CPU, so
    # more epochs fit a budget; one-cycle + nesterov + label smoothing converge fastest; BN
    # makes lr 0.1 at batch 256 stable. Trained on reflect-padded 40 px images with crop 32.
    "cifar10-small": {
        "model": "alexnet_small",
        "model_options": {"width": 0.5, "norm": "bn", "dropout": 0.3},
        "epochs": 30,
        "batch_size": 256,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "schedule": "onecycle",
        "norm_mode": "channel",
        "lighting": 0.0,
        "crop": 28,
        "val_fraction": 0.1,
        "num_workers": 2,
    },
    # `alexnet demo`: the embedded 64 px dataset on two CPU cores in a few minutes.
    "demo": {
        "model": "alexnet_small",
        # Measured on the embedded data: lr 0.01-0.02 leaves the initial loss plateau much
        # sooner than 0.05-0.2, and heavy dropout only slows a run this short.
        "model_options": {"width": 0.25, "norm": "bn", "dropout": 0.1, "fc_dim": 512},
        "epochs": 8,
        "batch_size": 64,
        "lr": 0.02,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "onecycle_pct": 0.15,
        "norm_mode": "channel",
        "lighting": 0.1,
        "num_workers": 0,
        "log_every": 10,
        "checkpoint_minutes": 2.0,
    },
}


def preset(name: str) -> TrainConfig:
    """The configuration of preset ``name`` (a key of :data:`PRESETS`), checked."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError(f"config key 'preset': unknown preset {_show(name)}; choose from {', '.join(PRESETS)}")
    return from_dict({**PRESETS[name], "preset": name})


# --------------------------------------------------------------------------- checking
# One place for every key: the annotation gives the type (checked and, where lossless,
# converted by _coerce), _RULES the range or choices. from_dict and validate() both go
# through check_value, so every bad value, wherever it comes from, names its key.

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)

# Integers are bounded so float arithmetic on them (schedules, ETAs) stays exact and the
# seeds the trainer derives (seed x 1000 + rank + 1) still fit torch's 64-bit generators.
INT_MAX = 2**53
MAX_FILE_BYTES = 1 << 20  # a configuration is a few hundred bytes; refuse to read more than 1 MiB
_PLAIN = str | int | float | bool | type(None)

# (test, what it demands); the demand may be a function, for choices known only at run time
Rule = tuple[typing.Callable[[Any], bool], str | typing.Callable[[], str]]


def _choice(options: tuple[str, ...]) -> Rule:
    return (lambda v: v in options, f"expected one of {', '.join(options)}")


# key -> rule, applied after the type check to values other than None.
_RULES: dict[str, Rule] = {
    "data": (lambda v: v.strip() != "", "must not be empty"),
    "model": (lambda v: v in _model_names(), lambda: f"unknown model; choose from {', '.join(_model_names())}"),
    "crop": (lambda v: v >= 8, "must be at least 8"),
    "norm_mode": _choice(NORM_MODES),
    "lighting": (lambda v: v >= 0, "must be >= 0"),
    "cutout": (lambda v: 0 <= v <= 4096, "must be in [0, 4096] (0: off)"),
    "val_split": (lambda v: v.strip() != "", "must not be empty"),
    "val_fraction": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "epochs": (lambda v: v >= 1, "must be at least 1"),
    "batch_size": (lambda v: v >= 1, "must be at least 1"),
    "lr": (lambda v: v > 0, "must be > 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "optimizer": _choice(OPTIMIZERS),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "bias_lr_scale": (lambda v: 0 < v <= 1e4, "must be in (0, 10000]"),
    "muon_lr": (lambda v: 0 < v <= 10, "must be in (0, 10]"),
    "muon_momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "grad_clip": (lambda v: v >= 0, "must be >= 0 (0 disables)"),
    "schedule": _choice(SCHEDULES),
    "warmup_epochs": (lambda v: v >= 0, "must be >= 0"),
    "plateau_factor": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "plateau_patience": (lambda v: v >= 0, "must be >= 0"),
    "plateau_max_reductions": (lambda v: v >= 0, "must be >= 0"),
    "plateau_threshold": (lambda v: v >= 0, "must be >= 0"),
    "step_size": (lambda v: v > 0, "must be > 0"),
    "step_gamma": (lambda v: v > 0, "must be > 0"),
    "min_lr": (lambda v: v >= 0, "must be >= 0"),
    "onecycle_pct": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "onecycle_div": (lambda v: v > 0, "must be > 0"),
    "onecycle_final_div": (lambda v: v > 0, "must be > 0"),
    "device": (lambda v: _is_device(v, auto=True), "expected auto, cpu, cuda, cuda:N or another torch device"),
    "amp": _choice(AMP_MODES),
    "compile_mode": _choice(COMPILE_MODES),
    "split_devices": (lambda v: all(_is_device(d) for d in v), "expected torch devices such as cuda:0,cuda:1"),
    # each worker is a process: a bound keeps a typo (or a hostile file) from forking thousands
    "num_workers": (lambda v: 0 <= v <= 256, "must be in [0, 256]"),
    "seed": (lambda v: v >= 0, "must be >= 0"),
    "out": (lambda v: v.strip() != "", "must not be empty"),
    "log_every": (lambda v: v >= 1, "must be at least 1"),
    "checkpoint_every": (lambda v: v >= 0, "must be >= 0 (0: only at epoch ends)"),
    "checkpoint_minutes": (lambda v: v >= 0, "must be >= 0 (0: off)"),
    "max_steps": (lambda v: v >= 1, "must be at least 1"),
    "time_limit_minutes": (lambda v: v > 0, "must be > 0"),
    "preset": (lambda v: v in PRESETS, f"expected one of {', '.join(PRESETS)}"),
}


def _model_names() -> list[str]:
    from alexnet.models import list_models  # lazy: the models pull in torch

    return [m.name for m in list_models()]


def _is_device(name: str, auto: bool = False) -> bool:
    if auto and name == "auto":
        return True
    import torch

    try:
        torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def _show(value: Any) -> str:
    """``repr(value)``, cut short: a hostile value must not make the message huge (or unprintable)."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python will print
        return f"<int of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _number(key: str, value: Any, tp: type) -> int | float:
    """``value`` as an int or a finite float; numeric strings count (YAML 1.1 reads 1e-3 as one)."""
    bad = ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {_show(value)} ({type(value).__name__})")
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise bad
    if isinstance(value, numbers.Integral):  # NumPy integers too
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value)  # exact for long integers, which float() would round
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                raise bad from None
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e6 steps, or TOML's 2.0: whole numbers are integers
    if tp is int and isinstance(value, int):
        if abs(value) > INT_MAX:
            raise ConfigError(f"config key {key!r}: must be at most 2**53 in magnitude, got {_show(value)}")
        return value
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"config key {key!r}: must be a finite number, got {_show(value)}")
    if tp is int:  # a float with a fractional part
        raise bad
    return number


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against annotation ``tp`` and converted where that loses nothing."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]  # every union is X | None
        return _coerce(key, value, inner)
    bad = ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {_show(value)} ({type(value).__name__})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp in (int, float):
        return _number(key, value, tp)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        if "\0" in value:
            raise ConfigError(f"config key {key!r}: must not contain a NUL character, got {_show(value)}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # "cuda:0,cuda:1" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise bad
        return [_coerce(key, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        for k, v in value.items():
            name = f"{key}.{k}" if isinstance(k, str) else key
            if not isinstance(k, str) or not isinstance(v, _PLAIN):
                raise ConfigError(f"config key {name!r}: expected a name and a plain value, got {_show(k)}: {_show(v)}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"config key {name!r}: must be a finite number, got {_show(v)}")
            if isinstance(v, str) and "\0" in v:
                raise ConfigError(f"config key {name!r}: must not contain a NUL character")
        return dict(value)
    raise bad  # pragma: no cover - every annotation above is handled


def check_value(key: str, value: Any) -> Any:
    """``value`` for config key ``key``, type- and range-checked (converted: "1e-3" -> 0.001).

    Raises :class:`ConfigError` naming the key for anything else, unknown keys included.
    """
    if not isinstance(key, str) or key not in _FIELDS:
        raise ConfigError(_unknown([key]))
    value = _coerce(key, value, _HINTS[key])
    rule = _RULES.get(key)
    if rule is not None and value is not None and not rule[0](value):
        demand = rule[1] if isinstance(rule[1], str) else rule[1]()
        raise ConfigError(f"config key {key!r}: {demand} (got {_show(value)})")
    return value


def _unknown(keys: list[Any]) -> str:
    shown = sorted(_show(k) for k in keys)
    hint = ""
    if len(keys) == 1 and isinstance(keys[0], str):
        close = difflib.get_close_matches(keys[0], list(_FIELDS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown config key{'s' if len(keys) > 1 else ''} {', '.join(shown)}; {hint}valid keys: {', '.join(_FIELDS)}"


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the paper's defaults) updated with ``values``, every key checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a table of keys, got {type(values).__name__}")
    unknown = [k for k in values if not isinstance(k, str) or k not in _FIELDS]
    if unknown:
        raise ConfigError(_unknown(unknown))
    out = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        setattr(out, key, check_value(key, value))
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader minus aliases: ``*name`` is how a few hundred bytes expand to
    gigabytes (the "billion laughs"), and a configuration has no use for it."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not allowed in a configuration"
            )
        return super().compose_node(parent, index)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: plain data only


def load_file(path: str | Path) -> dict[str, Any]:
    """The key/value table of a TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON file, unchecked.

    A ``[train]`` table, if present, is used (so one file can hold several sections). Files
    over :data:`MAX_FILE_BYTES` and YAML aliases are refused, so a hostile file cannot make
    the parser build more than the file holds.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {path}: expected .toml, .yaml, .yml or .json")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # bounded: /dev/zero or a huge file cannot fill memory
        if len(raw) > MAX_FILE_BYTES:
            raise ConfigError(f"config file {path}: larger than {MAX_FILE_BYTES // 1024} KiB; not a configuration")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = _load_yaml(text)
            data = {} if data is None else data
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except Exception as exc:  # parse errors, deep nesting, over-long integers
        raise ConfigError(f"config file {path} is not valid: {type(exc).__name__}: {str(exc)[:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of keys at the top level")
    if isinstance(data.get("train"), dict) and len(data) == 1:
        data = data["train"]
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as a YAML scalar (1e-3, true, [a, b]).

    Only the syntax is read here; :func:`from_dict` checks the value (and turns numeric
    strings such as YAML 1.1's ``1e-3`` into numbers for numeric keys).
    """
    key, sep, raw = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {_show(item)}")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"config key {key!r} (--set): {exc}") from None
    except Exception:  # not YAML: keep the text, the key's type check decides
        value = raw
    return key, value


def resolve(
    preset_name: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    default_preset: str | typing.Callable[[str | None], str | None] | None = None,
    sets: dict[str, Any] | None = None,
) -> TrainConfig:
    """The configuration of a run, in the documented order, lowest first:

    defaults < preset < ``file`` < ``overrides`` (command-line flags) < ``sets`` (``--set``).

    ``overrides`` are flags: a ``None`` there means "not given" and is dropped. ``sets`` are
    ``--set key=value`` pairs (from :func:`parse_override`): a ``None`` there sets the key to
    null. The preset is the first of ``sets["preset"]``, ``preset_name`` (or
    ``overrides["preset"]``), the file's ``preset`` and ``default_preset``; the last may be a
    function of the ``data`` the layers above settle on (the CLI's dataset-based choice).
    """
    for layer in (overrides, sets):
        if layer is not None and not isinstance(layer, dict):
            raise ConfigError(f"overrides must be a table of keys, got {type(layer).__name__}")
    file_values = load_file(file) if file is not None else {}
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    sets = dict(sets or {})
    name = sets.pop("preset", None) or preset_name or flags.pop("preset", None) or file_values.get("preset")
    flags.pop("preset", None)
    if name is None and default_preset is not None:
        if callable(default_preset):
            data = {**file_values, **flags, **sets}.get("data")
            name = default_preset(data if isinstance(data, str) else None)
        else:
            name = default_preset
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"config key 'preset': expected a string, got {_show(name)}")
    cfg = preset(name) if name else TrainConfig()
    base_model = cfg.model
    cfg = from_dict({k: v for k, v in file_values.items() if k != "preset"}, cfg)
    cfg = from_dict(flags, cfg)
    cfg = from_dict(sets, cfg)
    if cfg.model != base_model and not any("model_options" in layer for layer in (file_values, flags, sets)):
        # A preset's model options belong to its model ("init_bias" of the paper's alexnet
        # means nothing to alexnet_owt): another model named above it starts from its defaults.
        cfg.model_options = {}
    cfg.preset = name
    return cfg.validate()
