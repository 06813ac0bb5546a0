"""Checkpoints: atomic writes, integrity, refusal of unsafe pickles, torchvision weights."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from alexnet import create_model
from alexnet.checkpoint import (
    CheckpointError,
    ModelMeta,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_safetensors,
)
from alexnet.data.stats import DatasetStats


def tiny_meta(num_classes: int = 3) -> ModelMeta:
    return ModelMeta(
        model="alexnet_small",
        num_classes=num_classes,
        classes=[f"c{i}" for i in range(num_classes)],
        class_names=[f"class {i}" for i in range(num_classes)],
        image_size=36,
        input_size=32,
        norm_mode="channel",
        stats=DatasetStats.imagenet_fallback(),
        options={"width": 0.125},
    )


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("alexnet_small", num_classes=3, width=0.125).eval()


def test_round_trip(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model.state_dict(), tiny_meta(), train_state={"epoch": 3})
    ck = load_checkpoint(path)
    assert ck["train_state"]["epoch"] == 3
    model, meta = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), tiny_model(x))
    assert meta.class_names[2] == "class 2"
    assert tuple(meta.eval_transform()(torch.zeros(1, 3, 36, 36, dtype=torch.uint8)).shape) == (1, 3, 32, 32)


def test_tampered_file_fails_integrity(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model.state_dict(), tiny_meta())
    payload = torch.load(path, weights_only=True)
    payload["model"]["fc8.bias"] += 1.0  # altered after writing, digest left as it was
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="integrity"):
        load_checkpoint(path)


@pytest.mark.reliability
def test_truncated_and_empty_files_are_refused(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model.state_dict(), tiny_meta())
    data = path.read_bytes()
    for cut in (0, 100, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_model(bad)


class _Evil:
    def __reduce__(self):  # runs os.system on unpickling with weights_only=False
        return (os.system, ("touch pwned",))


@pytest.mark.reliability
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "alexnet-checkpoint", "version": 1, "model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_model(raw)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.reliability
def test_crash_during_write_keeps_previous(tmp_path: Path, tiny_model: torch.nn.Module, monkeypatch) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model.state_dict(), tiny_meta(), train_state={"step": 1})

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, tiny_model.state_dict(), tiny_meta(), train_state={"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["train_state"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind


def test_torchvision_weights_load_into_owt(tmp_path: Path) -> None:
    tv = create_model("alexnet_owt").state_dict()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(tv, path)
    model, meta = load_model(path)
    assert meta.model == "alexnet_owt" and meta.num_classes == 1000
    assert torch.equal(model.state_dict()["classifier.6.bias"], tv["classifier.6.bias"])


def test_safetensors_round_trip(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    path = save_safetensors(tmp_path / "model.safetensors", tiny_model.state_dict(), tiny_meta())
    model, meta = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), tiny_model(x))
    assert meta.options == {"width": 0.125}


def test_wrong_weights_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="neither"):
        load_model(path)


def _evil_pickle(protocol: int) -> bytes:
    return pickle.dumps({"model": _Evil()}, protocol=protocol)


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"garbage", "not a checkpoint (unreadable archive)"),
        (bytes(range(256)) * 20, "not a checkpoint (unreadable archive)"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a checkpoint (unreadable archive)"),
        (pickle.dumps({"a": 1}, protocol=2), "not a checkpoint (unreadable archive)"),
        (b"PK\x03\x04 cut short", "truncated or corrupt"),
        (_evil_pickle(2), "possibly malicious code"),
        (_evil_pickle(4), "possibly malicious code"),
        (_evil_pickle(5), "possibly malicious code"),
    ],
    ids=["7-bytes", "random", "png", "plain-pickle", "cut-zip", "evil-p2", "evil-p4", "evil-p5"],
)
def test_a_bad_file_is_named_for_what_it_is(tmp_path: Path, content: bytes, said: str) -> None:
    """Garbage is 'not a checkpoint', a damaged archive is 'corrupt', and only a pickle that
    would import a callable is called possibly malicious (naming what it would call)."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert said in message
    assert ("malicious" in message) == (said == "possibly malicious code")
    if "malicious" in message:
        assert "system" in message  # names the callable it refused
    assert "Weights only load failed" not in message and "\n" not in message  # one line, ours


@pytest.mark.reliability
def test_a_truncated_real_checkpoint_is_corrupt(tmp_path: Path, tiny_model: torch.nn.Module) -> None:
    path = save_checkpoint(tmp_path / "ck.pt", tiny_model.state_dict(), tiny_meta())
    data = path.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(path)


def _crafted(meta_change: dict, stats_change: dict | None = None) -> tuple[dict, dict]:
    """A valid tiny model's metadata (as a file carries it) with some fields replaced."""
    meta = tiny_meta().to_dict()
    meta.update(meta_change)
    stats = dict(meta["stats"])
    stats.update(stats_change or {})
    meta["stats"] = stats
    return meta, tiny_model_state()


def tiny_model_state() -> dict[str, torch.Tensor]:
    return create_model("alexnet_small", num_classes=3, width=0.125).state_dict()


CRAFTED = {
    "unknown-model": ({"model": "resnet9000"}, None, "model"),
    "model-not-a-name": ({"model": ["alexnet"]}, None, "model"),
    "unknown-option": ({"options": {"fc_dim": 10**6}}, None, "options"),
    "huge-width": ({"options": {"width": 10_000.0}}, None, "parameters"),
    "option-a-table": ({"options": {"width": {"x": 1}}}, None, "options"),
    "options-a-list": ({"options": [1, 2]}, None, "options"),
    "classes-mismatch": ({"classes": ["a"]}, None, "classes"),
    "billion-classes": ({"num_classes": 10**9}, None, "num_classes"),
    "classes-not-names": ({"classes": [1, 2, 3]}, None, "classes"),
    "bool-size": ({"image_size": True}, None, "image_size"),
    "huge-image": ({"image_size": 10**7}, None, "image_size"),
    "crop-exceeds-image": ({"input_size": 64}, None, "input_size"),
    "norm-junk": ({"norm_mode": "magic"}, None, "norm_mode"),
    "stats-wrong-shape": ({}, {"mean": torch.zeros(4)}, "stats"),
    "stats-nan": ({}, {"std": torch.tensor([float("nan"), 1.0, 1.0])}, "stats"),
    "stats-not-a-tensor": ({}, {"eigvec": "junk"}, "statistics"),
    "mean-image-wrong-side": ({}, {"mean_image": torch.zeros(3, 17, 17)}, "stats"),
    "missing-field": ({"image_size": None}, None, "image_size"),
}


@pytest.mark.reliability
@pytest.mark.parametrize("kind", sorted(CRAFTED))
@pytest.mark.parametrize("container", ["checkpoint", "safetensors"])
def test_crafted_metadata_is_refused_before_building(tmp_path: Path, kind: str, container: str) -> None:
    """Metadata is validated in full (zoo name, options, types, sizes, statistics) before a
    model is built: a clear CheckpointError naming the field, never a traceback or a huge
    allocation. The digest is recomputed, as an attacker would."""
    from safetensors.torch import save

    from alexnet.checkpoint import SAFETENSORS_META_KEY, _digest

    change, stats_change, named = CRAFTED[kind]
    meta, state = _crafted(change, stats_change)
    path = tmp_path / ("model.pt" if container == "checkpoint" else "model.safetensors")
    if container == "checkpoint":
        payload = {"format": "alexnet-checkpoint", "version": 1, "meta": meta, "model": state}
        payload["sha256"] = _digest(payload)
        torch.save(payload, path)
    else:
        stats = {f"stats.{k}": v for k, v in meta.pop("stats").items() if isinstance(v, torch.Tensor)}
        tensors = {f"model.{k}": v for k, v in state.items()} | stats
        path.write_bytes(save(tensors, metadata={SAFETENSORS_META_KEY: json.dumps(meta)}))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert named in str(err.value)


def test_untampered_metadata_still_loads(tmp_path: Path) -> None:
    """The checks refuse only what is wrong: the same construction with nothing changed loads."""
    meta, state = _crafted({})
    payload = {"format": "alexnet-checkpoint", "version": 1, "meta": meta, "model": state}
    from alexnet.checkpoint import _digest

    payload["sha256"] = _digest(payload)
    torch.save(payload, tmp_path / "ok.pt")
    _, loaded = load_model(tmp_path / "ok.pt")
    assert loaded.describe().startswith("alexnet_small(width=0.125)")
