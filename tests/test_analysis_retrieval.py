"""fc7 retrieval: exact search equals brute force, binary codes (ITQ, packed bits, XOR +
popcount) agree with a naive Hamming distance and keep the exact neighbours, the index
survives a save/load and refuses damaged files, and `alexnet neighbors` builds then reuses it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_analysis_support as support
import torch
from test_analysis_support import NUM_CLASSES, TRAIN_PER_CLASS, TinyRun

from alexnet.analysis.retrieval import (
    FEATURES_FILE,
    INDEX_FILE,
    ITQ,
    FeatureIndex,
    IndexFormatError,
    _popcount64,
    hamming,
    hamming_matmul,
    pack_bits,
    recall_at_k,
    unpack_signs,
)
from alexnet.checkpoint import load_model, save_checkpoint
from alexnet.cli import main
from alexnet.data import open_dataset

tiny_run = support.tiny_run


def _clustered(n: int = 1000, d: int = 64, clusters: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative (ReLU-like) features in clusters, like fc7 of a trained net."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 3
    labels = torch.randint(0, clusters, (n,), generator=g)
    return (centres[labels] + torch.randn(n, d, generator=g)).relu(), labels


def _index(features: torch.Tensor, labels: torch.Tensor, bits: int = 32) -> FeatureIndex:
    index = FeatureIndex(features, labels, [f"#{i}" for i in range(len(features))],
                         [str(c) for c in range(int(labels.max()) + 1)], [str(c) for c in range(int(labels.max()) + 1)])
    index.fit_codes(bits, iterations=20)
    return index


def test_popcount_and_hamming_match_python() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-(2**63), 2**63 - 1, (200,), dtype=torch.int64, generator=g)
    x[:3] = torch.tensor([0, -1, -(2**63)])
    want = [bin(v & (2**64 - 1)).count("1") for v in x.tolist()]
    assert _popcount64(x).tolist() == want

    bits = torch.rand(7, 130, generator=g) > 0.5  # 130 bits: 3 words, the last one partial
    codes = pack_bits(bits)
    assert codes.shape == (7, 3)
    naive = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    assert torch.equal(hamming(codes, codes, max_elements=42), naive.int())
    signs = unpack_signs(codes, 130)
    assert torch.equal(signs > 0, bits)
    assert torch.equal(hamming_matmul(signs, signs), naive.int())


def test_exact_search_equals_brute_force() -> None:
    feats, labels = _clustered()
    index = _index(feats, labels)
    q = feats[:20] + 0.01
    found = index.search(q, k=6)
    brute = torch.cdist(q.double(), feats.double()).topk(6, largest=False)
    assert torch.equal(found.indices, brute.indices)
    # float32 |q|^2 - 2 q.x + |x|^2: absolute error grows with the norms
    torch.testing.assert_close(found.distances.double(), brute.values, atol=1e-2, rtol=1e-3)


def test_binary_codes_recall_and_rerank() -> None:
    feats, labels = _clustered()
    index = _index(feats, labels, bits=32)
    q = feats[:100]
    exact = index.search(q, k=6, exclude_self=True)
    coarse = index.search(q, k=6, binary=True, exclude_self=True)
    fine = index.search(q, k=6, binary=True, rerank=10, exclude_self=True)
    popcount = index.search(q, k=6, binary=True, exclude_self=True, method="popcount")
    assert torch.equal(popcount.distances, coarse.distances)  # same Hamming distances either way
    r_coarse, r_fine = recall_at_k(coarse.indices, exact.indices), recall_at_k(fine.indices, exact.indices)
    assert r_fine >= r_coarse and r_fine > 0.9
    # Codes beat chance by far: the neighbours by Hamming distance share the query's cluster.
    assert (labels[coarse.indices] == labels[:100, None]).float().mean() > 0.9
    assert not (exact.indices == torch.arange(100)[:, None]).any()  # the query itself is excluded


def test_itq_rotation_reduces_quantisation_error() -> None:
    feats, _ = _clustered(d=32)
    fitted = ITQ.fit(feats, bits=16, iterations=20)
    pca_only = ITQ.fit(feats, bits=16, iterations=0)

    def loss(itq: ITQ) -> float:
        v = (feats - itq.mean) @ itq.projection
        return float(((v.sign() - v) ** 2).sum())

    assert loss(fitted) < loss(pca_only)


def test_save_load_roundtrip_and_damage(tmp_path: Path) -> None:
    feats, labels = _clustered(n=300)
    index = _index(feats, labels)
    index.save(tmp_path / "ix")
    again = FeatureIndex.load(tmp_path / "ix")
    assert again.paths == index.paths and torch.equal(again.codes, index.codes)
    q = feats[:5]
    assert torch.equal(again.search(q, 6).indices, index.search(q, 6).indices)
    assert torch.equal(again.search(q, 6, binary=True).indices, index.search(q, 6, binary=True).indices)

    with pytest.raises(IndexFormatError, match="missing"):
        FeatureIndex.load(tmp_path / "nothing")
    (tmp_path / "ix" / FEATURES_FILE).write_bytes(b"\x00" * 20)
    with pytest.raises(IndexFormatError, match="unreadable"):
        FeatureIndex.load(tmp_path / "ix")
    index.save(tmp_path / "ix")
    doc = json.loads((tmp_path / "ix" / INDEX_FILE).read_text())
    doc["paths"] = doc["paths"][:-1]
    (tmp_path / "ix" / INDEX_FILE).write_text(json.dumps(doc))
    with pytest.raises(IndexFormatError, match="disagree"):
        FeatureIndex.load(tmp_path / "ix")


def test_build_on_a_trained_model(tiny_run: TinyRun) -> None:
    model, meta = load_model(tiny_run.checkpoint)
    train = open_dataset(tiny_run.data, "train")
    index = FeatureIndex.build(model, meta, train, batch_size=10, bits=32)
    assert len(index) == NUM_CLASSES * TRAIN_PER_CLASS and index.features.shape[1] == 16  # fc_dim 64 x width 0.25
    assert index.paths[0] == train.path_of(0) and index.labels.tolist() == train.targets
    small = FeatureIndex.build(model, meta, train, limit=8, bits=0)
    assert small.codes is None and len(small) == 8
    assert set(small.labels.tolist()) == set(range(NUM_CLASSES))  # evenly spaced: every class
    assert [small.paths[i] == train.path_of(p) for i, p in enumerate(small.positions.tolist())] == [True] * 8


def test_cli_neighbors_builds_then_reuses_the_index(tiny_run: TinyRun, tmp_path: Path, capsys) -> None:
    query = str(next((tiny_run.data / "val").glob("*/*.jpg")))
    ix = tmp_path / "index"
    ck = str(tiny_run.checkpoint)
    loose = tmp_path / "loose.pt"  # a checkpoint outside any run: no dataset to default to
    loose.write_bytes(tiny_run.checkpoint.read_bytes())
    assert main(["neighbors", "--checkpoint", str(loose), "--index", str(ix), "--query", query]) == 2  # no --data
    assert "--data" in capsys.readouterr().err
    assert main(["neighbors", "--checkpoint", ck, "--index", str(ix), "--query", query, "--data",
                 str(tiny_run.data), "--json", "--workers", "0"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert len(first[0]["neighbours"]) == 6
    stamp = (ix / FEATURES_FILE).stat().st_mtime_ns
    assert main(["neighbors", "--checkpoint", ck, "--index", str(ix), "--query", query, "-k", "3",
                 "--binary", "--rerank", "5", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (ix / FEATURES_FILE).stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert len(second[0]["neighbours"]) == 3
    assert main(["neighbors", "--checkpoint", ck, "--index", str(ix), "--query", str(tmp_path / "no.jpg")]) == 1
    capsys.readouterr()
    # The run's own dataset is the default (issue 18): a fresh index from the run directory alone.
    assert main(["neighbors", "--checkpoint", str(tiny_run.run_dir), "--index",
                 str(tmp_path / "index2"), "--query", query, "--json", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["neighbours"] == first[0]["neighbours"]
    # Hamming distances are whole numbers of bits, printed as such.
    assert main(["neighbors", "--checkpoint", ck, "--index", str(ix), "--query", query, "--binary"]) == 0
    rows = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert rows and all(r.isdigit() for r in rows)

    # Other weights (same architecture) would give other features: the index is refused.
    model, meta = load_model(tiny_run.checkpoint)
    state = model.state_dict()
    state["fc7.weight"] = state["fc7.weight"] + 0.01
    other = save_checkpoint(tmp_path / "other.pt", state, meta)
    assert main(["neighbors", "--checkpoint", str(other), "--index", str(ix), "--query", query]) == 2
    assert "other weights" in capsys.readouterr().err


def test_bench_retrieval_runs_at_tiny_size(capsys) -> None:
    """bench/retrieval.py end to end on small synthetic features, so the script cannot rot."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import retrieval as bench

    rows = bench.main(["--n", "600", "--dim", "96", "--bits", "32", "--queries", "8", "--repeats", "1",
                       "--clusters", "6", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "hardware:" in out and "speed-up" in out and len(rows) == 4
    assert rows["exact (fp32 matmul)"]["recall"] == 1.0
    assert all(0.0 <= r["recall"] <= 1.0 and r["seconds"] > 0 for r in rows.values())
