"""Retrieval speed and recall: exact fc7 search against ITQ binary codes.

The paper suggests compressing the 4096-d fc7 vectors to short binary codes for efficient
retrieval. This measures what that buys here: the time per query batch of exact Euclidean
search (one matmul over float32 features), of Hamming ranking over the codes computed two
ways (XOR + popcount on the packed 64-bit words; one matmul of +-1 codes), and of Hamming
ranking followed by an exact re-rank of the best R x k; recall@k of each against the exact
neighbours; and the memory of features versus codes.

Features come from, in order of preference:
  --index DIR                     an index written by `alexnet neighbors` (real fc7 features);
  --checkpoint CK --data DIR      a model run over a dataset (built here, --limit images);
  neither                         synthetic clustered non-negative 4096-d vectors (fc7-like).

    python bench/retrieval.py                                  # synthetic, 20k x 4096
    python bench/retrieval.py --n 1000000 --device cuda        # synthetic, GPU
    python bench/retrieval.py --checkpoint runs/demo/checkpoints/best.pt --data DATA
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import describe_hardware, resolve_device, synchronize

from alexnet.analysis.retrieval import FeatureIndex, recall_at_k


def synthetic(n: int, d: int, clusters: int, latent: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """fc7-like vectors: non-negative, in clusters (classes), each cluster spread along a
    low-dimensional manifold (``latent`` directions) plus a little isotropic noise, so that
    nearest neighbours are meaningful rather than ties among equidistant noisy points."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g)
    basis = torch.randn(latent, d, generator=g) / latent**0.5
    labels = torch.randint(0, clusters, (n,), generator=g)
    feats = torch.empty(n, d)
    for s in range(0, n, 65536):  # in chunks: the temporaries for 1M x 4096 would not fit
        e = min(n, s + 65536)
        z = torch.randn(e - s, latent, generator=g)
        feats[s:e] = (centres[labels[s:e]] + z @ basis + 0.1 * torch.randn(e - s, d, generator=g)).relu_()
    return feats, labels


def load_features(args: argparse.Namespace, device: torch.device) -> tuple[FeatureIndex, str]:
    if args.index:
        return FeatureIndex.load(args.index), f"index {args.index}"
    if args.checkpoint:
        from alexnet.checkpoint import load_model
        from alexnet.data import open_dataset

        model, meta = load_model(args.checkpoint, device)
        dataset = open_dataset(args.data, args.split)
        index = FeatureIndex.build(model, meta, dataset, device=device, bits=0, limit=args.n, num_workers=None)
        return index, f"fc7 of {args.checkpoint} on {args.data} ({args.split})"
    feats, labels = synthetic(args.n, args.dim, args.clusters)
    names = [str(c) for c in range(args.clusters)]
    index = FeatureIndex(feats, labels, [f"#{i}" for i in range(args.n)], names, names)
    return index, f"synthetic clustered features ({args.clusters} clusters)"


def timed(fn, device: torch.device, repeats: int):
    fn()  # warm-up (allocations, kernels)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    synchronize(device)
    return out, (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", help="feature index directory (from `alexnet neighbors`)")
    p.add_argument("--checkpoint", help="model to extract fc7 features with (needs --data)")
    p.add_argument("--data", help="dataset for --checkpoint")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=20000, help="database size (synthetic) or --limit (checkpoint)")
    p.add_argument("--dim", type=int, default=4096, help="feature dimension (synthetic)")
    p.add_argument("--clusters", type=int, default=100, help="clusters (synthetic)")
    p.add_argument("--bits", type=int, default=256, help="binary code length")
    p.add_argument("--queries", type=int, default=100, help="queries per batch")
    p.add_argument("-k", type=int, default=6)
    p.add_argument("--rerank", type=int, default=10, help="re-rank the best R*k by exact distance")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.checkpoint and not args.data:
        p.error("--checkpoint needs --data")
    device = resolve_device(args.device)

    index, source = load_features(args, device)
    index.to("cpu")
    start = time.perf_counter()
    index.fit_codes(args.bits)
    fit_s = time.perf_counter() - start
    index.to(device)
    g = torch.Generator().manual_seed(1)
    picks = torch.randperm(len(index), generator=g)[: args.queries].to(device)
    queries = index.features[picks] + 0.05 * torch.randn(len(picks), index.features.shape[1], generator=g).to(device)
    n, d = index.features.shape

    exact, t_exact = timed(lambda: index.search(queries, args.k), device, args.repeats)
    rows = [("exact (fp32 matmul)", t_exact, 1.0)]
    for label, kw in (
        ("binary, XOR+popcount", {"method": "popcount"}),
        ("binary, +-1 matmul", {"method": "matmul"}),
        (f"binary matmul + rerank x{args.rerank}", {"method": "matmul", "rerank": args.rerank}),
    ):
        found, seconds = timed(lambda kw=kw: index.search(queries, args.k, binary=True, **kw), device, args.repeats)
        rows.append((label, seconds, recall_at_k(found.indices, exact.indices)))

    print(describe_hardware(device))
    print(f"features: {source}; {n:,} x {d} float32 ({n * d * 4 / 2**20:,.1f} MiB) vs {index.itq.bits}-bit codes "
          f"({index.codes.numel() * 8 / 2**20:,.2f} MiB packed, {d * 32 / index.itq.bits:.0f}x smaller); "
          f"ITQ fit {fit_s:.1f} s")
    print(f"{len(picks)} queries per batch, k={args.k}, mean of {args.repeats} runs (recall@k vs exact search):")
    for label, seconds, recall in rows:
        print(f"  {label:<30} {seconds * 1e3:9.2f} ms  {seconds / len(picks) * 1e6:9.1f} us/query  "
              f"recall {recall:.3f}  speed-up x{t_exact / seconds:.2f}")
    return {label: {"seconds": seconds, "recall": recall} for label, seconds, recall in rows}


if __name__ == "__main__":
    main()
