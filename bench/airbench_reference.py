"""What these images allow: airbench94_muon's published recipe, trained beside the project's.

    python bench/airbench_reference.py --train DIR --holdout 500 [--epochs 8] [--reference-only]

airbench94_muon (Keller Jordan, github.com/KellerJordan/cifar10-airbench) reports 94.01% on
CIFAR-10's test set (mean of 200 runs) after 8 epochs. This script is an independent
rewrite of that recipe from its published description, for one purpose: to say whether a
gap between ``bench/cifar10.py`` and airbench's figures is the project's port or the data.
It trains the reference recipe for ``--epochs`` on the same split and the same decoded
images as ``bench/cifar10.py``, then (unless ``--reference-only``) the project's ``cifar10``
preset for the same number of epochs (so both see the same images, the same compute to
within a few percent), and prints both test accuracies and their difference.

The reference recipe, as published: a frozen 2x2 patch-whitening convolution (24 filters:
the eigenvectors of the covariance of 2x2 patches of 5,000 training images, scaled by
their inverse square-root eigenvalues, and their negatives) with a bias trained for 3
epochs; three blocks of conv 3x3 -> max pool 2 -> batch norm -> GELU -> conv 3x3 -> batch
norm -> GELU (64, 256, 256 channels; Dirac-initialised; batch norm without scales,
momentum 0.6, eps 1e-12); max pool 3; a linear head without bias initialised to unit
standard deviation, its output divided by 256. Batch 2000, summed cross-entropy with label
smoothing 0.2; Muon (lr 0.24, Nesterov momentum 0.6, 3 Newton-Schulz steps, each filter
bank rescaled to norm sqrt(out channels) before its step) on the 3x3 filters; Nesterov SGD
(momentum 0.85) with lr 0.053 on the biases and 0.67 on the head, weight decay 2e-6 x
batch / lr; every lr decays linearly to zero over the run (the whitening bias's over its 3
epochs). Data: CIFAR-10's published channel mean and std, translations of up to 2 px
(reflect padding) and alternating flips (a random half of the images is flipped, and the
whole set is mirrored every other epoch). Tested on the centre view and the views shifted
1 px up-left and down-right, each with its mirror, the shifted pairs weighted half.

On a CPU with bf16 units the reference runs under bf16 autocast with channels_last, as
the project does (airbench runs fp16 on a GPU).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cifar10
from _common import bf16_supported, describe_hardware
from cifar10 import decode_all

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the recipe's constants (CIFAR-10's training set)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PUBLISHED_TOP1 = 0.9401  # airbench94_muon.py's docstring: mean of 200 runs, 8 epochs, CIFAR-10's own test set


# ---------------------------------------------------------------------------- the recipe


def newton_schulz(g: Tensor, steps: int = 3) -> Tensor:
    """An approximately orthogonal matrix with ``g``'s singular vectors (the quintic
    iteration with coefficients chosen for a steep slope at zero), computed in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + 1e-7)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class ReferenceMuon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, on weights kept at norm sqrt(out channels)."""

    def __init__(self, params, lr: float, momentum: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buf, alpha=group["momentum"])
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(newton_schulz(update.reshape(len(update), -1)).view(p.shape), alpha=-group["lr"])


def _norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)  # torch's momentum = 1 - the recipe's 0.6
    bn.weight.requires_grad_(False)
    return bn


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])  # the first c_in filters pass their input through
    return conv


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out), nn.MaxPool2d(2), _norm(c_out), nn.GELU(),
                         _conv(c_out, c_out), _norm(c_out), nn.GELU())


class ReferenceNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), classes: int = 10) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.body = nn.Sequential(nn.GELU(), _block(24, widths[0]), _block(widths[0], widths[1]),
                                  _block(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten())
        self.head = nn.Linear(widths[2], classes, bias=False)
        with torch.no_grad():
            self.head.weight /= self.head.weight.std()

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the 2x2 filters to the patch covariance's eigenvectors / sqrt(eigenvalue), and their negatives."""
        patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
        eigenvalues, eigenvectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (eigenvectors.T / (eigenvalues[:, None] + eps).sqrt()).reshape(12, 3, 2, 2).float()
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: Tensor, train_whitening_bias: bool = True) -> Tensor:
        bias = self.whiten.bias if train_whitening_bias else self.whiten.bias.detach()
        features = self.body(F.conv2d(x, self.whiten.weight, bias))
        return self.head(features) / features.size(1)


def normalise(images: Tensor) -> Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def translated(padded: Tensor, pad: int, generator: torch.Generator) -> Tensor:
    """A random window of each padded image, the size of the unpadded one (shifts of up to ``pad`` px)."""
    n, side = len(padded), padded.shape[-1] - 2 * pad
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    out = torch.empty(n, padded.shape[1], side, side, dtype=padded.dtype)
    for y in range(2 * pad + 1):
        for x in range(2 * pad + 1):
            pick = (dy == y) & (dx == x)
            out[pick] = padded[pick, :, y : y + side, x : x + side]
    return out


def train_reference(x: Tensor, y: Tensor, epochs: int, *, seed: int, bf16: bool,
                    batch_size: int = 2000) -> tuple[ReferenceNet, float, float]:
    """Train the recipe on uint8 images ``x`` ``[N, 3, 32, 32]``; returns the model, the
    training seconds and the training images per second."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = normalise(x)
    model = ReferenceNet(classes=int(y.max()) + 1).to(memory_format=torch.channels_last)
    model.init_whitening(images[:5000])
    batch_size = min(batch_size, len(images))
    steps_per_epoch = len(images) // batch_size
    total, whitening_steps = epochs * steps_per_epoch, 3 * steps_per_epoch
    decay = 2e-6 * batch_size
    norm_biases = [p for p in model.body.parameters() if p.ndim == 1 and p.requires_grad]
    sgd = torch.optim.SGD([{"params": [model.whiten.bias], "lr": 0.053, "weight_decay": decay / 0.053},
                           {"params": norm_biases, "lr": 0.053, "weight_decay": decay / 0.053},
                           {"params": [model.head.weight], "lr": 0.67, "weight_decay": decay / 0.67}],
                          momentum=0.85, nesterov=True)
    muon = ReferenceMuon([p for p in model.parameters() if p.ndim == 4 and p.requires_grad], lr=0.24, momentum=0.6)
    groups = sgd.param_groups + muon.param_groups
    base = [g["lr"] for g in groups]
    padded = F.pad(images, (2,) * 4, mode="reflect")
    flipped = torch.rand(len(images), generator=gen) < 0.5
    step = 0
    for epoch in range(epochs):
        batch = translated(padded, 2, gen)
        mirror = flipped ^ (epoch % 2 == 1)  # every other epoch each image is seen the other way round
        batch[mirror] = batch[mirror].flip(-1)
        order = torch.randperm(len(batch), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            inputs = batch[idx].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(inputs, train_whitening_bias=step < whitening_steps)
            F.cross_entropy(logits.float(), y[idx], label_smoothing=0.2, reduction="sum").backward()
            groups[0]["lr"] = base[0] * max(0.0, 1 - step / whitening_steps)
            for g, lr in zip(groups[1:], base[1:], strict=True):
                g["lr"] = lr * (1 - step / total)
            sgd.step()
            muon.step()
            model.zero_grad(set_to_none=True)
            step += 1
        print(f"reference epoch {epoch + 1}/{epochs}  step {step}  last batch loss "
              f"{F.cross_entropy(logits.float(), y[idx]).item():.4f}  {time.perf_counter() - start:.0f} s",
              flush=True)
    seconds = time.perf_counter() - start
    return model, seconds, step * batch_size / seconds


@torch.no_grad()
def reference_top1(model: ReferenceNet, x: Tensor, y: Tensor, *, bf16: bool) -> dict[str, float]:
    """Top-1 on the centre view, with its mirror, and over the six views (shifted pairs weighted half)."""
    model.eval()
    hits = {"top1": 0, "top1_flip": 0, "top1_tta": 0}
    for images, labels in zip(normalise(x).split(1000), y.split(1000), strict=True):
        padded = F.pad(images, (1,) * 4, mode="reflect")
        side = images.shape[-1]

        def pair(v: Tensor) -> tuple[Tensor, Tensor]:
            v = v.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(v).float(), model(v.flip(-1)).float()

        centre, mirror = pair(images)
        shifted = [sum(pair(padded[:, :, o : o + side, o : o + side])) / 2 for o in (0, 2)]
        tta = 0.5 * (centre + mirror) / 2 + 0.25 * (shifted[0] + shifted[1])
        for name, logits in (("top1", centre), ("top1_flip", centre + mirror), ("top1_tta", tta)):
            hits[name] += int((logits.argmax(1) == labels).sum())
    model.train()
    return {k: v / len(y) for k, v in hits.items()}


# ---------------------------------------------------------------------------- the benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cifar10.add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=8, help="epochs for both recipes (default 8: airbench94_muon's)")
    p.add_argument("--reference-only", action="store_true", help="train only the reference recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of the project's cifar10 preset (repeatable), as bench/cifar10.py's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    cifar10.check_data_arguments(p, args)
    if args.epochs < 1 or (args.threads is not None and args.threads < 1):
        p.error("--epochs and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(describe_hardware(device))
    bf16 = bf16_supported(device)
    train_groups, test_groups, _ = cifar10.data_groups(args)
    xtr, ytr, _, bad_tr = decode_all(train_groups)
    xte, yte, _, bad_te = decode_all(test_groups)
    print(f"data: {len(xtr)} training / {len(xte)} test images ({bad_tr + bad_te} unreadable skipped); "
          f"bf16 autocast {'on' if bf16 else 'off'}", flush=True)

    model, seconds, speed = train_reference(xtr, ytr, args.epochs, seed=args.seed, bf16=bf16)
    ref = reference_top1(model, xte, yte, bf16=bf16)
    ref_line = (f"reference (airbench94_muon's recipe, {args.epochs} epochs): test top-1 single view {ref['top1']:.1%}, "
                f"flip-averaged {ref['top1_flip']:.1%}, 6 views {ref['top1_tta']:.1%}; trained in {seconds:.0f} s, "
                f"{speed:,.0f} images/s (published: {PUBLISHED_TOP1:.2%} on CIFAR-10's own test set, 6 views)")
    print(ref_line, flush=True)
    result = {"reference_" + k: v for k, v in ref.items()}
    result.update(reference_train_s=seconds, reference_images_per_s=speed, epochs=args.epochs)
    if not args.reference_only:
        project_argv = ["--train", str(args.train), "--epochs", str(args.epochs), "--minutes", "100000", "--val-images", "1000"]
        project_argv += ["--holdout", str(args.holdout)] if args.holdout > 0 else ["--test", str(args.test)]
        if args.max_train:
            project_argv += ["--max-train", str(args.max_train)]
        if args.threads:
            project_argv += ["--threads", str(args.threads)]
        for item in args.set:
            project_argv += ["--set", item]
        print(f"project: python bench/cifar10.py {shlex.join(project_argv)}", flush=True)
        own = cifar10.main(project_argv)
        print(ref_line)
        print(f"project (cifar10 preset, {own['epochs']} epochs): test top-1 single view {own['top1']:.1%}, "
              f"flip-averaged {own['top1_flip']:.1%}, 6 views {own['top1_tta']:.1%}; "
              f"{own['train_images_per_s']:,.0f} images/s")
        diff = 100 * (own["top1_tta"] - ref["top1_tta"])
        print(f"project - reference: {diff:+.1f} points (6 views); speed ratio {own['train_images_per_s'] / speed:.2f}")
        result.update({"project_" + k: own[k] for k in ("top1", "top1_flip", "top1_tta", "train_images_per_s")})
    if args.json is not None:
        args.json.write_text(json.dumps({**result, "hardware": describe_hardware(device),
                                         "train_images": len(xtr), "test_images": len(xte)}, indent=2))
    return result


if __name__ == "__main__":
    main()
