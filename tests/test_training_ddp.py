"""Data-parallel training and device options: torchrun with 2 Gloo processes equals one
process with the same global batch; the paper's two-device split from the command line;
the preset a dataset calls for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import Blobs, cli_env, tiny_config, train_args, weights, write_folder_dataset

from alexnet.cli import build_parser
from alexnet.cli.train import config_from_args
from alexnet.training import train


def _no_randomness(*extra: str) -> list[str]:
    """Dropout, augmentation and batch norm are per-process by nature; switch them off so the
    comparison isolates what DDP must get right: gradients averaged over the global batch.
    fp32 (no bf16 autocast), so that the two ways of summing agree to float tolerance."""
    return [
        "--amp", "none",
        "--set", "model_options={width: 0.125, fc_dim: 128, norm: lrn, dropout: 0.0}",
        "--set", "lighting=0", "--set", "flip=false", "--set", "random_crop=false",
        "--crop", "16", "--epochs", "2", "--lr", "0.02", "--schedule", "cosine", *extra,
    ]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    data = write_folder_dataset(tmp_path / "data")
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        [sys.executable, "-m", "alexnet", *train_args(data, one, *_no_randomness("--batch-size", "16"))],
        env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alexnet",
         *train_args(data, two, *_no_randomness("--batch-size", "8"))],
        env=cli_env(), capture_output=True, text=True, timeout=180,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert (s1["world_size"], s2["world_size"]) == (1, 2) and s1["step"] == s2["step"] == 2 * (96 // 16)
    cfg2 = json.loads((two / "config.json").read_text())
    assert cfg2["run"]["global_batch"] == 16 and cfg2["batch_size"] == 8
    a, b = weights(one), weights(two)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")
    assert s2["val_top1"] == pytest.approx(s1["val_top1"], abs=1e-6)


def test_split_devices_from_the_command_line(tmp_path):
    """``--split-devices cpu,cpu`` trains the paper's model-parallel form and stores it grouped."""
    from alexnet.models import AlexNetSplit
    from alexnet.training.trainer import Trainer

    args = build_parser().parse_args(
        ["train", "--split-devices", "cpu,cpu", "--preset", "imagenet-paper", "--out", str(tmp_path / "run")]
    )
    cfg = config_from_args(args)
    assert cfg.split_devices == ["cpu", "cpu"] and cfg.model == "alexnet"
    cfg.num_workers, cfg.batch_size, cfg.progress = 0, 2, False
    trainer = Trainer(cfg, train_set=Blobs(4, classes=2, size=224), val_set=None)
    assert isinstance(trainer.model, AlexNetSplit)
    state = trainer.model_state()
    assert state["conv2.weight"].shape == (256, 48, 5, 5) and "a.conv1.weight" not in state


@pytest.mark.slow
def test_split_devices_trains_end_to_end(tmp_path):
    cfg = tiny_config(tmp_path / "run", model="alexnet", model_options={}, crop=224, split_devices=["cpu", "cpu"],
                      batch_size=2, epochs=1, max_steps=2, lr=0.001)
    result = train(cfg, train_set=Blobs(4, classes=2, size=224), val_set=Blobs(2, classes=2, size=224))
    assert result.step == 2
    from alexnet.checkpoint import load_model

    model, meta = load_model(tmp_path / "run" / "model.safetensors")
    assert meta.model == "alexnet" and type(model).__name__ == "AlexNet"


def test_dataset_picks_the_preset(tmp_path):
    """CIFAR-like 32 px folders train with the cifar10 preset unless told otherwise."""
    cifar = write_folder_dataset(tmp_path / "cifar", classes=10, train=2, val=1, size=32)
    args = build_parser().parse_args(["train", "--data", str(cifar), "--epochs", "1"])
    cfg = config_from_args(args)
    assert cfg.preset == "cifar10" and cfg.model == "alexnet_fast" and cfg.epochs == 1
    big = write_folder_dataset(tmp_path / "big", classes=2, train=1, val=1, size=80)
    assert config_from_args(build_parser().parse_args(["train", "--data", str(big)])).preset == "imagenet-paper"
    assert config_from_args(build_parser().parse_args(["train"])).preset == "demo"  # the embedded data
    explicit = build_parser().parse_args(["train", "--data", str(cifar), "--preset", "demo"])
    assert config_from_args(explicit).preset == "demo"


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10").is_dir(),
                    reason="real CIFAR-10 folder not available")
def test_real_cifar10_folder_picks_cifar10_preset():
    from alexnet.cli.train import auto_preset

    assert auto_preset(str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10")) == "cifar10"
