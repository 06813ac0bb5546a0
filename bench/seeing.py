"""How long "seeing" takes: the unit atlas build, and occlusion / Grad-CAM latency per image.

* atlas: :func:`alexnet.analysis.atlas.build_atlas` on ``--sample`` training images (plus the
  validation split for probes and the out-of-class threshold), timed end to end;
* attribution: occlusion (default window and stride) and Grad-CAM at conv5 for one image
  at a time, first call and the median of the following (cache cleared each time), on
  the given model and on ``alexnet_owt`` at 224 px (random weights: the cost is the same);
* feature visualisation: 128 optimisation steps for a conv3 channel and an fc8 unit.

    python bench/seeing.py --checkpoint RUN --sample 3000            # demo model, its dataset
    python bench/seeing.py --checkpoint RUN --skip-atlas --device cuda
    python bench/seeing.py --tiny                                     # self-made data, seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import describe_hardware, resolve_device, synchronize

from alexnet.analysis.attribution import Attributor


def time_attribution(model, meta, images: torch.Tensor, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds per image of occlusion and Grad-CAM (cache cleared between calls)."""
    att = Attributor(model, meta, device)
    out = {}
    for method in ("occlusion", "gradcam"):
        times = []
        for i in range(repeats + 1):
            att._cache.clear()
            synchronize(device)
            t = time.perf_counter()
            att.explain(images[i % len(images)].unsqueeze(0), method)
            synchronize(device)
            times.append(time.perf_counter() - t)
        out[method] = statistics.median(times[1:])  # the first call pays for warm-up
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="model file or run directory (default with --tiny: a fresh tiny model)")
    p.add_argument("--data", help="dataset (default: the run's)")
    p.add_argument("--sample", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-atlas", action="store_true")
    p.add_argument("--tiny", action="store_true", help="a tiny random model on generated data (for the test suite)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    print(describe_hardware(device))

    from alexnet.analysis.atlas import build_atlas
    from alexnet.checkpoint import imagenet_meta, load_model

    if args.tiny:
        from alexnet.checkpoint import ModelMeta
        from alexnet.data.splits import open_splits
        from alexnet.data.stats import DatasetStats
        from alexnet.data.synth import generate
        from alexnet.models import create_model

        data = generate(Path(tempfile.mkdtemp()) / "d", num_classes=3, train_per_class=8, val_per_class=2, size=32,
                        workers=1)
        train, val, _ = open_splits(data, "val", 0.1)
        options = {"width": 0.25, "fc_dim": 64, "input_size": 28}
        model = create_model("alexnet_small", num_classes=3, **options).eval()
        meta = ModelMeta("alexnet_small", 3, list(train.classes), list(train.class_names), 32, 28, "channel",
                         DatasetStats.imagenet_fallback(), options)
        args.sample, args.repeats = min(args.sample, 24), 1
    else:
        from alexnet.analysis.report import open_run_splits
        from alexnet.runs import RunPaths, model_path

        model, meta = load_model(model_path(args.checkpoint), device)
        run = RunPaths.of(Path(args.checkpoint).resolve())
        train, val, _ = open_run_splits(run.root if run else Path(args.checkpoint), args.data)
    print(f"model: {meta.describe()}")

    if not args.skip_atlas:
        t = time.perf_counter()
        atlas = build_atlas(model, meta, train, val, sample=args.sample, device=device)
        seconds = time.perf_counter() - t
        print(f"atlas: {atlas.info['sample']:,} training + {atlas.info['val_images']:,} validation images, "
              f"{sum(la.channels for la in atlas.layers.values())} conv channels: {seconds:.1f} s")

    images = torch.stack([val[i][0] for i in range(min(len(val), args.repeats + 1))])
    for name, (m, mt, imgs) in {
        "this model": (model, meta, images),
        "alexnet_owt 224 px": (None, None, None),
    }.items():
        if m is None:
            if args.tiny:
                continue
            from alexnet.models import create_model

            m, mt = create_model("alexnet_owt").eval(), imagenet_meta("alexnet_owt", 1000)
            imgs = torch.randint(0, 256, (args.repeats + 1, 3, 256, 256), dtype=torch.uint8)
        lat = time_attribution(m, mt, imgs, device, args.repeats)
        print(f"attribution, {name} ({mt.input_size} px input): occlusion {lat['occlusion'] * 1e3:.0f} ms, "
              f"Grad-CAM {lat['gradcam'] * 1e3:.0f} ms per image")
        from alexnet.analysis.featvis import visualise

        m = m.to(device)
        for layer in ("conv3", "fc8"):
            vis = visualise(m, mt, layer, 0, steps=8 if args.tiny else 128)
            print(f"feature visualisation, {name}, {layer} unit 0: {vis.steps} steps in {vis.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
