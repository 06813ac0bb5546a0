"""CIFAR-10 on a time budget, through the project's training engine.

    python bench/cifar10.py --train DIR --test DIR [--minutes 15] [--preset cifar10|cifar10-small]

``DIR/<class>/*.jpg`` folders (the ten CIFAR-10 classes). Every image is decoded once into
a uint8 tensor held in memory (50,000 x 3 x 32 x 32 is 150 MB), reflect-padded by
``--pad`` pixels, so that the engine's batched :class:`~alexnet.data.transforms.TrainAugment`
(a random ``crop`` x ``crop`` patch + flip, on whole batches) translates the images, and the
centre crop at test time is exactly the original image. Training is
:func:`alexnet.training.train` with the ``cifar10`` preset (``alexnet_fast`` trained with Muon, the recipe of
issue 17) or ``--preset cifar10-small`` (the first wave's ``alexnet_small`` recipe, for
comparison); the number of epochs is chosen from a short throughput measurement so that
the whole schedule (its decay to zero) ends inside the budget, and the engine's time limit re-plans
the epochs from the measured epoch times as the run goes (``fit_time_limit``). On a CPU
with bf16 units (AVX512-BF16/AMX) bf16 autocast is used.

``--members K`` trains K networks at once, each in its own process with its share of the
threads and its own seed, each fitting its epochs to the same deadline, and predicts with
the mean of their softmaxes (the paper's ensemble, Section 6). On two cores two one-thread
processes train more images per second together than one two-thread process.

Prints the elapsed time (everything from the start: decoding, training, evaluation),
training and test images/s, the training step's achieved GFLOP/s beside a bf16 and an fp32
matrix product timed in the same run, and the test accuracy single-view, flip-averaged and
with flips and 1 px translations (6 views), ending with ``test top-1: XX.X%`` (the 6-view
figure).

To hold out a validation split from the one training folder you have (the real test split
is not given), ``--holdout K`` uses the last K images of each class (in file order) as the
test set and trains on the rest: ``--train DIR --holdout 500`` (``--test`` may then be omitted).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
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
    engine_messages,
    matmul_tflops,
    resolve_device,
    train_step_flops,
)

from alexnet.data.decode import DecodeError, image_paths, read_image
from alexnet.data.stats import DatasetStats, compute_stats
from alexnet.errors import AlexNetError
from alexnet.metrics import topk_hits
from alexnet.training.config import TrainConfig, from_dict, preset
from alexnet.training.trainer import optimizer_for, train

CIFAR_SIZE = 32
# The recipes this benchmark runs, and the translation room each was tuned with (px per side).
PRESET_PAD = {"cifar10": 2, "cifar10-small": 4}


class InMemoryImages(Dataset):
    """uint8 ``[N, 3, S, S]`` images and int64 labels in memory, with what the engine needs
    (``classes``, ``class_names``, ``image_size``, ``stats``, ``targets``, ``get_batch``)."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        classes: Sequence[str],
        stats: DatasetStats | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 [N, 3, S, S] images, got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.long()
        self.classes = list(classes)
        self.class_names = list(classes)
        self.image_size = int(images.shape[-1])
        self.bad_files: list[tuple[str, str]] = []
        self._paths = list(paths) if paths is not None else None
        self.stats = stats if stats is not None else compute_stats(images.split(1024))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def path_of(self, i: int) -> str:
        return self._paths[i] if self._paths is not None else f"<memory #{i}>"

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def get_batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


def load_folder(
    root: Path, classes: Sequence[str] | None = None
) -> tuple[list[tuple[list[Path], int]], list[str]]:
    """``[(files of class c, c)]`` in file order, and the class list (sorted folder names)."""
    if not root.is_dir():
        raise SystemExit(f"error: {root} is not a directory")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise SystemExit(f"error: {root} has no class folders (expected DIR/<class>/*.jpg)")
    classes = list(found if classes is None else classes)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise SystemExit(f"error: {root} has class folders not in the training classes: {unknown[:5]}")
    return [(image_paths(root / c), classes.index(c)) for c in found], classes


def load_split(
    root: Path, classes: int, train_per_class: int, val_per_class: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """``(train x, train y, held-out x, held-out y, names)`` from the first ``classes`` class
    folders: the first ``train_per_class`` files of each train, the last ``val_per_class`` are
    held out (file order, so reruns agree)."""
    groups, names = load_folder(root)
    groups, names = groups[:classes], names[:classes]
    if any(len(files) < train_per_class + val_per_class for files, _ in groups):
        raise SystemExit(f"error: {root}: a class has fewer than {train_per_class + val_per_class} images")
    tx, ty, _, _ = decode_all([(files[:train_per_class], c) for files, c in groups])
    vx, vy, _, _ = decode_all([(files[-val_per_class:], c) for files, c in groups])
    return tx, ty, vx, vy, names


def decode_all(groups: Sequence[tuple[Sequence[Path], int]]) -> tuple[Tensor, Tensor, list[str], int]:
    """Decode every file to uint8 ``[N, 3, 32, 32]``; unreadable or wrong-size files are
    counted and skipped (returned as the last value), never fatal."""
    images, labels, paths, skipped = [], [], [], 0
    for files, label in groups:
        for path in files:
            try:
                a = read_image(path)
            except DecodeError:
                skipped += 1
                continue
            if a.shape != (CIFAR_SIZE, CIFAR_SIZE, 3):
                skipped += 1
                continue
            images.append(a)
            labels.append(label)
            paths.append(str(path))
    if not images:
        raise SystemExit("error: no decodable 32x32 images found")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long), paths, skipped


def reflect_pad(images: Tensor, pad: int) -> Tensor:
    """Reflect-pad uint8 images by ``pad`` pixels per side (the translation augmentation's room)."""
    if pad == 0:
        return images
    out = [F.pad(chunk.float(), (pad,) * 4, mode="reflect").to(torch.uint8) for chunk in images.split(4096)]
    return torch.cat(out)


# Test-time augmentation: the centre view, and views shifted by one pixel up-left and
# down-right (taken from the padded image, so they are real pixels), each with its mirror;
# the shifted pairs count half as much as the centre pair (airbench's choice).
TTA_SHIFTS: tuple[tuple[int, int, float], ...] = ((0, 0, 1.0), (-1, -1, 0.5), (1, 1, 0.5))


@torch.no_grad()
def predict(model: torch.nn.Module, data: InMemoryImages, eval_tf: torch.nn.Module, device: torch.device,
            *, bf16: bool, channels_last: bool, batch_size: int = 500) -> dict[str, Tensor | float]:
    """The model's logits for every test image: the centre view (``centre``), its mirror
    (``mirror``) and the weighted mean over the six views (``tta``), each ``[N, classes]`` on
    the CPU, and the single view's images/s (``inference_images_per_s``)."""
    model.eval()
    norm = eval_tf.to(device).norm  # the engine's normalisation (of whole images); crops are taken here
    crop, side = int(eval_tf.crop), data.image_size
    room = (side - crop) // 2
    shifts = [(dy, dx, w) for dy, dx, w in TTA_SHIFTS if abs(dy) <= room and abs(dx) <= room]
    total_weight = 2 * sum(w for _, _, w in shifts)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out: dict[str, list[Tensor]] = {"centre": [], "mirror": [], "tta": []}
    seconds = 0.0
    for s in range(0, len(data), batch_size):
        full = norm.full(data.images[s : s + batch_size].to(device).float())
        tta = torch.zeros(len(full), len(data.classes), device=device)
        for dy, dx, weight in shifts:
            top, left = room + dy, room + dx
            inputs = full[:, :, top : top + crop, left : left + crop].contiguous(memory_format=fmt)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                t = time.perf_counter()
                logits = model(inputs).float()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if (dy, dx) == (0, 0):
                    seconds += time.perf_counter() - t
                logits_flip = model(inputs.flip(-1)).float()
            if (dy, dx) == (0, 0):
                out["centre"].append(logits.cpu())
                out["mirror"].append(logits_flip.cpu())
            tta += weight * (logits + logits_flip)
        out["tta"].append((tta / total_weight).cpu())
    return {**{k: torch.cat(v) for k, v in out.items()}, "inference_images_per_s": len(data) / max(seconds, 1e-9)}


def top1_scores(predictions: Sequence[dict[str, Tensor | float]], labels: Tensor) -> dict[str, float]:
    """Top-1 of one model's or an ensemble's predictions (the paper's ensemble: the mean of
    the members' softmaxes): the centre view (``top1``), the centre view and its mirror
    (``top1_flip``, mean of their softmaxes) and the six views (``top1_tta``, the softmax of
    each member's weighted mean logits). For one model the single view and the six views
    are the argmax of its logits."""
    centre = torch.stack([p["centre"].softmax(1) for p in predictions]).mean(0)
    flip = torch.stack([(p["centre"].softmax(1) + p["mirror"].softmax(1)) / 2 for p in predictions]).mean(0)
    tta = torch.stack([p["tta"].softmax(1) for p in predictions]).mean(0)
    return {name: topk_hits(probs, labels, (1,)).item() / len(labels)
            for name, probs in (("top1", centre), ("top1_flip", flip), ("top1_tta", tta))}


def evaluate(model: torch.nn.Module, data: InMemoryImages, eval_tf: torch.nn.Module, device: torch.device,
             *, bf16: bool, channels_last: bool, batch_size: int = 500) -> dict[str, float]:
    """One model's top-1 (:func:`top1_scores`) and its single view's images/s."""
    pred = predict(model, data, eval_tf, device, bf16=bf16, channels_last=channels_last, batch_size=batch_size)
    return {**top1_scores([pred], data.labels), "inference_images_per_s": pred["inference_images_per_s"]}


def measure_train_speed(cfg, train_set: InMemoryImages, device: torch.device, seconds: float) -> float:
    """Training images/s of this configuration, from a few steps on a throwaway model."""
    from alexnet.data.transforms import TrainAugment
    from alexnet.models import create_model

    options = dict(cfg.model_options)
    options.setdefault("input_size", cfg.crop)  # as the engine builds it
    model = create_model(cfg.model, num_classes=len(train_set.classes), **options).to(device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    aug = TrainAugment(cfg.crop, train_set.stats, cfg.norm_mode).to(device)
    opt = optimizer_for(model, cfg)  # the run's own update (Muon's orthogonalisation included)
    bs = min(cfg.batch_size, len(train_set))  # a folder smaller than one batch trains in smaller ones
    x, y = train_set.get_batch(list(range(bs)))
    x, y = x.to(device), y.to(device)

    def step() -> None:
        inputs = aug(x).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
            loss = F.cross_entropy(model(inputs).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: the first steps set up kernels and memory (2-3x slower here)
        step()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * bs / (time.perf_counter() - start)


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """``--train``, ``--test``, ``--holdout`` and ``--max-train``: the split, as every CIFAR-10 benchmark takes it."""
    p.add_argument("--train", required=True, type=Path, help="training folder DIR/<class>/*.jpg")
    p.add_argument("--test", type=Path, default=None, help="test folder (same layout)")
    p.add_argument("--holdout", type=int, default=0, help="use the last K images per class of --train as the test set")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training images (smoke tests)")


def check_data_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.test is None and args.holdout <= 0:
        p.error("give --test DIR, or --holdout K to test on the last K images per class of --train")
    if args.holdout < 0 or (args.max_train is not None and args.max_train < 1):
        p.error("--holdout must be >= 0 and --max-train >= 1")


def data_groups(args: argparse.Namespace) -> tuple[list, list, list[str]]:
    """``(train groups, test groups, classes)`` (see :func:`load_folder`) of the data arguments:
    ``--holdout K`` tests on the last K files of each class, ``--max-train`` keeps the first
    files of each class (an equal share per class)."""
    groups, classes = load_folder(args.train)
    if args.holdout > 0:
        train_groups = [(files[: max(0, len(files) - args.holdout)], c) for files, c in groups]
        test_groups = [(files[max(0, len(files) - args.holdout) :], c) for files, c in groups]
    else:
        train_groups = groups
        test_groups, _ = load_folder(args.test, classes)
    if args.max_train:
        per_class = max(1, args.max_train // len(groups))
        train_groups = [(files[:per_class], c) for files, c in train_groups]
    return train_groups, test_groups, classes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--minutes", type=float, default=15.0, help="time budget for the whole run (default 15)")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", choices=tuple(PRESET_PAD), default="cifar10",
                   help="the recipe: cifar10 (alexnet_fast, default) or cifar10-small (the first wave's alexnet_small)")
    p.add_argument("--pad", type=int, default=None,
                   help="reflect padding for translations (default: the preset's, 2 px for cifar10, 4 for cifar10-small)")
    p.add_argument("--members", type=int, default=1,
                   help="train this many networks at once, one process each, and average their predictions "
                        "(default 1)")
    p.add_argument("--val-images", type=int, default=2000,
                   help="the engine's per-epoch validation (the epoch lines) on this many test images, evenly "
                        "spaced (default 2000; 0: all); the final figures always use the whole test set")
    p.add_argument("--epochs", type=int, default=None, help="fix the epochs instead of fitting them to the budget")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the cifar10 preset (repeatable), e.g. --set lr=0.1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    check_data_arguments(p, args)
    if args.minutes <= 0 or (args.pad is not None and args.pad < 0) or (args.epochs is not None and args.epochs < 1):
        p.error("--minutes must be > 0, --pad >= 0, --epochs >= 1")
    if not 1 <= args.members <= 64:
        p.error("--members must be in [1, 64]")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.val_images < 0:
        p.error("--val-images must be >= 0 (0: the whole test set)")
    if args.pad is None:
        args.pad = PRESET_PAD[args.preset]
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    try:
        with engine_messages():  # the engine's epoch lines and re-plans go into this run's log
            return run(args)
    except AlexNetError as exc:  # a bad --set value, a batch larger than the data: one line, no traceback
        raise SystemExit(f"error: {exc}") from None


def run(args: argparse.Namespace) -> dict[str, float]:
    t0 = time.perf_counter()
    budget_s = args.minutes * 60
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(describe_hardware(device))

    # ---- data: decode once into memory
    train_groups, test_groups, classes = data_groups(args)
    xtr, ytr, ptr, bad_tr = decode_all(train_groups)
    xte, yte, pte, bad_te = decode_all(test_groups)
    train_set = InMemoryImages(reflect_pad(xtr, args.pad), ytr, classes, paths=ptr)
    # The test images share the training statistics (normalisation is the training set's).
    test_set = InMemoryImages(reflect_pad(xte, args.pad), yte, classes, stats=train_set.stats, paths=pte)
    print(f"data: {len(train_set)} training / {len(test_set)} test images in memory "
          f"({bad_tr + bad_te} unreadable skipped), {len(classes)} classes, padded to {train_set.image_size} px; "
          f"loaded in {time.perf_counter() - t0:.1f} s")
    # The epoch lines are the run's evidence, but a pass over a 10,000-image test set after each
    # epoch costs 4% of a 15-minute run: a spread subset tells the same story for a fifth.
    val_set = test_set
    if 0 < args.val_images < len(test_set):
        keep = torch.linspace(0, len(test_set) - 1, args.val_images).round().long()
        val_set = InMemoryImages(test_set.images[keep], test_set.labels[keep], classes, stats=train_set.stats,
                                 paths=[test_set.path_of(int(i)) for i in keep])
        print(f"per-epoch validation: {len(val_set)} of the test images, evenly spaced")

    # ---- configuration: the cifar10 preset, tuned for this device
    from alexnet.training.config import parse_override

    cfg = preset(args.preset)
    overrides = dict(parse_override(item) for item in args.set)
    cfg = from_dict(overrides, cfg)
    bf16 = bf16_supported(device)
    cfg.device = str(device)
    if "amp" not in overrides:
        cfg.amp = "bf16" if bf16 else "none"
    if "channels_last" not in overrides:
        cfg.channels_last = True
    if "crop" not in overrides:
        cfg.crop = CIFAR_SIZE  # the padded images give the translations
    cfg.num_workers = 0  # in memory: a batch is one gather
    cfg.progress, cfg.tensorboard = False, False
    cfg.checkpoint_minutes = 0.0
    cfg.log_every = max(cfg.log_every, 50)
    cfg.validate()
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="cifar10-")
        cfg.out = tmp.name
    else:
        cfg.out = str(args.out)

    # ---- train the members, each in its own process when there are several (one per core)
    deadline = time.time() + budget_s - (time.perf_counter() - t0)  # wall clock: shared by the processes
    threads = args.threads or torch.get_num_threads()
    per_member = max(1, threads // args.members)
    jobs = [(k, args.members, cfg, train_set, val_set, test_set, deadline, args.epochs, per_member)
            for k in range(args.members)]
    if args.members == 1:
        members = [train_member(*jobs[0])]
    else:
        print(f"training {args.members} networks at once, {per_member} thread(s) each, seeds "
              f"{cfg.seed}..{cfg.seed + args.members - 1}; the test predictions are the mean of their softmaxes")
        sys.stdout.flush()
        with torch.multiprocessing.get_context("spawn").Pool(args.members) as pool:
            members = pool.starmap(train_member, jobs)
    scores = top1_scores(members, test_set.labels)
    elapsed = time.perf_counter() - t0
    images_per_s = sum(m["images_per_s"] for m in members)  # the machine's training throughput
    for k, m in enumerate(members):
        own = top1_scores([m], test_set.labels)
        who = f"member {k + 1}: " if args.members > 1 else ""
        print(f"{who}training: {m['status']}, {m['epochs']} epochs, {m['step']} steps in {m['train_s']:.0f} s, "
              f"{m['images_per_s']:,.0f} images/s" + (f"; test top-1 {own['top1']:.1%} single view, "
                                                       f"{own['top1_tta']:.1%} 6 views" if args.members > 1 else ""))
    print(f"inference: {members[0]['inference_images_per_s']:,.0f} images/s (batch 500)")
    print(f"elapsed: {elapsed / 60:.1f} min (budget {args.minutes:g} min, data loading and evaluation included)")
    sys.stdout.flush()
    # ---- how close the step is to this machine's limit (after the budget: not in the time)
    from alexnet.checkpoint import load_model

    model, meta = load_model(Path(members[0]["out"]) / "model.safetensors")
    efficiency = step_efficiency(model.to(device), meta.input_size, device, images_per_s, bf16=cfg.amp == "bf16")
    print(f"training step: {efficiency['train_gflop_per_image']:.3f} GFLOP per image (forward + backward, counted) x "
          f"{images_per_s:,.0f} images/s = {efficiency['achieved_gflops']:,.0f} GFLOP/s; "
          f"matmul 2048^3 here: bf16 {efficiency['matmul_bf16_gflops']:,.0f} GFLOP/s, "
          f"fp32 {efficiency['matmul_fp32_gflops']:,.0f} GFLOP/s; ratio "
          f"{efficiency['ratio_bf16']:.2f} of bf16, {efficiency['ratio_fp32']:.2f} of fp32")
    what = f"ensemble of {args.members}, " if args.members > 1 else ""
    print(f"test top-1 {what}single view: {scores['top1']:.1%}")
    print(f"test top-1 {what}flip-averaged: {scores['top1_flip']:.1%}")
    print(f"test top-1 {what}flip + 1 px translations (6 views): {scores['top1_tta']:.1%}")
    print(f"test top-1: {scores['top1_tta']:.1%}")
    if tmp is not None:
        tmp.cleanup()
    out = {**scores, "inference_images_per_s": members[0]["inference_images_per_s"], "train_images_per_s": images_per_s,
           "elapsed_s": elapsed, "epochs": members[0]["epochs"], "members": args.members,
           "member_epochs": [m["epochs"] for m in members], **efficiency}
    if args.json is not None:
        report = {**out, "budget_minutes": args.minutes, "preset": args.preset, "pad": args.pad,
                  "status": members[0]["status"], "hardware": describe_hardware(device),
                  "train_images": len(train_set), "test_images": len(test_set), "amp": cfg.amp,
                  "model": cfg.model, "model_options": cfg.model_options, "batch_size": cfg.batch_size}
        args.json.write_text(json.dumps(report, indent=2))
    return out


def train_member(k: int, members: int, cfg: TrainConfig, train_set: InMemoryImages, val_set: InMemoryImages,
                 test_set: InMemoryImages, deadline: float, epochs: int | None, threads: int) -> dict:
    """Train network ``k`` of ``members`` (seed ``cfg.seed + k``, in ``OUT/member-k`` when
    there are several) until ``deadline`` (``time.time()``), validating on ``val_set`` after each
    epoch, then predict the test images.

    The epochs come from a short throughput measurement made here, so with several members
    it is taken while the others run (the speed each really gets); the engine then re-plans
    them from the measured epoch times (``fit_time_limit``). Room is left for the engine's
    last validation and the six test views (each costed as a pass at 3x the training speed).
    """
    import copy
    from contextlib import nullcontext

    from alexnet.checkpoint import load_model
    from alexnet.data.transforms import EvalTransform

    torch.set_num_threads(threads)
    cfg = copy.deepcopy(cfg)
    cfg.seed += k
    if members > 1:
        cfg.out = str(Path(cfg.out) / f"member-{k}")
    device = torch.device(cfg.device)
    say = f"[member {k + 1}] " if members > 1 else ""
    with engine_messages(say) if members > 1 else nullcontext():
        ips = measure_train_speed(cfg, train_set, device, seconds=min(10.0, (deadline - time.time()) / 40))
        eval_pass = len(test_set) / (3 * ips)
        reserve = 7 * eval_pass + 10.0
        if epochs is None:
            per_epoch = len(train_set) / ips + len(val_set) / (3 * ips) + 1.0
            cfg.epochs = max(1, math.floor((deadline - time.time() - reserve) / per_epoch))
            print(f"{say}measured {ips:,.0f} training images/s: {cfg.epochs} epochs fit in the budget")
            cfg.fit_time_limit = True  # the engine re-plans the epochs (stretching the schedule) as it goes
        else:
            cfg.epochs = epochs
        # The engine stops cleanly at this limit whatever happens (the schedule then ends early).
        cfg.time_limit_minutes = max(0.05, (deadline - time.time() - reserve) / 60)
        cfg.validate()
        if k == 0:
            muon = (f" (filters: lr {cfg.muon_lr}, momentum {cfg.muon_momentum}, normalised {cfg.muon_normalize})"
                    if cfg.optimizer == "muon" else "")
            print(f"config: {cfg.model} {cfg.model_options}, {cfg.optimizer}{muon}, batch {cfg.batch_size}, lr {cfg.lr}, "
                  f"momentum {cfg.momentum}, {cfg.schedule}, "
                  f"label smoothing {cfg.label_smoothing}, amp {cfg.amp}, channels_last {cfg.channels_last}, "
                  f"crop {cfg.crop}, cutout {cfg.cutout}, epochs {cfg.epochs}")
        sys.stdout.flush()
        # (a part of) the test set doubles as the engine's per-epoch validation
        result = train(cfg, train_set=train_set, val_set=val_set)
    model, meta = load_model(Path(cfg.out) / "model.safetensors")
    model.to(device).to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    pred = predict(model, test_set, EvalTransform(meta.input_size, meta.stats, meta.norm_mode), device,
                   bf16=cfg.amp == "bf16", channels_last=cfg.channels_last)
    sys.stdout.flush()
    return {**pred, "status": result.status, "epochs": result.epochs, "step": result.step,
            "train_s": result.elapsed_s, "images_per_s": result.images_per_s, "out": cfg.out}


def step_efficiency(model: torch.nn.Module, input_size: int, device: torch.device, images_per_s: float,
                    *, bf16: bool) -> dict[str, float]:
    """Achieved GFLOP/s of the training step (counted FLOPs per image x the run's measured
    images/s) beside a 2048^3 matrix product in bf16 and in fp32 timed now, on this device."""
    import copy

    # a copy: a training-mode pass would move the trained model's batch-norm statistics
    flops = train_step_flops(copy.deepcopy(model), (3, input_size, input_size), device)
    achieved = flops * images_per_s / 1e9
    # the best of five short timings: a stray process on the cores lowers one, not all
    bf16_gflops = max(matmul_tflops(device, n=2048, reps=3, dtype=torch.bfloat16) for _ in range(5)) * 1e3
    fp32_gflops = max(matmul_tflops(device, n=2048, reps=3, dtype=torch.float32) for _ in range(5)) * 1e3
    return {"train_gflop_per_image": flops / 1e9, "achieved_gflops": achieved, "matmul_bf16_gflops": bf16_gflops,
            "matmul_fp32_gflops": fp32_gflops, "ratio_bf16": achieved / bf16_gflops, "ratio_fp32": achieved / fp32_gflops,
            "amp_bf16": bf16}


if __name__ == "__main__":
    main()
