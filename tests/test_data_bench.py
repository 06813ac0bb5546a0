"""bench/data_pipeline.py runs end to end at toy sizes (so it cannot rot)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parents[1] / "bench" / "data_pipeline.py"


def test_bench_runs_and_prints_ratio(tmp_path, capsys):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(src / f"{i}.JPEG")
    spec = importlib.util.spec_from_file_location("data_pipeline", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--source", str(src), "--items", "40", "--classes", "4", "--batch-size", "8", "--batches", "2", "--rounds", "2",
            "--size", "32", "--crop", "28", "--workers", "1", "--formats", "raw,jpeg", "--work-dir", str(tmp_path)]
    results = bench.main(args)
    out = capsys.readouterr().out
    assert "hardware:" in out and "ratio:" in out
    assert results["classic"] > 0 and results["raw"] > 0 and results["jpeg"] > 0
    assert results["ratio"] == max(results["raw"], results["jpeg"]) / results["classic"]
