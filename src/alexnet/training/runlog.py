"""The run log: ``RUN/metrics.jsonl`` (one JSON record a line) and TensorBoard, rank 0 only."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from alexnet.runs import RunPaths

logger = logging.getLogger(__name__)


class RunLog:
    """metrics.jsonl + TensorBoard, written by rank 0 only. A failing write (full disk) is
    reported once and then skipped: metrics must never kill a run that can still checkpoint."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None) -> None:
        self.enabled, self.path, self.tb = enabled, RunPaths(run_dir).metrics, None
        self._warned = False
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            # Drop what the interrupted run logged after its last checkpoint: those steps are redone.
            kept = []
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the kill
                if isinstance(rec, dict) and rec.get("step", 0) <= resume_step:
                    kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(RunPaths(run_dir).tensorboard), purge_step=resume_step)
            except Exception as exc:  # tensorboard missing or broken: metrics.jsonl still works
                logger.warning(f"warning: TensorBoard logging disabled ({exc})")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None:
                prefix = "train" if record["kind"] == "step" else "epoch"
                for key, value in record.items():
                    if key not in ("kind", "epoch", "step", "time") and isinstance(value, int | float):
                        self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])
        except OSError as exc:
            if not self._warned:
                logger.warning(f"warning: could not write metrics ({exc}); continuing without them")
                self._warned = True

    def close(self) -> None:
        if self.tb is not None:
            with contextlib.suppress(Exception):
                self.tb.close()
