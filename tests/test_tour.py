"""The guided tour (examples/tour.py) runs as a user would run it, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOUR = Path(__file__).resolve().parents[1] / "examples" / "tour.py"


def test_the_tour_runs_end_to_end(tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("tour", TOUR)
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    found = tour.main(["--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert found["paper_params"] == 60_965_224
    assert found["model"] == "alexnet_owt" and found["fc7_dim"] == 4096
    assert found["conv1_shape"] == (1, 64, 55, 55)
    assert len(found["top5"]) == 5 and len(set(found["top5"])) == 5
    assert found["val_top1"] > 1 / 3  # learned something on 3 shapes: above chance
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in epochs if e["kind"] == "epoch"]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1  # the loss came down
    assert "== 6." in out and (tmp_path / "run" / "model.safetensors").is_file()
