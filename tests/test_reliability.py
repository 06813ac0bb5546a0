"""Guarantees that span modules: checkpoints under real crashes, training through bad data."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet.checkpoint import load_checkpoint

pytestmark = pytest.mark.reliability

WRITER = r"""
import sys, torch
from alexnet import create_model
from alexnet.checkpoint import ModelMeta, save_checkpoint
from alexnet.data.stats import DatasetStats
path = sys.argv[1]
model = create_model("alexnet_small", num_classes=10)  # 7.7M parameters: ~31 MB per file
meta = ModelMeta("alexnet_small", 10, [str(i) for i in range(10)], [str(i) for i in range(10)],
                 32, 32, "channel", DatasetStats.imagenet_fallback())
i = 0
while True:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(i))
    save_checkpoint(path, model.state_dict(), meta, train_state={"i": i})
    print(i, flush=True)
    i += 1
"""


def test_sigkill_while_writing_checkpoints_always_leaves_a_valid_one(tmp_path: Path, figure) -> None:
    """A process writing checkpoints back to back is SIGKILLed at random moments; every time,
    the checkpoint under the real name loads, passes its digest, and is the last one reported
    written (or the one after it, if the kill came between rename and print)."""
    path = tmp_path / "last.pt"
    rng = random.Random(0)
    kills, valid, torn = 6, 0, 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # at least one checkpoint exists before the kill
        assert first.strip().isdigit()
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate()
        printed = [int(first)] + [int(x) for x in rest.split()]
        torn += len(list(tmp_path.glob(".last.pt.*.tmp")))  # the kill landed mid-write
        for leftover in tmp_path.glob(".last.pt.*.tmp"):
            leftover.unlink()
        ck = load_checkpoint(path)  # raises if torn or altered
        i = ck["train_state"]["i"]
        assert printed[-1] <= i <= printed[-1] + 1
        assert float(ck["model"]["fc8.bias"][0]) == float(i)  # payload matches its step
        valid += 1
    figure("SIGKILLs during checkpoint writes", kills)
    figure("kills that landed mid-write (temporary file left behind)", torn)
    figure("valid checkpoint after each kill", valid)
    figure("checkpoints lost", kills - valid)
