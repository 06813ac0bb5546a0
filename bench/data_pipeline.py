"""Input pipeline throughput: the classic per-image PIL pipeline vs the prepared format.

Both deliver augmented training batches (float32 [B, 3, 224, 224]) with the same number
of DataLoader workers:

  (a) classic: per image in a worker, PIL open -> RGB -> shorter side to 256 -> random
      224 crop -> flip -> to tensor -> normalise (the torchvision ImageNet recipe);
  (b) project: ``alexnet data prepare`` once (timed separately), then ``make_loader`` over
      the prepared shards (uint8 batches) and ``TrainAugment`` on the batch (CPU here).

The source photos are copied to ``--items`` files in class folders (copies, not links:
a folder dataset counts each real file once, so links to one photo would be one image).

    python bench/data_pipeline.py --source ../shared/data/imagenet-samples
"""

from __future__ import annotations

import os

# Large tensors (a 128-image float batch is 77 MB) come from fresh mmap'd pages on every
# allocation; transparent huge pages cut the page-fault cost ~5x. A documented PyTorch CPU
# allocator switch; it applies to both pipelines alike. Must be set before torch starts.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alexnet.data.decode import is_image_file  # noqa: E402
from alexnet.data.loader import make_loader  # noqa: E402
from alexnet.data.prepared import PreparedDataset, prepare_dataset  # noqa: E402
from alexnet.data.stats import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from alexnet.data.transforms import TrainAugment  # noqa: E402


class ClassicDataset(Dataset):
    """The per-image PIL pipeline most ImageNet training scripts use."""

    def __init__(self, samples: list[tuple[str, int]], size: int, crop: int) -> None:
        self.samples, self.size, self.crop = samples, size, crop
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / 255
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) / 255

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as f:
            img = f.convert("RGB")
        w, h = img.size
        scale = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        top, left = random.randint(0, h - self.crop), random.randint(0, w - self.crop)
        img = img.crop((left, top, left + self.crop, top + self.crop))
        if random.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (x - self.mean) / self.std, label


def replicate(source: Path, dest: Path, items: int, classes: int) -> list[tuple[str, int]]:
    """``items`` copies of the source photos spread over ``classes`` class folders."""
    files = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise SystemExit(f"no images in {source}")
    samples = []
    for j in range(items):
        label = j % classes
        d = dest / f"class{label:03d}"
        d.mkdir(parents=True, exist_ok=True)
        copy = d / f"{j:06d}{files[j % len(files)].suffix}"
        shutil.copyfile(files[j % len(files)], copy)
        samples.append((str(copy), label))
    return samples


class Pipeline:
    """Augmented batches from one loader, timed in rounds.

    Rounds of the pipelines are interleaved so that all of them see the same background
    load (this machine is shared). Each round starts the loader afresh and stops it after,
    so that no pipeline's workers run (and bank batches) during another's round; the
    first ``warmup`` batches (worker start-up, one batch per worker) are not timed. CPU
    time is summed over the main process and the loader's worker processes: a figure that
    does not depend on the background load.
    """

    def __init__(self, name: str, loader, batch_size: int, warmup: int, work=lambda b: b) -> None:
        self.name, self.loader, self.batch_size, self.warmup, self.work = name, loader, batch_size, warmup, work
        self.rates: list[float] = []
        self.cpu_per_image: list[float] = []

    def round(self, batches: int) -> None:
        it = iter(self.loader)
        try:
            for _ in range(self.warmup):
                self.work(next(it))
            pids = [os.getpid(), *(w.pid for w in getattr(it, "_workers", None) or [])]
            c0, t0 = _cpu_seconds(pids), time.perf_counter()
            for _ in range(batches):
                self.work(next(it))
            dt = time.perf_counter() - t0
            cpu = _cpu_seconds(pids) - c0
        finally:
            if hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            elif hasattr(it, "close"):
                it.close()
            del it
        self.rates.append(batches * self.batch_size / dt)
        self.cpu_per_image.append(cpu / (batches * self.batch_size))

    @property
    def rate(self) -> float:
        return float(np.median(self.rates))

    def describe(self) -> str:
        cpu = float(np.median(self.cpu_per_image)) * 1000
        rounds = ", ".join(f"{r:.0f}" for r in self.rates)
        return f"{self.rate:.0f} images/s (median of rounds: {rounds}; {cpu:.2f} CPU-ms per image)"


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc; 0 elsewhere)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def hardware() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {cores} cores (load {load:.1f}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "imagenet-samples")
    ap.add_argument("--items", type=int, default=5000, help="images in the replicated dataset")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=15, help="batches timed per pipeline per round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--formats", default="raw", help="prepared formats to measure, e.g. raw,jpeg")
    ap.add_argument("--work-dir", type=Path, default=None, help="where to build the data (default: a temp dir)")
    args = ap.parse_args(argv)

    if max(1, args.workers) + args.batches > args.items // args.batch_size:
        ap.error("--items must hold --batches + one batch per worker (a round stays within one epoch)")
    torch.manual_seed(0)
    random.seed(0)
    print(f"hardware: {hardware()}")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        samples = replicate(args.source, tmp / "src", args.items, args.classes)
        print(f"data: {len(samples)} files ({args.source} replicated), batch {args.batch_size}, "
              f"{args.workers} workers, {args.rounds} rounds x {args.batches} timed batches")

        classic = DataLoader(
            ClassicDataset(samples, args.size, args.crop),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            drop_last=True,
        )
        warmup = max(1, args.workers)
        pipelines = [Pipeline("classic", classic, args.batch_size, warmup)]
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            out = tmp / f"prepared-{fmt}"
            t0 = time.perf_counter()
            prepare_dataset(tmp / "src", out, size=args.size, fmt=fmt, workers=args.workers, progress=False)
            prep = time.perf_counter() - t0
            ds = PreparedDataset(out, "train")
            results[f"prepare_{fmt}_s"] = prep
            print(f"preparation ({fmt}): {prep:.1f} s for {len(ds)} images ({len(ds) / prep:.0f} images/s, "
                  f"{args.workers} processes), {sum(s['bytes'] for s in ds.shards) / 2**20:.0f} MiB")
            aug = TrainAugment(args.crop, ds.stats, mode="image")
            loader = make_loader(ds, args.batch_size, shuffle=True, num_workers=args.workers, persistent_workers=False)
            pipelines.append(Pipeline(fmt, loader, args.batch_size, warmup, work=lambda b, aug=aug: aug(b[0])))

        for _ in range(args.rounds):
            for p in pipelines:
                p.round(args.batches)
        for p in pipelines:
            results[p.name] = p.rate
            label = "(a) classic PIL pipeline" if p.name == "classic" else f"(b) prepared {p.name} + make_loader + TrainAugment"
            print(f"{label}: {p.describe()}")
        del pipelines, classic

    best = max(results[f] for f in results if not f.startswith("prepare_") and f != "classic")
    results["ratio"] = best / results["classic"]
    print(f"ratio: {results['ratio']:.2f}")
    return results


if __name__ == "__main__":
    main()
