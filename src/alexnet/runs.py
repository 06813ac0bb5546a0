"""A training run's directory: where each of its files lives, and how to read what it ran on.

::

    RUN/config.json            resolved configuration (incl. "data": the dataset path)
    RUN/checkpoints/last.pt    latest (atomic); best.pt: best validation top-1
    RUN/model.safetensors      final weights + meta
    RUN/metrics.jsonl          one JSON object per step / epoch
    RUN/tb/                    TensorBoard event files
    RUN/summary.json           final figures
    RUN/report/                report.html + PNG figures

Training writes these; the report, the explorer and the command line read them, all
through :class:`RunPaths`, so a file is named in exactly one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet.errors import CheckpointError


@dataclass(frozen=True)
class RunPaths:
    """The files of the run directory ``root``."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @classmethod
    def of(cls, path: str | os.PathLike) -> RunPaths | None:
        """The run that ``path`` is (a run directory) or belongs to (a file in it or in its
        ``checkpoints/``); None when neither holds a run's ``config.json`` or checkpoints."""
        p = Path(path)
        for candidate in (p, p.parent, p.parent.parent) if p.is_file() else (p,):
            run = cls(candidate)
            if run.is_run():
                return run
        return None

    def is_run(self) -> bool:
        """Whether ``root`` looks like a run directory (a config or a checkpoint in place)."""
        return self.config.is_file() or self.last.is_file() or self.best.is_file() or self.weights.is_file()

    def model_file(self) -> Path:
        """The run's best checkpoint, else its last, else its safetensors export."""
        for candidate in (self.best, self.last, self.weights):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{self.root}: no checkpoints/best.pt, checkpoints/last.pt or model.safetensors")

    def read_config(self) -> dict[str, Any] | None:
        """The run's resolved configuration, or None if missing or unreadable."""
        try:
            config = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return config if isinstance(config, dict) else None


def model_path(path: str | os.PathLike) -> Path:
    """A model file given as itself or as a run directory (its best checkpoint, else its last,
    else its safetensors export): every ``--checkpoint`` option accepts both."""
    p = Path(path)
    if p.is_dir():
        run = RunPaths(p)
        if not run.is_run():
            raise CheckpointError(f"{p} is a directory but not a training run (no checkpoints/ or model.safetensors)")
        return run.model_file()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def run_data(path: str | os.PathLike) -> Path | None:
    """The dataset the run that ``path`` is (or belongs to) was trained on, from its
    ``config.json``: ``"data": null`` means the embedded dataset (if it has been generated).
    None when there is no run, no readable config, or its dataset is gone."""
    from alexnet.data.dataset import resolve_data

    run = RunPaths.of(Path(path).resolve())
    if run is None:
        return None
    config = run.read_config()
    if config is None or "data" not in config:
        return None
    data = config["data"]
    if data is None:
        return resolve_data(None, create=False)
    if isinstance(data, str):
        for candidate in (Path(data), run.root / data):
            if candidate.is_dir():
                return candidate
    return None
