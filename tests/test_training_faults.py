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
def baseline_run(data, tmp_path_factory) -> Path:
    """A run that is never interrupted."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    proc = run_cli(train_args(data, out, "--epochs", EPOCHS))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 72
    return out


@pytest.fixture(scope="module")
def baseline(baseline_run) -> dict[str, torch.Tensor]:
    """The weights of a run that is never interrupted."""
    return weights(baseline_run)


def epoch_figures(run: Path) -> list[dict]:
    """The per-epoch lines of metrics.jsonl without the wall-clock fields."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in lines if r["kind"] == "epoch"]


def test_sigkill_mid_epoch_then_resume_is_exact(data, baseline, baseline_run, tmp_path):
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
    # The interrupted epoch's figures count the steps before the kill too.
    assert epoch_figures(out) == epoch_figures(baseline_run)


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


def test_stop_at_max_steps_mid_epoch_then_resume_keeps_the_epoch_figures(data, baseline_run, tmp_path):
    """A run that ends mid-epoch by its own limit (not a signal) saves that epoch's running
    sums too: resumed to the end, its epoch lines are the uninterrupted run's."""
    out = tmp_path / "run"
    first = run_cli(train_args(data, out, "--epochs", EPOCHS, "--checkpoint-every", "5", "--max-steps", "29"))
    assert first.returncode == 0, first.stderr
    assert load_checkpoint(out / "checkpoints" / "last.pt")["train_state"]["batch_in_epoch"] == 29 - 24
    resumed = run_cli(train_args(data, out, "--epochs", EPOCHS, "--checkpoint-every", "5", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    full = [r for r in epoch_figures(out) if not r["partial"]]
    assert full == epoch_figures(baseline_run)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _torchrun(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *extra, "-m", "alexnet",
        *train_args(data, out, "--epochs", "4", "--batch-size", "4", "--checkpoint-every", "3", "--log-every", "3"),
    ]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the workers")
def test_torchrun_restarts_a_killed_worker_from_the_last_checkpoint(data, tmp_path, figure):
    """Rank 1 is SIGKILLed mid-run; torchrun's one allowed restart resumes both workers from
    ``last.pt``, and the run ends with the weights of a 2-worker run that was never killed
    (each rank's random streams are in the checkpoint)."""
    out, log = tmp_path / "run", tmp_path / "torchrun.log"
    last = out / "checkpoints" / "last.pt"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads while the workers run
        proc = subprocess.Popen(
            # One restart for the kill; a second is allowed only for torch's rare teardown abort
            # after the run is done ("terminate called without an active exception", under load),
            # and the assertions below check that it came only then.
            _torchrun(data, out, "--max-restarts", "2", "--monitor-interval", "0.2"),
            env=cli_env(), stdout=sink, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(last.exists, proc, timeout=120)
            # kill first, read after: the rest of this tiny run takes well under a second, less
            # than reading a checkpoint on a loaded machine
            workers = [c for c in _children(proc.pid) if "alexnet" in Path(f"/proc/{c}/cmdline").read_text()]
            assert len(workers) == 2, workers
            os.kill(workers[1], signal.SIGKILL)  # rank 1 dies mid-run
            killed_at = load_checkpoint(last)["train_state"]["step"]  # rank 0 cannot save alone after it
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "(restart 1)" in text, text[-3000:]
    before_second, _, _ = text.partition("(restart 2)")
    if "(restart 2)" in text:  # only torch's teardown abort, after the run was complete
        assert "completed after 4 of 4 epochs" in before_second, text[-3000:]
    assert before_second.count("resumed from") == 1  # the kill cost exactly one resume
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert summary["step"] == 4 * (96 // 8) and summary["epochs"] == 4
    ck = load_checkpoint(last)
    assert ck["train_state"]["step"] == summary["step"] > killed_at
    assert len(ck["train_state"]["ranks"]) == 2

    clean = tmp_path / "uninterrupted"
    # --max-restarts 1 for the reference too: a worker torch's teardown aborts after the run is
    # done (rarely, under load) is restarted, finds the run finished and exits 0.
    ref = subprocess.run(_torchrun(data, clean, "--max-restarts", "1"), env=cli_env(), capture_output=True,
                         text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr[-3000:]
    final, expected = weights(out), weights(clean)
    identical = sum(torch.equal(final[k], expected[k]) for k in expected)
    figure("workers SIGKILLed under torchrun", 1)
    figure("restarts used (of --max-restarts 2; the kill needs 1)", max(map(int, re.findall(r"\(restart (\d+)\)", text))))
    figure("step of the last checkpoint when the worker was killed", killed_at)
    figure("tensors bit-identical to the uninterrupted 2-worker run", f"{identical}/{len(expected)}")
    assert identical == len(expected), "recovered weights differ from uninterrupted"
