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


def _salt(folder: Path) -> dict[str, str]:
    """Every kind of bad file next to the good ones; returns name -> expected fate."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    (folder / "zero.JPEG").write_bytes(b"")
    (folder / "truncated.JPEG").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "html.JPEG").write_text("<html><body>404 not found</body></html>")
    (folder / "garbage.JPEG").write_bytes(rng.integers(0, 255, 3000, dtype=np.uint8).tobytes())
    (folder / "bomb.png").write_bytes(bomb)
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.JPEG", format="JPEG")
    Image.fromarray(pixels).convert("L").save(folder / "grey.JPEG", format="JPEG")
    Image.fromarray(pixels).convert("P").save(folder / "palette.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(folder / "sixteen.png")
    return {"zero.JPEG": "skip", "truncated.JPEG": "skip", "html.JPEG": "skip", "garbage.JPEG": "skip",
            "bomb.png": "skip", "cmyk.JPEG": "decode", "grey.JPEG": "decode", "palette.png": "decode",
            "sixteen.png": "decode"}


def test_training_through_a_folder_salted_with_bad_files(tmp_path: Path, figure) -> None:
    """Training on a folder with every kind of bad file runs to the end; the unreadable ones are
    counted and listed in summary.json, the decodable odd formats are used."""
    import json

    import numpy as np
    from PIL import Image

    from alexnet.training import from_dict, train

    root = tmp_path / "salted"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = np.clip(rng.normal(colour, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.JPEG", format="JPEG", quality=90)
    fates = _salt(root / "train" / "class0")
    config = from_dict({
        "out": str(tmp_path / "run"), "data": str(root), "model": "alexnet_small",
        "model_options": {"width": 0.125, "fc_dim": 64}, "crop": 16, "epochs": 2, "batch_size": 8,
        # 2 worker processes: files that fail while decoding there are still listed
        "lr": 0.05, "schedule": "cosine", "num_workers": 2, "progress": False, "tensorboard": False,
    })
    result = train(config)
    assert result.status == "completed" and result.epochs == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    listed = {Path(b["path"]).name: b["reason"] for b in summary["bad_files"]}
    expected_skips = {name for name, fate in fates.items() if fate == "skip"}
    assert set(listed) == expected_skips, listed
    figure("bad files salted into the training folder", len(fates))
    figure("unreadable files skipped and listed in summary.json", len(listed))
    figure("odd but valid formats decoded and used (CMYK, grey, palette, 16-bit)", len(fates) - len(listed))
    figure("training epochs completed of 2", result.epochs)
