"""Training configuration: one dataclass, named presets, files and command-line overrides.

Precedence, lowest first: the dataclass defaults (the paper's recipe) < a preset < a
TOML/YAML file < command-line flags. Every value from outside is checked against the
field's type; unknown keys and wrong types are :class:`ConfigError`\\ s that name the key.

The learning-rate rule for data-parallel runs: ``batch_size`` is per process, the global
batch is ``batch_size x world_size``, and ``lr`` is used as given. To keep the paper's
recipe on N processes either divide ``batch_size`` by N (same global batch, same lr) or
scale ``lr`` linearly with the global batch (Goyal et al. 2017), with a few warm-up epochs.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet.errors import ConfigError

SCHEDULES = ("plateau", "step", "cosine", "onecycle", "constant")
AMP_MODES = ("auto", "bf16", "none")
NORM_MODES = ("image", "channel")


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
    val_split: str = "val"
    val_fraction: float = 0.05  # held out from train when the dataset has no validation split
    # optimisation (paper: SGD, momentum 0.9, weight decay 5e-4, batch 128, lr 0.01)
    epochs: int = 90
    batch_size: int = 128  # per process; global batch = batch_size x world size
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_bias: bool = False  # weight decay on biases and normalisation parameters too
    nesterov: bool = False
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
        """Check value ranges and choices (types are checked by :func:`from_dict`)."""

        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config key {key!r}: {msg} (got {getattr(self, key)!r})")

        need(self.schedule in SCHEDULES, "schedule", f"expected one of {SCHEDULES}")
        need(self.amp in AMP_MODES, "amp", f"expected one of {AMP_MODES}")
        need(self.norm_mode in NORM_MODES, "norm_mode", f"expected one of {NORM_MODES}")
        need(self.epochs >= 1, "epochs", "must be at least 1")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(self.lr > 0, "lr", "must be positive")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        need(0 < self.plateau_factor < 1, "plateau_factor", "must be in (0, 1)")
        need(self.log_every >= 1, "log_every", "must be at least 1")
        need(self.num_workers >= 0, "num_workers", "must be >= 0")
        need(self.crop is None or self.crop >= 8, "crop", "must be at least 8")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be at least 1")
        need(self.split_devices is None or len(self.split_devices) == 2, "split_devices", "needs two devices")
        return self


# --------------------------------------------------------------------------- presets
# Each preset is a set of overrides on the dataclass defaults. Keep one entry per preset.

PRESETS: dict[str, dict[str, Any]] = {
    # The paper, Section 5: the defaults above, spelt out.
    "imagenet-paper": {
        "model": "alexnet",
        "epochs": 90,
        "batch_size": 128,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "plateau",
        "norm_mode": "image",
        "lighting": 0.1,
        "crop": 224,
    },
    # CIFAR-10 (32x32, 10 classes) with the small AlexNet. Tuned separately: keep it self-contained.
    # Tuned with bench/cifar10.py (see bench/README.md): width 0.5 is ~3x faster per image than
    # 1.0 on a CPU, so more epochs fit a 15-minute budget (about 30 on two quiet cores with
    # bf16); one-cycle + nesterov + label smoothing converge fastest; BN makes lr 0.1 at batch
    # 256 stable. bench/cifar10.py trains on reflect-padded 40 px images with crop 32.
    "cifar10": {
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
    if name not in PRESETS:
        raise ConfigError(f"config key 'preset': unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return from_dict({**PRESETS[name], "preset": name})


# --------------------------------------------------------------------------- type checking

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked (and losslessly converted, int -> float) against annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {key!r}: expected {_type_name(tp)}, got {value!r}")
    bad = ConfigError(f"config key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
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
            if not isinstance(k, str) or not isinstance(v, str | int | float | bool | type(None)):
                raise ConfigError(f"config key {key}.{k}: expected a plain value, got {v!r}")
        return dict(value)
    raise bad  # pragma: no cover - every annotation above is handled


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the paper's defaults) updated with ``values``, every key checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a table of keys, got {type(values).__name__}")
    unknown = sorted(k for k in values if k not in _FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(_FIELDS)}"
        )
    out = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        setattr(out, key, _coerce(key, value, _HINTS[key]))
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    """The key/value table of a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file, unchecked.

    A ``[train]`` table, if present, is used (so one file can hold several sections).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: expected .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table of keys at the top level")
    if isinstance(data.get("train"), dict) and len(data) == 1:
        data = data["train"]
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is read as a YAML scalar (1e-3, true, [a, b])."""
    import yaml

    key, sep, raw = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve(
    preset_name: str | None = None,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    default_preset: str | None = None,
) -> TrainConfig:
    """Defaults < preset (``preset_name``, else the file's ``preset``, else ``default_preset``)
    < file < ``overrides``."""
    file_values = load_file(file) if file is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    name = preset_name or overrides.pop("preset", None) or file_values.get("preset") or default_preset
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"config key 'preset': expected str, got {name!r}")
    cfg = preset(name) if name else TrainConfig()
    cfg = from_dict({k: v for k, v in file_values.items() if k != "preset"}, cfg)
    cfg = from_dict(overrides, cfg)
    cfg.preset = name
    return cfg.validate()
