"""Shared fixtures for the evaluation / analysis / export tests: a tiny dataset and a model
trained on it inside the test session (never a stored artefact), plus a torchvision-style
weights file. Imported by the test_analysis*, test_evaluation and test_export modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_model
from alexnet.data.synth import generate
from alexnet.models import create_model
from alexnet.training.config import from_dict, preset
from alexnet.training.trainer import train

NUM_CLASSES = 4
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 4
SIZE = 32


@dataclass
class TinyRun:
    data: Path  # dataset root with train/ and val/ class folders
    run_dir: Path
    checkpoint: Path  # checkpoints/best.pt
    last: Path  # checkpoints/last.pt


def make_tiny_run(root: Path, epochs: int = 2) -> TinyRun:
    """Generate 4 classes x (12 train + 4 val) 32 px images and train alexnet_small for a few steps."""
    data = generate(root / "data", num_classes=NUM_CLASSES, train_per_class=TRAIN_PER_CLASS,
                    val_per_class=VAL_PER_CLASS, size=SIZE, workers=1)
    overrides = {
        "data": str(data),
        "out": str(root / "run"),
        "epochs": epochs,
        "batch_size": 16,
        "model_options": {"width": 0.25, "norm": "bn", "fc_dim": 64},
        "tensorboard": False,
        "progress": False,
        "num_workers": 0,
        "device": "cpu",
    }
    result = train(from_dict(overrides, preset("demo")).validate())
    run_dir = Path(result.run_dir)
    return TinyRun(data, run_dir, run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt")


def test_tiny_run_is_usable(tiny_run: TinyRun) -> None:
    """The fixture everything else builds on: a loadable checkpoint and a metrics log."""
    model, meta = load_model(tiny_run.checkpoint)
    assert meta.num_classes == NUM_CLASSES and meta.model == "alexnet_small"
    assert (tiny_run.run_dir / "metrics.jsonl").stat().st_size > 0
    assert model(torch.zeros(1, 3, meta.input_size, meta.input_size)).shape == (1, NUM_CLASSES)


# Test modules import these fixtures; a module-level cache makes each one a single object per
# session even though every importing module registers its own copy of the fixture.
_CACHE: dict[str, object] = {}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    if "run" not in _CACHE:
        _CACHE["run"] = make_tiny_run(tmp_path_factory.mktemp("tiny_run"))
    return _CACHE["run"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def torchvision_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file shaped exactly like torchvision's ``alexnet`` weights: a bare state dict
    with torchvision's keys (made from ``alexnet_owt``, whose keys are torchvision's)."""
    if "tv" not in _CACHE:
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp("tv") / "alexnet-owt-7be5be79.pth"
        torch.save(create_model("alexnet_owt").state_dict(), path)
        _CACHE["tv"] = path
    return _CACHE["tv"]  # type: ignore[return-value]
