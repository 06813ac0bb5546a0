"""Input pipeline throughput: the classic per-image PIL pipeline vs the prepared format.

Both deliver augmented training batches (float32 [B, 3, 224, 224]) with the same number
of DataLoader workers:

  (a) classic: per image in a worker, PIL open -> RGB -> shorter side to 256 -> random
      224 crop -> flip -> to tensor -> normalise (the torchvision ImageNet recipe);
  (b) project: ``alexnet data prepare`` once (timed separately), then ``make_loader`` over
      the prepared shards (uint8 batches) and ``TrainAugment`` on the batch (CPU here).

The source photos are replicated by symlinks to ``--items`` files in class folders.

    python bench/data_pipeline.py --source ../shared/data/imagenet-samples
"""

from __future__ import annotations

import argparse
import os
import platform
import random
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
    """``items`` symlinks to the source photos spread over ``classes`` class folders."""
    files = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise SystemExit(f"no images in {source}")
    samples = []
    for j in range(items):
        label = j % classes
        d = dest / f"class{label:03d}"
        d.mkdir(parents=True, exist_ok=True)
        link = d / f"{j:06d}{files[j % len(files)].suffix}"
        link.symlink_to(files[j % len(files)].resolve())
        samples.append((str(link), label))
    return samples


def measure(batches_iter, batches: int, batch_size: int, work=lambda b: b) -> float:
    """Images/s over ``batches`` batches, after one warm-up batch (worker start-up excluded)."""
    it = iter(batches_iter)
    work(next(it))
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            break
        work(b)
        n += batch_size
    return n / (time.perf_counter() - t0)


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
    ap.add_argument("--batches", type=int, default=30, help="batches timed per pipeline")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--formats", default="raw", help="prepared formats to measure, e.g. raw,jpeg")
    ap.add_argument("--work-dir", type=Path, default=None, help="where to build the data (default: a temp dir)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    random.seed(0)
    print(f"hardware: {hardware()}")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        samples = replicate(args.source, tmp / "src", args.items, args.classes)
        print(f"data: {len(samples)} files ({args.source} replicated), batch {args.batch_size}, "
              f"{args.workers} workers, {args.batches} timed batches")

        classic = DataLoader(
            ClassicDataset(samples, args.size, args.crop),
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=args.workers,
            drop_last=True,
            persistent_workers=args.workers > 0,
        )
        results["classic"] = measure(classic, args.batches, args.batch_size)
        del classic
        print(f"(a) classic PIL pipeline: {results['classic']:.0f} images/s")

        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            out = tmp / f"prepared-{fmt}"
            t0 = time.perf_counter()
            prepare_dataset(tmp / "src", out, size=args.size, fmt=fmt, workers=args.workers, progress=False)
            prep = time.perf_counter() - t0
            ds = PreparedDataset(out, "train")
            aug = TrainAugment(args.crop, ds.stats, mode="image")
            loader = make_loader(ds, args.batch_size, shuffle=True, num_workers=args.workers)
            rate = measure(loader, args.batches, args.batch_size, work=lambda b, aug=aug: aug(b[0]))
            del loader
            results[fmt] = rate
            results[f"prepare_{fmt}_s"] = prep
            print(f"(b) prepared {fmt} + make_loader + TrainAugment: {rate:.0f} images/s "
                  f"(preparation: {prep:.1f} s for {len(ds)} images, {len(ds) / prep:.0f} images/s)")

    best = max(results[f] for f in results if not f.startswith("prepare_") and f != "classic")
    results["ratio"] = best / results["classic"]
    print(f"ratio: {results['ratio']:.2f}")
    return results


if __name__ == "__main__":
    main()
