"""Training survives being killed: SIGKILL mid-epoch + --resume, SIGTERM, torchrun restarts.

Every run here is a real ``python -m alexnet train`` process on a small PNG folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training import cli_env, train_args, weights, write_folder_dataset

from alexnet.checkpoint import load_checkpoint

pytestmark = [pytest.mark.reliability, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

EPOCHS = "6"  # 96 images / batch 8 = 12 steps per epoch


def run_cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alexnet", *args], env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def start_cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "alexnet", *args], env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(pred, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"training ended before the fault was injected: {proc.communicate()}"
        assert time.monotonic() < end, "timed out waiting for training to reach the fault point"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of a run that is never interrupted."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    proc = run_cli(train_args(data, out, "--epochs", EPOCHS))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 72
    return weights(out)


def test_sigkill_mid_epoch_then_resume_is_exact(data, baseline, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    proc = start_cli(train_args(data, out, "--epochs", EPOCHS, "--checkpoint-every", "5"))
    wait_for(last.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ts = load_checkpoint(last)["train_state"]  # the file under the real name is always whole
    assert 0 < ts["batch_in_epoch"] < ts["steps_per_epoch"], "the checkpoint should be mid-epoch"
    assert not (out / "model.safetensors").exists()
    resumed = run_cli(train_args(data, out, "--epochs", EPOCHS, "--checkpoint-every", "5", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"step {ts['step']}" in resumed.stdout and "resumed from" in resumed.stdout
    final = weights(out)
    assert all(torch.equal(final[k], baseline[k]) for k in baseline), "resumed weights differ from uninterrupted"


def test_sigterm_saves_and_exits_zero_then_resumes_exactly(data, baseline, tmp_path):
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"
    proc = start_cli(train_args(data, out, "--epochs", EPOCHS, "--log-every", "1"))
    wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["step"] < 72
    assert load_checkpoint(out / "checkpoints" / "last.pt")["train_state"]["step"] == summary["step"]
    resumed = run_cli(train_args(data, out, "--epochs", EPOCHS, "--log-every", "1", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    final = weights(out)
    assert all(torch.equal(final[k], baseline[k]) for k in baseline)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


# slow: gloo's re-connection in torchrun's new round has been seen to hang on a loaded 2-core
# machine (2 of 6 runs), which would make CI flaky; run it with `pytest -m slow` / make test-all.
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the workers")
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        # More than one restart allowed: on a loaded machine gloo's re-connection in the new
        # round can itself time out, and torchrun then retries; what is tested is the recovery.
        "--max-restarts", "3", "--monitor-interval", "0.2", "-m", "alexnet",
        *train_args(data, out, "--epochs", "4", "--batch-size", "4", "--checkpoint-every", "3", "--log-every", "3"),
    ]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(last.exists, proc, timeout=120)
        killed_at = load_checkpoint(last)["train_state"]["step"]
        workers = [c for c in _children(proc.pid) if "alexnet" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(workers) == 2, workers
        os.kill(workers[1], signal.SIGKILL)  # rank 1 dies mid-run
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert re.search(r"\(restart [1-3]\)", stdout), stdout[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["step"] == 4 * (96 // 8) and summary["epochs"] == 4
    ck = load_checkpoint(last)
    assert ck["train_state"]["step"] == summary["step"] > killed_at
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
