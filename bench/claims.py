"""The paper's claims as controlled experiments on real photos, at a scale two CPU cores can run.

    python bench/claims.py [CLAIM ...] [--data DIR] [--seeds 3] [--steps 3000] [--out DIR]
    python bench/claims.py --quick            # every claim, tiny: a check that nothing rotted
    python bench/claims.py --list

Each claim is an experiment definition (:data:`CLAIMS`): two or more *variants* of one small
AlexNet-family network (:class:`NetSpec`, built from the project's layers: the paper's LRN,
overlapping pooling, grouped "towers"), trained identically on the same CIFAR-10 subset
with several seeds, and a metric. Nothing differs between variants but the one factor the
claim is about: same data, same seeds (initial weights drawn per seed), same optimiser
(the paper's update, :class:`~alexnet.training.optim.PaperSGD`, lr ``--lr``, momentum 0.9,
weight decay 5e-4 on weights), same number of steps. By default one learning rate serves every variant, stated in the
output. ``--lr 0.001,0.003,0.01`` runs every variant at each rate instead and records, per
variant, the rate that reached the target training error in the fewest steps: the paper's
protocol for Figure 1 ("the learning rates for each network were chosen independently to
make training as fast as possible").

What is measured (held-out = the last ``--val-per-class`` images of each class folder):

1. ``relu``: steps until the training error (mean over a window of batches) first reaches
   ``--target-error`` (paper, Figure 1: 25%, six times fewer steps with ReLU than tanh),
   with a 4-layer CNN (3 conv + 1 linear layer, no LRN, no dropout).
2. ``lrn``: held-out error with and without LRN after conv1 and conv2.
3. ``pool``: held-out error with 3/2 (overlapping) vs 2/2 max pooling.
4. ``dropout``: held-out error, the gap between held-out and training error, and steps to
   the target training error, with dropout 0.5 in the two hidden fc layers vs none.
5. ``augment``: held-out error with none, with random crops + flips, and with crops + flips +
   PCA lighting (:class:`~alexnet.data.transforms.TrainAugment`).
6. ``towers``: two towers (groups=2 in conv2/4/5, LRN per tower) vs one tower with half as
   many kernels per layer; held-out error, and the towers' specialisation: the mean
   colourfulness (:func:`colourfulness`) of conv1's kernels feeding each tower.
7. ``depth``: held-out error with all five conv layers vs without conv4.
8. ``testtime``: one network's held-out error from the centre crop vs ten crops (softmax
   averaged), and an ensemble (softmax averaged) of one network per seed vs one network.

Output in ``--out``: ``results.json`` (every seed's figures and curves), ``claims.md`` (the
table: mean +- standard deviation over seeds beside the paper's figure) and one PNG per
claim. A claim that disagrees with the paper is reported as measured: nothing here is tuned
toward the expected answer.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model

from alexnet.data.stats import DatasetStats, compute_stats
from alexnet.data.transforms import EvalTransform, TrainAugment
from alexnet.layers import LocalResponseNorm
from alexnet.metrics import topk_hits
from alexnet.training.optim import PaperSGD
from alexnet.training.trainer import parameter_groups

ROOT = Path(__file__).resolve().parent.parent
BASE_CHANNELS = (32, 64, 96, 96, 64)  # conv1..conv5: the paper's 96-256-384-384-256 over 3-4
GROUPED = (2, 4, 5)  # the layers that see only their own tower's maps (paper Figure 2)


# --------------------------------------------------------------------------- the networks


@dataclass(frozen=True)
class NetSpec:
    """One member of the small AlexNet family (for 24-32 px inputs)."""

    act: str = "relu"  # "relu" | "tanh"
    lrn: bool = True  # the paper's LRN (k=2, n=5, alpha=1e-4, beta=0.75) after conv1 and conv2
    pool: tuple[int, int] = (3, 2)  # max-pool window, stride (paper: 3, 2; "non-overlapping": 2, 2)
    dropout: float = 0.5  # in the hidden fc layers
    towers: int = 2  # groups of conv2, conv4, conv5 (and the LRN windows)
    width: float = 1.0  # multiplies BASE_CHANNELS
    convs: tuple[int, ...] = (1, 2, 3, 4, 5)  # which of the five conv layers are present
    hidden_fc: int = 2  # hidden fc layers (paper: fc6, fc7)
    fc_dim: int = 256


class SmallAlexNet(nn.Module):
    """conv1 5x5 -> [LRN] -> pool -> conv2 5x5 -> [LRN] -> pool -> conv3..5 3x3 -> pool -> fc.

    Pools follow conv1, conv2 and the last conv layer, as in the paper; a removed conv layer
    simply drops out of the chain (``convs``). ``feature_channels`` gives each conv's output.
    """

    def __init__(self, spec: NetSpec, num_classes: int, input_size: int) -> None:
        super().__init__()
        if spec.act not in ("relu", "tanh"):
            raise ValueError(f"unknown activation {spec.act!r}")
        self.spec = spec
        act: Callable[[], nn.Module] = nn.ReLU if spec.act == "relu" else nn.Tanh
        layers: list[nn.Module] = []
        cin = 3
        last = max(spec.convs)
        for i in spec.convs:
            cout = max(spec.towers, round(BASE_CHANNELS[i - 1] * spec.width / spec.towers) * spec.towers)
            k = 5 if i <= 2 else 3
            groups = spec.towers if i in GROUPED and cin % spec.towers == 0 else 1
            conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
            conv.layer_name = f"conv{i}"  # type: ignore[attr-defined]
            layers += [conv, act()]
            if spec.lrn and i <= 2:
                layers.append(LocalResponseNorm(groups=spec.towers))
            if i <= 2 or i == last:
                layers.append(nn.MaxPool2d(*spec.pool))
            cin = cout
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, input_size, input_size)).numel()
        head: list[nn.Module] = [nn.Flatten()]
        for _ in range(spec.hidden_fc):
            head += [nn.Linear(flat, spec.fc_dim), act()]
            if spec.dropout > 0:
                head.append(nn.Dropout(spec.dropout))
            flat = spec.fc_dim
        head.append(nn.Linear(flat, num_classes))
        self.classifier = nn.Sequential(*head)
        # He initialisation for every variant (tanh too: one init for all, so the activation is
        # the only difference). PyTorch's default init left the 8-layer base network at chance
        # for 300 steps at lr 0.01 (measured; the 4-layer one learned), which would make every
        # claim on it vacuous; the paper's N(0, 0.01) with biases 1 is the subject of docs/recipe.md.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def conv1(self) -> nn.Conv2d:
        return next(m for m in self.features if isinstance(m, nn.Conv2d))


def colourfulness(kernels: Tensor) -> Tensor:
    """Per kernel ``[C_out, 3, k, k]``: the fraction of its energy that is colour, i.e. not
    the same in R, G and B: ``||w - mean_rgb(w)||^2 / ||w - mean(w)||^2`` in [0, 1]. A
    colour-agnostic (grey) kernel scores 0; the paper saw one tower's conv1 kernels near 0
    and the other's high."""
    w = kernels.detach().float()
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    chroma = w - w.mean(dim=1, keepdim=True)
    return chroma.pow(2).sum(dim=(1, 2, 3)) / w.pow(2).sum(dim=(1, 2, 3)).clamp_min(1e-12)


# --------------------------------------------------------------------------- data


@dataclass
class Data:
    """uint8 ``[N, 3, S, S]`` training and held-out images, labels, and the training statistics."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    classes: list[str]
    stats: DatasetStats
    source: str

    @property
    def size(self) -> int:
        return int(self.train_x.shape[-1])


def default_data() -> Path | None:
    for base in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"):
        if (base / "cifar10" / "train").is_dir():
            return base / "cifar10" / "train"
    return None


def load_cifar(root: Path, train_per_class: int, val_per_class: int, classes: int = 10) -> Data:
    """The first ``train_per_class`` files of each class folder train; the last ``val_per_class`` are held out."""
    from cifar10 import load_split

    tx, ty, vx, vy, names = load_split(root, classes, train_per_class, val_per_class)
    return Data(tx, ty, vx, vy, names, compute_stats(tx.split(1024)), str(root))


def synthetic_data(classes: int = 4, train_per_class: int = 16, val_per_class: int = 8, size: int = 32,
                   seed: int = 0) -> Data:
    """Coloured noise, one colour per class: learnable in a few steps (for testing the harness)."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(0, 256, (classes, 3, 1, 1), generator=g)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(classes).repeat_interleave(n)
        x = (colours[y] + torch.randint(-60, 60, (len(y), 3, size, size), generator=g)).clamp(0, 255)
        return x.to(torch.uint8), y

    tx, ty = make(train_per_class)
    vx, vy = make(val_per_class)
    return Data(tx, ty, vx, vy, [f"c{i}" for i in range(classes)], compute_stats([tx]), "synthetic")


# --------------------------------------------------------------------------- one training run


@dataclass(frozen=True)
class Augment:
    crop_flip: bool = True
    lighting: float = 0.0


@dataclass(frozen=True)
class RunSettings:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 0.01
    crop: int = 28
    window: int = 20  # batches in the running training error
    target_error: float = 0.25
    threads: int | None = None


@dataclass
class RunResult:
    train_error_curve: list[float]  # running training error after each step (window mean)
    steps_to_target: int | None  # first step where the running training error <= target
    val_error: float
    val_error_10crop: float
    train_error: float  # of the training images, eval mode, centre crop (same count as held out)
    val_probs: Tensor = field(repr=False)  # softmax of the centre crop, per held-out image
    val_probs_10crop: Tensor = field(repr=False)  # softmax averaged over the ten crops
    seconds: float = 0.0
    colour_towers: list[float] | None = None


def steps_to(curve: Sequence[float], target: float) -> int | None:
    """1-based step at which ``curve`` first reaches ``target`` or below; None: never."""
    for i, e in enumerate(curve):
        if e <= target:
            return i + 1
    return None


@torch.no_grad()
def _probs(model: nn.Module, x: Tensor, tf: EvalTransform, views_per_forward: int = 256) -> Tensor:
    # About 256 views per forward: at 5,000 (500 images x 10 crops) the LRN's elementwise
    # passes fall out of cache and held-out evaluation took 4x longer (measured: 28 s vs 7 s).
    model.eval()
    out = []
    for chunk in x.split(max(1, views_per_forward // (10 if tf.ten_crop else 1))):
        v = tf(chunk)
        if v.dim() == 5:  # ten crops: average the softmax
            b, n = v.shape[:2]
            out.append(F.softmax(model(v.flatten(0, 1)), dim=1).view(b, n, -1).mean(1))
        else:
            out.append(F.softmax(model(v), dim=1))
    return torch.cat(out)


def train_run(spec: NetSpec, data: Data, settings: RunSettings, seed: int, augment: Augment = Augment()) -> RunResult:
    """Train one network from seed ``seed`` and measure it. Everything random (initial
    weights, batch order, crops, dropout) is drawn from generators seeded with ``seed``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    s = settings
    crop = min(s.crop, data.size)
    model = SmallAlexNet(spec, len(data.classes), crop)
    opt = PaperSGD(parameter_groups(model, 5e-4, False), lr=s.lr, momentum=0.9)
    aug = TrainAugment(crop, data.stats, "channel", lighting=augment.lighting, flip=augment.crop_flip,
                       random_crop=augment.crop_flip)
    g = torch.Generator().manual_seed(seed)
    n = len(data.train_y)
    errors: list[float] = []
    curve: list[float] = []
    order = torch.randperm(n, generator=g)
    pos = 0
    model.train()
    for _ in range(s.steps):
        if pos + s.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + s.batch_size]
        pos += s.batch_size
        x, y = aug(data.train_x[idx], generator=g), data.train_y[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            errors.append(1.0)  # a diverged run counts as all wrong from here on
            curve.append(1.0)
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        errors.append(float((logits.argmax(1) != y).float().mean()))
        w = errors[-s.window :]
        curve.append(sum(w) / len(w))
    centre = EvalTransform(crop, data.stats, "channel")
    ten = EvalTransform(crop, data.stats, "channel", ten_crop=True)
    val_probs = _probs(model, data.val_x, centre)
    val_err = error_rate(val_probs, data.val_y)
    val_probs10 = _probs(model, data.val_x, ten)
    val_err10 = error_rate(val_probs10, data.val_y)
    k = min(n, len(data.val_y))
    sub = torch.linspace(0, n - 1, k).long()  # evenly spaced training images, as many as held out
    train_err = error_rate(_probs(model, data.train_x[sub], centre), data.train_y[sub])
    colour = None
    if spec.towers > 1:
        c = colourfulness(model.conv1().weight)
        colour = [float(part.mean()) for part in c.chunk(spec.towers)]
    return RunResult(curve, steps_to(curve, s.target_error), val_err, val_err10, train_err, val_probs,
                     val_probs10, time.perf_counter() - t0, colour)


# --------------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Variant:
    spec: NetSpec = NetSpec()
    augment: Augment = Augment()


FOUR_LAYER = NetSpec(lrn=False, dropout=0.0, towers=1, convs=(1, 2, 3), hidden_fc=0)
BASE = NetSpec()  # five conv layers, LRN, overlapping pooling, dropout 0.5, two towers


@dataclass(frozen=True)
class Claim:
    key: str
    title: str
    paper: str  # the paper's figure, in words
    variants: dict[str, Variant]
    metrics: tuple[str, ...]  # per-variant metrics to tabulate (keys of :func:`seed_metrics`)


CLAIMS: dict[str, Claim] = {c.key: c for c in (
    Claim("relu", "ReLU vs tanh (4-layer CNN)",
          "tanh needs ~6x the iterations of ReLU to reach 25% training error on CIFAR-10 (Figure 1)",
          {"relu": Variant(FOUR_LAYER), "tanh": Variant(replace(FOUR_LAYER, act="tanh"))},
          ("steps_to_target", "val_error")),
    Claim("lrn", "Local response normalisation",
          "LRN: -1.4% top-1 (ImageNet); 13% -> 11% test error for a 4-layer CNN on CIFAR-10",
          {"lrn": Variant(BASE), "no-lrn": Variant(replace(BASE, lrn=False))}, ("val_error",)),
    Claim("pool", "Overlapping pooling", "3/2 vs 2/2 pooling: -0.4% top-1, -0.3% top-5",
          {"3/2": Variant(BASE), "2/2": Variant(replace(BASE, pool=(2, 2)))}, ("val_error",)),
    Claim("dropout", "Dropout",
          "without dropout substantial overfitting; dropout roughly doubles the iterations to converge",
          {"dropout 0.5": Variant(BASE), "no dropout": Variant(replace(BASE, dropout=0.0))},
          ("val_error", "gap", "steps_to_target")),
    Claim("augment", "Data augmentation",
          "without augmentation substantial overfitting; PCA lighting: -1% top-1",
          {"none": Variant(BASE, Augment(crop_flip=False)), "crop+flip": Variant(BASE, Augment(True, 0.0)),
           "crop+flip+lighting": Variant(BASE, Augment(True, 0.1))}, ("val_error", "gap")),
    Claim("towers", "Two towers vs one tower of half width",
          "two GPUs vs half the kernels on one: -1.7% top-1, -1.2% top-5; one tower's conv1 kernels "
          "colour-agnostic, the other's colour-specific",
          {"two towers": Variant(BASE), "one tower, half width": Variant(replace(BASE, towers=1, width=0.5))},
          ("val_error", "colour_gap")),
    Claim("depth", "Depth: a middle conv layer removed", "removing any middle conv layer: about +2% top-1 error",
          {"5 conv": Variant(BASE), "without conv4": Variant(replace(BASE, convs=(1, 2, 3, 5)))}, ("val_error",)),
    Claim("testtime", "Test time: ten crops and ensembles",
          "1 CNN 40.7% / 5 CNNs 38.1% top-1 error (ILSVRC-2012 val); ten-crop averaging used throughout",
          {"1 CNN": Variant(BASE)}, ("val_error", "val_error_10crop")),
)}


def seed_metrics(r: RunResult) -> dict[str, float | None]:
    """The figures of one run that the table can show."""
    gap = r.colour_towers
    return {
        "val_error": r.val_error, "val_error_10crop": r.val_error_10crop, "train_error": r.train_error,
        "gap": r.val_error - r.train_error, "steps_to_target": r.steps_to_target,
        "colour_gap": None if gap is None else abs(gap[0] - gap[-1]), "seconds": r.seconds,
    }


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation of the values that exist (None: not reached); count of those."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def run_claim(claim: Claim, data: Data, settings: RunSettings, seeds: Sequence[int],
              lrs: Sequence[float] = ()) -> dict[str, Any]:
    """Every variant of ``claim`` with every seed; per-seed figures, curves and summaries.

    With several learning rates ``lrs`` every variant runs at each (named "VARIANT, lr X") and,
    for a claim about steps to the target, ``fastest`` holds each variant's fastest rate."""
    t0 = time.perf_counter()
    lrs = list(lrs) or [settings.lr]
    out: dict[str, Any] = {"claim": claim.key, "title": claim.title, "paper": claim.paper, "variants": {}}
    runs: dict[str, list[RunResult]] = {}
    for name, v in claim.variants.items():
        for lr in lrs:
            label = name if len(lrs) == 1 else f"{name}, lr {lr:g}"
            runs[label] = [train_run(v.spec, data, replace(settings, lr=lr), seed, v.augment) for seed in seeds]
            per_seed = [seed_metrics(r) for r in runs[label]]
            out["variants"][label] = {
                "variant": name, "lr": lr, "spec": asdict(v.spec), "augment": asdict(v.augment),
                "per_seed": per_seed, "curves": [r.train_error_curve for r in runs[label]],
                "colour_towers": [r.colour_towers for r in runs[label]],
                "summary": {m: mean_std([p[m] for p in per_seed]) for m in (*claim.metrics, "train_error", "seconds")},
            }
    if claim.key == "testtime":  # the ensemble: softmax averaged over one network per seed
        for label, members in list(runs.items()):
            errs = ensemble_errors(members, data.val_y)
            out["variants"][f"{len(members)} CNNs (ensemble){label.removeprefix('1 CNN')}"] = {
                "members": len(members), "per_seed": [errs], "curves": [],
                "summary": {metric: (err, None, 1) for metric, err in errs.items()}}
    compare_variants(out)
    out["seconds"] = time.perf_counter() - t0
    return out


def compare_variants(res: dict[str, Any]) -> None:
    """Add the figures that compare variants to a claim's result (one home for a fresh run and
    for ``--combine``): for a claim about steps to the target, the common level and, when the
    variants ran at several learning rates, each variant's fastest rate."""
    if "steps_to_target" not in CLAIMS[res["claim"]].metrics:
        return
    res["common_level"] = common_level(res["variants"])
    if len({v["lr"] for v in res["variants"].values() if "lr" in v}) > 1:
        res["fastest"] = fastest_rates(res["variants"])


def error_rate(probs: Tensor, labels: Tensor) -> float:
    """Fraction of images whose most probable class is not their label."""
    return 1.0 - topk_hits(probs, labels, (1,)).item() / len(labels)


def ensemble_errors(members: Sequence[RunResult], labels: Tensor) -> dict[str, float]:
    """Held-out error of the members' averaged softmax, from the centre crop and from ten crops."""
    return {"val_error": error_rate(torch.stack([r.val_probs for r in members]).mean(0), labels),
            "val_error_10crop": error_rate(torch.stack([r.val_probs_10crop for r in members]).mean(0), labels)}


def common_level(variants: dict[str, Any]) -> dict[str, Any]:
    """Steps each variant's mean running training error takes to reach the lowest level that
    every variant's mean curve reaches: a convergence speed that exists even when a variant
    never reaches ``--target-error`` (the level is set by the slowest variant, so it is the
    comparison the data can make, not one chosen afterwards)."""
    means = {name: torch.tensor(v["curves"]).mean(0) for name, v in variants.items() if v.get("curves")}
    if not means:
        return {}
    level = max(float(c.min()) for c in means.values())
    return {"level": level, "steps": {name: steps_to(c.tolist(), level + 1e-9) for name, c in means.items()}}


def common_level_text(res: dict[str, Any]) -> str:
    common = res.get("common_level")
    if not common:
        return ""
    steps = common["steps"]
    parts = ", ".join(f"{name} {n:,}" for name, n in steps.items())
    text = (f"Steps until the mean running training error first reaches {100 * common['level']:.1f}% "
            f"(the lowest level every variant reaches; {res['title']}): {parts}")
    if len(steps) == 2:
        (a, na), (b, nb) = steps.items()
        text += f"; ratio {a} / {b}: {na / nb:.2f}"
    return text


def fastest_rates(variants: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant, the learning rate whose seeds reached the target most often, and among
    those in the fewest mean steps: the paper's "as fast as possible" choice, made on the
    measured curves. A variant no rate brought to the target maps to ``lr: None``."""
    best: dict[str, dict[str, Any]] = {}
    for v in variants.values():
        mean, std, reached = v["summary"]["steps_to_target"]
        if not reached:
            best.setdefault(v["variant"], {"lr": None, "steps": None, "std": None, "reached": 0})
            continue
        current = best.get(v["variant"])
        if current is None or current["lr"] is None or (-reached, mean) < (-current["reached"], current["steps"]):
            best[v["variant"]] = {"lr": v["lr"], "steps": mean, "std": std, "reached": reached}
    return best


def fastest_text(res: dict[str, Any], n_seeds: int) -> str:
    """One line per variant of its fastest rate, and the ratio of the two step counts."""
    fastest = res.get("fastest")
    if not fastest:
        return ""
    lines = [f"Fastest learning rate per variant ({res['title']}):"]
    for name, f in fastest.items():
        if f["lr"] is None:
            lines.append(f"- {name}: no rate reached the target")
        else:
            lines.append(f"- {name}: lr {f['lr']:g}, {_fmt((f['steps'], f['std'], f['reached']), 'steps_to_target', n_seeds)} steps")
    reached = [f for f in fastest.values() if f["lr"] is not None]
    if len(fastest) == 2 and len(reached) == 2:
        (a, fa), (b, fb) = fastest.items()
        lines.append(f"- ratio {b} / {a}: {fb['steps'] / fa['steps']:.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- table and plots


def _fmt(ms: Sequence[Any], metric: str, n_seeds: int) -> str:
    mean, std, count = ms
    if mean is None:
        return "not reached" if metric == "steps_to_target" else "-"
    pct = metric != "steps_to_target"
    m, s = (100 * mean, None if std is None else 100 * std) if pct else (mean, std)
    unit = "%" if pct else ""
    text = f"{m:.1f}{unit}" if s is None else f"{m:.1f} ± {s:.1f}{unit}"
    if metric == "steps_to_target" and count < n_seeds:
        text += f" ({count}/{n_seeds} seeds reached)"
    return text


METRIC_NAMES = {
    "val_error": "held-out error", "val_error_10crop": "held-out error, 10 crops", "gap": "held-out - train error",
    "steps_to_target": "steps to target train error", "colour_gap": "conv1 colourfulness gap between towers",
}


def table(results: Sequence[dict[str, Any]], n_seeds: int) -> str:
    """The markdown table: claim, variant, metric, mean ± std over seeds, the paper's figure."""
    rows = ["| claim | variant | metric | ours (mean ± std over seeds) | paper |", "| --- | --- | --- | --- | --- |"]
    for res in results:
        claim = CLAIMS[res["claim"]]
        first = True
        for name, v in res["variants"].items():
            for metric in claim.metrics:
                if metric not in v["summary"]:
                    continue
                rows.append(f"| {claim.title if first else ''} | {name} | {METRIC_NAMES[metric]} | "
                            f"{_fmt(v['summary'][metric], metric, n_seeds)} | {claim.paper if first else ''} |")
                first = False
    return "\n".join(rows)


# The paper's Table 2 rows that the test-time claim mirrors (ILSVRC-2012 validation, top-1 / top-5
# error, ten-crop averaging as throughout the paper): the paper's figures, not ours.
PAPER_TEST_TIME = {"1 CNN": "40.7% / 18.2%", "ensemble": "38.1% / 16.4% (5 CNNs)"}


def results_table(res: dict[str, Any]) -> str:
    """The test-time claim laid out as the paper's results table: rows 1 CNN and N CNNs,
    our held-out top-1 error from the centre crop and from ten crops (mean ± std over seeds
    for one network; the ensemble is one figure), beside the paper's ImageNet figures."""
    rows = ["| model | ours: held-out top-1 error, centre crop | ours: ten crops | "
            "the paper's: ILSVRC-2012 val top-1 / top-5 error (ImageNet, ten crops) |",
            "| --- | --- | --- | --- |"]
    for name, v in res["variants"].items():
        paper = PAPER_TEST_TIME["ensemble" if "members" in v else "1 CNN"]
        cells = [_fmt(v["summary"][m], m, 1) if m in v["summary"] else "-" for m in ("val_error", "val_error_10crop")]
        rows.append(f"| {name} | {cells[0]} | {cells[1]} | {paper} (paper) |")
    return "\n".join(rows)


def plot(res: dict[str, Any], path: Path, target: float) -> None:
    """Left: running training error against steps per variant (mean over seeds, band = min..max).
    Right: each variant's training error and held-out error at the end (mean, bar = std over
    seeds), so a reader sees the gap that dropout and augmentation are about. For the
    test-time claim: held-out error per evaluation (centre, ten crops, ensemble)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(ax: Any, groups: list[tuple[str, list[tuple[str, Any]]]]) -> None:
        """Grouped bars: per group (a variant) one bar per (label, (mean, std, n)) in percent."""
        labels = list(dict.fromkeys(label for _, items in groups for label, _ in items))
        width = 0.8 / max(1, len(labels))
        for j, label in enumerate(labels):
            xs, ys, es = [], [], []
            for i, (_, items) in enumerate(groups):
                for name, (mean, std, _n) in items:
                    if name == label and mean is not None:
                        xs.append(i + (j - (len(labels) - 1) / 2) * width)
                        ys.append(100 * mean)
                        es.append(100 * (std or 0.0))
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=label)
            for x, y, e in zip(xs, ys, es, strict=True):
                ax.annotate(f"{y:.1f}", (x, y + e), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=8,
                      rotation=25 if len(groups) > 3 else 0, ha="right" if len(groups) > 3 else "center")
        ax.legend(fontsize=8)

    if res["claim"] == "testtime":
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        groups = [(name, [(("centre crop", "ten crops")[k], v["summary"][m])
                          for k, m in enumerate(("val_error", "val_error_10crop")) if m in v["summary"]])
                  for name, v in res["variants"].items()]
        bars(ax, groups)
        ax.set_ylabel("held-out error (%)")
        ax.set_title(res["title"], fontsize=10)
    else:
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
        for name, v in res["variants"].items():
            curves = [c for c in v["curves"] if c]
            if not curves:
                continue
            t = torch.tensor([c[: min(map(len, curves))] for c in curves]) * 100
            steps = range(1, t.shape[1] + 1)
            ax.plot(steps, t.mean(0), label=name)
            ax.fill_between(steps, t.min(0).values, t.max(0).values, alpha=0.2)
        ax.axhline(100 * target, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("step")
        ax.set_ylabel("training error, running (%)")
        ax.legend(fontsize=8)
        ax.set_title(res["title"], fontsize=10)
        groups = [(name, [(label, v["summary"][m]) for label, m in (("training", "train_error"),
                                                                      ("held-out", "val_error")) if m in v["summary"]])
                  for name, v in res["variants"].items()]
        bars(bx, groups)
        bx.set_ylabel("error at the end (%)")
        bx.set_title("training (eval mode, centre crop) and held-out error", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def learning_rates(text: str) -> list[float]:
    """``0.01`` or ``0.001,0.003,0.01``: positive, finite rates (an argparse type)."""
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a comma-separated list of numbers: {text!r}") from None
    if not all(math.isfinite(r) and r > 0 for r in rates):
        raise argparse.ArgumentTypeError(f"learning rates must be finite and > 0: {text!r}")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("claims", nargs="*", help=f"which (default: all): {', '.join(CLAIMS)}")
    p.add_argument("--data", default=None, help="CIFAR-10 style DIR/<class>/*.jpg (default: the shared copy); "
                   "'synthetic' for coloured noise")
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--val-per-class", type=int, default=200)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=learning_rates, default=[0.01],
                   help="learning rate, or several (comma-separated): every variant at each, and its fastest kept")
    p.add_argument("--target-error", type=float, default=0.25)
    p.add_argument("--out", type=Path, default=Path("runs/claims"))
    p.add_argument("--quick", action="store_true", help="tiny: 50+20 images per class, 30 steps, 2 seeds")
    p.add_argument("--list", action="store_true", help="list the claims and exit")
    p.add_argument("--combine", type=Path, nargs="+", metavar="DIR",
                   help="no training: rebuild the table and plots in --out from earlier runs' DIR/results.json, "
                        "combining the variants of a claim run in separate processes (e.g. one learning rate each)")
    args = p.parse_args(argv)
    if args.quick:
        args.train_per_class, args.val_per_class, args.steps, args.seeds = 50, 20, 30, 2
    unknown = [c for c in args.claims if c not in CLAIMS]
    if unknown:
        p.error(f"unknown claim(s) {', '.join(unknown)}; choose from {', '.join(CLAIMS)}")
    return args


def describe_run(meta: dict[str, Any]) -> str:
    """The header line of one run: command, date, machine, data and settings."""
    st = meta["settings"]
    rates = ", ".join(f"{lr:g}" for lr in meta.get("learning_rates", [st["lr"]]))
    return (f"`{meta['command']}`: {meta['date']}, {meta['cpu']} ({meta['threads']} threads), torch {meta['torch']}; "
            f"{meta['train_images']} training / {meta['held_out_images']} held-out images, seeds {meta['seeds']}, "
            f"{st['steps']} steps of {st['batch_size']}, lr {rates}")


def write_outputs(out: Path, results: list[dict[str, Any]], metas: list[dict[str, Any]]) -> str:
    """The table, the plots and ``results.json`` of ``results`` in ``out``; returns the table text."""
    out.mkdir(parents=True, exist_ok=True)
    n_seeds = max(len(m["seeds"]) for m in metas)
    target = metas[0]["settings"]["target_error"]
    for res in results:
        plot(res, out / f"{res['claim']}.png", target)
    meta: dict[str, Any] = metas[0] if len(metas) == 1 else {"combined_from": metas}
    (out / "results.json").write_text(json.dumps({"meta": meta, "claims": results}, indent=1))
    extras = [common_level_text(r) for r in results] + [fastest_text(r, n_seeds) for r in results]
    extras += [results_table(r) for r in results if r["claim"] == "testtime"]
    text = "\n\n".join([table(results, n_seeds), *filter(None, extras)])
    header = "\n".join(describe_run(m) for m in metas)
    (out / "claims.md").write_text(f"{header}\n\n{text}\n")
    return text


def load_results(dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Claims and run descriptions from earlier runs' ``results.json``. Variants of one claim
    from several runs are combined (e.g. one process per learning rate), labelled with their
    rate when the rates differ, and the cross-variant figures are recomputed."""
    claims_by_key: dict[str, dict[str, Any]] = {}
    metas: list[dict[str, Any]] = []
    entries: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for d in dirs:
        path = d / "results.json"
        try:
            doc = json.loads(path.read_text())
            meta, found = doc["meta"], doc["claims"]
            lr = meta["settings"]["lr"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: {path}: not a results.json of bench/claims.py ({e.__class__.__name__}: {e})") from None
        metas.extend(meta.get("combined_from", [meta]))
        for res in found:
            if res.get("claim") not in CLAIMS:
                raise SystemExit(f"error: {path}: unknown claim {res.get('claim')!r}")
            claims_by_key.setdefault(res["claim"], {k: v for k, v in res.items() if k != "variants"} | {"seconds": 0.0})
            claims_by_key[res["claim"]]["seconds"] += res.get("seconds", 0.0)
            for label, v in res["variants"].items():
                entries.setdefault(res["claim"], []).append((label, {"variant": label, "lr": lr} | v))
    results = []
    for key, res in claims_by_key.items():
        rates = {v["lr"] for _, v in entries[key]}
        res["variants"] = {}
        for label, v in entries[key]:
            name = label if len(rates) == 1 or ", lr " in label else f"{v['variant']}, lr {v['lr']:g}"
            if name in res["variants"]:
                raise SystemExit(f"error: variant {name!r} of claim {key!r} appears in more than one run")
            res["variants"][name] = v
        compare_variants(res)
        results.append(res)
    return results, metas


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.list:
        for c in CLAIMS.values():
            print(f"{c.key:9s} {c.title}: {c.paper}")
        return []
    if args.combine:
        results, metas = load_results(args.combine)
        print(write_outputs(args.out, results, metas))
        return results
    if args.data == "synthetic":
        data = synthetic_data(train_per_class=args.train_per_class, val_per_class=args.val_per_class)
    else:
        root = Path(args.data) if args.data else default_data()
        if root is None:
            raise SystemExit("error: no CIFAR-10 folder found; pass --data DIR (or --data synthetic)")
        data = load_cifar(root, args.train_per_class, args.val_per_class)
    settings = RunSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr[0], target_error=args.target_error)
    seeds = list(range(args.seeds))
    results = []
    for key in args.claims or list(CLAIMS):
        results.append(run_claim(CLAIMS[key], data, settings, seeds, args.lr))
        print(f"{key}: {results[-1]['seconds']:.0f} s", flush=True)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "data": data.source,
        "train_images": len(data.train_y), "held_out_images": len(data.val_y), "seeds": seeds,
        "settings": asdict(settings), "learning_rates": args.lr,
        "command": "python bench/claims.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(write_outputs(args.out, results, [meta]))
    return results


if __name__ == "__main__":
    main()
