"""Training throughput of the paper's AlexNet: the classic recipe against the project's fast path.

Synthetic images and labels are created once, already on the device, so the figure is
the training step alone (forward, backward, optimiser step), no data loading:

* ``baseline``: fp32, NCHW, eager, PyTorch's own LRN (``F.local_response_norm``, which
  pads to 5-D and average-pools), a plain per-parameter SGD loop: the classic recipe.
* ``torchvision``: torchvision's ``alexnet`` (the single-column "one weird trick" net,
  a different and cheaper network: no LRN, no groups) in the same classic setting,
  only where ``import torchvision`` works.
* ``fast``: bf16 autocast with fp32 master weights (where the hardware has bf16),
  channels_last, ``torch.compile`` (``--compile-mode reduce-overhead`` adds CUDA graphs),
  fused SGD on CUDA (foreach elsewhere), and the project's slice-sum LRN
  (:func:`alexnet.layers.lrn`).

Achieved TFLOP/s count a training image as 3x the forward FLOPs (backward ~ 2x forward)
with multiply-add = 2 FLOPs; the forward count comes from ``FlopCounterMode`` on the model
itself and is printed (1.449 GFLOP for ``alexnet`` at 224 px, so 4.35 GFLOP per image).
Each figure is also given as a fraction of a bf16 matrix product measured in the same run
(``--matmul-size``; ``--matmul-size 0`` skips it): the attainable ceiling on this device now.

    python bench/train_throughput.py                        # CUDA: batch 128, 256, 512
    python bench/train_throughput.py --device cpu --batch-sizes 16 --steps 3
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    bf16_supported,
    describe_hardware,
    forward_flops,
    make_sgd,
    matmul_tflops,
    maybe_autocast,
    resolve_device,
    time_first,
    time_steps,
)

from alexnet.layers import LocalResponseNorm
from alexnet.models import create_model


class TorchLRN(nn.Module):
    """The stock-PyTorch way to write the paper's LRN (what the baseline uses).

    ``F.local_response_norm`` divides ``alpha`` by ``size``, hence ``alpha * size``; the
    per-tower groups become a reshape, which copies a channels_last tensor.
    """

    def __init__(self, lrn: LocalResponseNorm) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k, self.groups = lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = F.local_response_norm(
            x.reshape(b * self.groups, c // self.groups, h, w), self.size, self.alpha * self.size, self.beta, self.k
        )
        return y.reshape(b, c, h, w)


def use_torch_lrn(model: nn.Module) -> nn.Module:
    """Swap every :class:`LocalResponseNorm` in ``model`` for :class:`TorchLRN` (same maths)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LocalResponseNorm):
                setattr(module, child_name, TorchLRN(child))
    return model


@dataclass
class Result:
    """One measured configuration."""

    path: str
    batch_size: int
    images_per_s: float
    tflops: float
    step_ms: float
    first_step_s: float  # includes compilation for the fast path
    inference_images_per_s: float | None = None
    ratio_to_matmul: float | None = None  # tflops / the bf16 matmul measured in the same run


def build(args: argparse.Namespace, path: str, device: torch.device) -> tuple[nn.Module, int]:
    """The model for ``path`` on ``device`` and its forward FLOPs per image."""
    if path == "torchvision":
        import torchvision

        model = torchvision.models.alexnet(num_classes=args.num_classes)
    else:
        model = create_model(args.model, num_classes=args.num_classes, **args.model_options)
        if path == "baseline":
            use_torch_lrn(model)
    model.to(device)
    flops = forward_flops(model, (3, args.image_size, args.image_size), device)
    return model, flops


def measure(args: argparse.Namespace, path: str, batch_size: int, device: torch.device) -> Result:
    """Time ``args.steps`` training steps of ``path`` at ``batch_size`` on synthetic data."""
    torch.manual_seed(0)
    fast = path == "fast"
    model, flops = build(args, path, device)
    model.train()
    bf16 = fast and not args.no_bf16 and bf16_supported(device)
    fmt = torch.channels_last if fast else torch.contiguous_format
    model.to(memory_format=fmt)
    x = torch.randn(batch_size, 3, args.image_size, args.image_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, args.num_classes, (batch_size,), device=device)
    opt = make_sgd(model.parameters(), lr=1e-3, fast=fast, device=device)
    net = model
    if fast and not args.no_compile:
        # A fresh compilation per configuration, specialised to this batch size: without the
        # reset a later batch size would reuse the cache and recompile with a dynamic batch
        # dimension (a different, slower graph), and the first-step time would not be the
        # compilation it claims to be.
        torch._dynamo.reset()
        mode = None if args.compile_mode == "default" else args.compile_mode
        net = torch.compile(model, mode=mode, dynamic=False)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with maybe_autocast(device, bf16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    first = time_first(step, device)  # compiles (fast path) and warms allocators
    seconds = time_steps(step, args.steps, args.warmup, device)
    ips = batch_size / seconds
    result = Result(path, batch_size, ips, 3 * flops * ips / 1e12, seconds * 1e3, first)

    if args.inference:
        net.eval()
        with torch.no_grad(), maybe_autocast(device, bf16):
            net(x)  # a compiled net recompiles for eval mode on the first call
            result.inference_images_per_s = batch_size / time_steps(lambda: net(x), args.steps, args.warmup, device)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default: 128,256,512 on CUDA, 32 on the CPU)"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 50 CUDA, 5 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first (default 10 CUDA, 1 CPU)")
    p.add_argument(
        "--preset",
        default=None,
        help="take model, options, input side and batch size from a training preset (e.g. cifar10)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--model", default="alexnet", help="model of the zoo (default: the paper's alexnet)")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the model's, 224)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--model-options", default="{}", help='JSON options for the model, e.g. \'{"norm": "lrn"}\'')
    p.add_argument("--paths", default="baseline,torchvision,fast", help="which of baseline, torchvision, fast")
    p.add_argument("--no-compile", action="store_true", help="fast path without torch.compile")
    p.add_argument("--no-bf16", action="store_true", help="fast path in fp32")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile mode; reduce-overhead captures CUDA graphs",
    )
    p.add_argument("--inference", action="store_true", help="also time eval-mode forward passes")
    p.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="side n of the n x n x n bf16 matmul measured as the ceiling (default 8192 CUDA, 512 CPU; 0: skip)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.matmul_size is not None and args.matmul_size < 0:
        p.error("--matmul-size must be >= 0")
    cuda = resolve_device(args.device).type == "cuda"
    preset_batch = None
    if args.preset:
        from alexnet.training.config import ConfigError, preset

        try:
            cfg = preset(args.preset)
        except ConfigError as exc:
            p.error(str(exc))
        args.model, preset_batch = cfg.model, str(cfg.batch_size)
        args.model_options = json.dumps(cfg.model_options)
        if args.image_size is None and cfg.crop is None:
            p.error(f"preset {args.preset!r} sets no crop (it depends on the data): pass --image-size")
        if args.image_size is None:
            args.image_size = cfg.crop
        if cfg.model == "alexnet_small" and args.image_size:
            args.model_options = json.dumps({**cfg.model_options, "input_size": args.image_size})
        if args.num_classes == 1000 and cfg.model == "alexnet_small":
            args.num_classes = 10
    default_batches = preset_batch or ("128,256,512" if cuda else "32")
    args.batch_sizes = [int(b) for b in (args.batch_sizes or default_batches).split(",")]
    if any(b < 1 for b in args.batch_sizes):
        p.error("batch sizes must be positive")
    args.steps = args.steps if args.steps is not None else (50 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    try:
        args.model_options = json.loads(args.model_options)
    except json.JSONDecodeError as exc:
        p.error(f"--model-options is not JSON: {exc}")
    if not isinstance(args.model_options, dict):
        p.error("--model-options must be a JSON object")
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = set(args.paths) - {"baseline", "torchvision", "fast"}
    if unknown:
        p.error(f"unknown path(s) {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both paths: the classic recipe used it too
    probe = create_model(args.model, num_classes=args.num_classes, **args.model_options)
    if args.image_size is None:
        args.image_size = probe.input_size
    print(describe_hardware(device))
    if device.type == "cuda":
        print(
            f"fp32 settings (PyTorch defaults): cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
            f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
        )
    paths = list(args.paths)
    if "torchvision" in paths:
        try:
            import torchvision  # noqa: F401
        except Exception as exc:  # ImportError, or a broken build raising at import time
            print(f"torchvision: skipped ({type(exc).__name__}: {exc})")
            paths.remove("torchvision")

    n_params = sum(p.numel() for p in probe.parameters())
    fwd = forward_flops(probe, (3, args.image_size, args.image_size))
    del probe
    if args.preset:
        print(f"preset: {args.preset}")
    print(f"model: {args.model} {args.model_options or ''} {args.image_size}x{args.image_size}, {args.num_classes} classes, {n_params:,} parameters")
    print(
        f"forward FLOPs per image: {fwd / 1e9:.3f} GFLOP (convolutions + matrix products, multiply-add = 2); "
        f"a training image counts 3x = {3 * fwd / 1e9:.3f} GFLOP"
    )
    bf16 = not args.no_bf16 and bf16_supported(device)
    compiled = "eager" if args.no_compile else f"torch.compile (mode={args.compile_mode})"
    sgd = "fused SGD" if device.type == "cuda" else "foreach SGD"
    print(
        f"fast path: {'bf16 autocast + fp32 master weights' if bf16 else 'fp32'}, channels_last, {compiled}, "
        f"{sgd}, slice-sum LRN"
    )
    print("baseline: fp32, NCHW, eager, F.local_response_norm, per-parameter SGD loop")
    peak = None
    if args.matmul_size != 0:
        peak = matmul_tflops(device, args.matmul_size)
        n = args.matmul_size or (8192 if device.type == "cuda" else 512)
        print(f"bf16 matmul {n}x{n}x{n}: {peak:.1f} TFLOP/s (the ceiling the figures below are compared with)")
    print(f"steps: {args.steps} timed after {args.warmup} warm-up (+1 first/compile step)")

    results: list[Result] = []
    for bs in args.batch_sizes:
        print(f"batch {bs}")
        by_path: dict[str, Result] = {}
        for path in paths:
            try:
                r = measure(args, path, bs, device)
            except torch.OutOfMemoryError:
                print(f"  {path:<12} out of memory at batch {bs}")
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if peak:
                r.ratio_to_matmul = r.tflops / peak
            by_path[path] = r
            results.append(r)
            inf = f", inference {r.inference_images_per_s:,.1f} images/s" if r.inference_images_per_s else ""
            of_peak = f" ({r.ratio_to_matmul:.1%} of matmul)" if r.ratio_to_matmul is not None else ""
            print(
                f"  {path:<12} {r.images_per_s:>10,.1f} images/s  {r.tflops:7.3f} TFLOP/s{of_peak}  "
                f"{r.step_ms:8.1f} ms/step  (first step {r.first_step_s:.1f} s){inf}"
            )
        if "baseline" in by_path and "fast" in by_path:
            ratio = by_path["fast"].images_per_s / by_path["baseline"].images_per_s
            print(f"  ratio: {ratio:.2f}x (fast / baseline)")
    if args.json:
        report = {
            "hardware": describe_hardware(device),
            "model": args.model,
            "model_options": args.model_options,
            "image_size": args.image_size,
            "forward_gflop_per_image": fwd / 1e9,
            "compile": "eager" if args.no_compile else args.compile_mode,
            "bf16": bf16,
            "steps": args.steps,
            "warmup": args.warmup,
            "matmul_tflops": peak,
            "results": [asdict(r) for r in results],
        }
        Path(args.json).write_text(json.dumps(report, indent=2))
    return results


if __name__ == "__main__":
    main()
