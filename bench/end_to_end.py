"""End-to-end training throughput: the real loader over a prepared dataset feeding training steps.

    alexnet data prepare SRC DATA            # once: SxS images in shards + index
    python bench/end_to_end.py DATA [--batch-size 256] [--workers 8] [--decode auto]

For each decode option it reports

* ``compute only``: images/s of the training step (augmentation on the device, forward,
  backward, optimiser) on one batch reused, i.e. what the device could take;
* ``end to end``: images/s actually delivered into training steps by ``make_loader``
  (workers decode and gather, pinned copies, ``TrainAugment`` on the device);
* ``data wait``: the fraction of wall time the training loop sat blocked on the loader,
  and the device's idle fraction ``1 - end_to_end / compute_only`` (how much faster the
  run would go with an infinitely fast input pipeline).

Decode options: ``cpu`` (the loader's workers decode: simplejpeg for JPEG shards, a memmap
gather for raw ones) and, on CUDA with torchvision installed and a JPEG-encoded prepared
dataset, ``gpu`` (workers only slice the JPEG bytes out of the shards; nvJPEG decodes the
batch on the device with ``torchvision.io.decode_jpeg(..., device='cuda')``). Options that
the machine cannot run are skipped with a message. The training step is the project's fast
path (bf16 autocast where supported, channels_last, torch.compile unless ``--no-compile``,
fused/foreach SGD), as in ``bench/train_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    bf16_supported,
    describe_hardware,
    make_sgd,
    maybe_autocast,
    resolve_device,
    synchronize,
    time_first,
    time_steps,
)

from alexnet.data import DatasetError, open_dataset
from alexnet.data.loader import default_workers, make_loader
from alexnet.data.transforms import TrainAugment
from alexnet.models import create_model


class JpegBytes(Dataset):
    """A JPEG-encoded prepared dataset whose batches are the undecoded bytes.

    ``get_batch`` returns ``(uint8 [total_bytes], int64 [B] lengths, int64 [B] labels)``: one
    flat buffer, so that a worker hands the main process three tensors, not B objects. It
    reads the shards through the index arrays the dataset exposes (``items``: shard, offset,
    length per image), which the dataset has already checked against the shard sizes.
    """

    def __init__(self, ds) -> None:
        self.root, self.shards = Path(ds.root), ds.shards
        self.items, self.labels = ds.items, ds.labels
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}  # memmaps reopen in each worker

    def __len__(self) -> int:
        return len(self.labels)

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.root / self.shards[shard]["file"], dtype=np.uint8, mode="r")
        return self._maps[shard]

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        parts = []
        for i in indices:
            shard, off, n = (int(v) for v in self.items[i])
            parts.append(np.asarray(self._map(shard)[off : off + n]))
        lengths = torch.tensor([len(p) for p in parts], dtype=torch.int64)
        return torch.from_numpy(np.concatenate(parts)), lengths, torch.from_numpy(self.labels[np.asarray(indices)])


class PackedJpegBytes(JpegBytes):
    """:class:`JpegBytes` for the loader, whose batches are ``(x, y)`` pairs (``make_loader``
    unpacks two values, pins both and hands them over): ``x`` is one uint8 buffer holding
    the B int64 lengths (8 bytes each) followed by the JPEG bytes; :meth:`unpack` splits it."""

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        flat, lengths, labels = super().get_batch(indices)
        return torch.cat([lengths.view(torch.uint8), flat]), labels

    @staticmethod
    def unpack(x: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """``(flat JPEG bytes, int64 lengths)`` from a packed buffer of ``batch`` images."""
        head = 8 * batch
        return x[head:], x[:head].clone().view(torch.int64)


class Repeat(Dataset):
    """``times`` back-to-back copies of a dataset (index ``i`` is image ``i mod n``).

    A loader worker builds whole batches, so a sample set with few batches per epoch keeps
    few workers busy (1,000 images at batch 256: 3 of 16) and drains the prefetch queue at
    every epoch's end; repeating it measures the pipeline as a full-size dataset would run it.
    The decode work is real; only the files repeat (and stay in the page cache).
    """

    def __init__(self, base: Dataset, times: int) -> None:
        self.base, self.times, self.n = base, max(1, int(times)), len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n * self.times

    def __getitem__(self, i: int):
        return self.base[i % self.n]

    def get_batch(self, indices: Sequence[int]):
        return self.base.get_batch([i % self.n for i in indices])  # type: ignore[attr-defined]

    def __getattr__(self, name: str):
        if name in ("base", "times", "n") or name.startswith("__"):  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.base, name)


def auto_repeat(n_images: int, batch_size: int, workers: int) -> int:
    """Copies that give at least 4 batches per worker per epoch (1 when the data already does)."""
    return max(1, math.ceil(4 * max(workers, 1) * batch_size / max(n_images, 1)))


def gpu_decode_unavailable(ds, device: torch.device) -> str | None:
    """Why ``--decode gpu`` cannot run here (None when it can)."""
    if device.type != "cuda":
        return "needs a CUDA device"
    if getattr(ds, "encoding", None) != "jpeg":
        return "needs a JPEG-encoded prepared dataset (alexnet data prepare --format jpeg)"
    try:
        import torchvision.io  # noqa: F401
    except Exception as exc:  # ImportError, or a build that fails at import time
        return f"torchvision is not importable ({type(exc).__name__}: {exc})"
    return None


def gpu_decode(flat: Tensor, lengths: Tensor, device: torch.device) -> Tensor:
    """nvJPEG batch decode of a flat byte buffer to uint8 ``[B, 3, S, S]`` on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = list(flat.split(lengths.tolist()))
    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return torch.stack(images)


def fast_step(args: argparse.Namespace, num_classes: int, stats, device: torch.device) -> Callable[[Tensor, Tensor], None]:
    """The project's fast training step on a uint8 batch already on ``device``."""
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=num_classes, **args.model_options).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    crop = args.crop or model.input_size
    augment = TrainAugment(crop, stats, "channel").to(device)
    opt = make_sgd(model.parameters(), lr=1e-3, fast=True, device=device)
    net = model if args.no_compile else torch.compile(model)
    bf16 = not args.no_bf16 and bf16_supported(device)

    def step(x: Tensor, y: Tensor) -> None:
        inputs = augment(x).contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        with maybe_autocast(device, bf16):
            loss = F.cross_entropy(net(inputs), y)
        loss.backward()
        opt.step()

    return step


def batches(loader, start_epoch: int = 0) -> Iterator:
    """The loader's batches, epoch after epoch (small datasets run several)."""
    epoch = start_epoch
    while True:
        loader.set_epoch(epoch)
        got = False
        for b in loader:
            got = True
            yield b
        if not got:
            raise SystemExit("error: the loader yields no batches (batch size larger than the dataset?)")
        epoch += 1


def run_option(args: argparse.Namespace, ds, decode: str, device: torch.device) -> dict[str, float]:
    """compute-only and end-to-end images/s and the wait fractions for one decode option."""
    source = PackedJpegBytes(ds) if decode == "gpu" else ds
    if args.repeat > 1:
        source = Repeat(source, args.repeat)
    loader = make_loader(
        source, args.batch_size, shuffle=True, seed=0, num_workers=args.workers, drop_last=True,
        pin_memory=device.type == "cuda",
    )

    def fetch(b) -> tuple[Tensor, Tensor]:
        if decode == "gpu":
            packed, y = b
            flat, lengths = PackedJpegBytes.unpack(packed, len(y))
            return gpu_decode(flat, lengths, device), y.to(device, non_blocking=True)
        x, y = b
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    step = fast_step(args, len(ds.classes), ds.stats, device)
    it = batches(loader)
    x0, y0 = fetch(next(it))
    first = time_first(lambda: step(x0, y0), device)  # compiles
    compute_s = time_steps(lambda: step(x0, y0), args.steps, args.warmup, device)

    for _ in range(args.warmup):
        step(*fetch(next(it)))
    synchronize(device)
    wait = 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        x, y = fetch(next(it))
        wait += time.perf_counter() - t
        step(x, y)
    synchronize(device)
    wall = time.perf_counter() - start
    del it, loader  # stop the workers before the next option starts its own
    compute_ips = args.batch_size / compute_s
    e2e_ips = args.steps * args.batch_size / wall
    return {
        "compute_images_per_s": compute_ips,
        "end_to_end_images_per_s": e2e_ips,
        "loader_wait_fraction": wait / wall,
        "device_idle_fraction": max(0.0, 1.0 - e2e_ips / compute_ips),
        "first_step_s": first,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="prepared dataset (alexnet data prepare) or any folder open_dataset accepts")
    p.add_argument("--split", default="train")
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default="alexnet")
    p.add_argument("--model-options", default="{}", help='JSON options for the model, e.g. \'{"width": 0.25}\'')
    p.add_argument("--crop", type=int, default=None, help="network input side (default: the model's)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on the CPU")
    p.add_argument("--workers", type=int, default=None, help="loader worker processes (default: cores, max 8)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 CUDA, 1 CPU)")
    p.add_argument("--decode", default="auto", help="cpu, gpu, or auto (every option this machine has)")
    p.add_argument("--repeat", default="auto",
                   help="read the dataset this many times per epoch (auto: enough for 4 batches per worker)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    cuda = resolve_device(args.device).type == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.steps = args.steps if args.steps is not None else (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.workers = default_workers() if args.workers is None else args.workers
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0 or args.workers < 0:
        p.error("--batch-size and --steps must be >= 1, --warmup and --workers >= 0")
    if args.decode not in ("auto", "cpu", "gpu"):
        p.error("--decode must be cpu, gpu or auto")
    if args.repeat != "auto" and (not args.repeat.isdigit() or int(args.repeat) < 1):
        p.error("--repeat must be auto or a positive integer")
    try:
        args.model_options = json.loads(args.model_options)
    except json.JSONDecodeError as exc:
        p.error(f"--model-options is not JSON: {exc}")
    if not isinstance(args.model_options, dict):
        p.error("--model-options must be a JSON object")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(describe_hardware(device))
    try:
        ds = open_dataset(args.data, args.split)
    except (DatasetError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    kind = f"prepared, {ds.encoding}" if hasattr(ds, "encoding") else type(ds).__name__
    args.repeat = auto_repeat(len(ds), args.batch_size, args.workers) if args.repeat == "auto" else int(args.repeat)
    print(
        f"data: {args.data} [{args.split}] ({kind}), {len(ds):,} images of {ds.image_size} px, "
        f"{len(ds.classes)} classes"
        + (f"; read {args.repeat}x per epoch (each worker builds whole batches: see --repeat)" if args.repeat > 1 else "")
    )
    bf16 = not args.no_bf16 and bf16_supported(device)
    print(
        f"step: {args.model} {args.model_options or ''}, batch {args.batch_size}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, channels_last, "
        f"{'eager' if args.no_compile else 'torch.compile'}; loader: {args.workers} workers; "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    options = ["cpu", "gpu"] if args.decode == "auto" else [args.decode]
    results: dict[str, dict[str, float]] = {}
    for decode in options:
        if decode == "gpu":
            reason = gpu_decode_unavailable(ds, device)
            if reason:
                print(f"decode gpu: skipped ({reason})")
                continue
        r = run_option(args, ds, decode, device)
        results[decode] = r
        print(f"decode {decode}:")
        print(f"  compute only: {r['compute_images_per_s']:,.1f} images/s (one batch reused)")
        print(f"  end to end:   {r['end_to_end_images_per_s']:,.1f} images/s delivered into training steps")
        print(
            f"  data wait:    {r['loader_wait_fraction']:.1%} of wall time blocked on the loader; "
            f"device idle {r['device_idle_fraction']:.1%}"
        )
    if args.json:
        report = {"hardware": describe_hardware(device), "data": str(args.data), "images": len(ds), "repeat": args.repeat,
                  "batch_size": args.batch_size, "workers": args.workers, "steps": args.steps,
                  "compile": not args.no_compile, "bf16": bf16, "results": results}
        Path(args.json).write_text(json.dumps(report, indent=2))
    return results


if __name__ == "__main__":
    main()
