"""A guided tour of the Python API, top to bottom, the way a researcher would use it.

    python examples/tour.py                      # about a minute on 2 CPU cores
    python examples/tour.py --photo cat.jpg      # your own photo for the top-5 step
    python examples/tour.py --weights alexnet-owt-7be5be79.pth   # real ImageNet weights

Each step prints what it found. The test suite runs this file, so it cannot rot.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import alexnet
from alexnet.checkpoint import imagenet_meta, load_model, save_safetensors
from alexnet.data import open_dataset
from alexnet.data.synth import generate
from alexnet.evaluation import Predictor, load_image, predict_images
from alexnet.training import from_dict, preset, train


def step(title: str) -> None:
    print(f"\n== {title}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", type=Path, default=None, help="an image file for the top-5 step")
    p.add_argument("--weights", type=Path, default=None, help="torchvision alexnet weights (.pth), if you have them")
    p.add_argument("--workdir", type=Path, default=None, help="where the tour writes (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=8, help="fine-tuning epochs of the last step")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="alexnet-tour-"))
    found: dict = {}

    step("1. The paper's network, exactly: two towers, LRN, overlapping pooling, dropout")
    paper = alexnet.create_model("alexnet").eval()
    n = sum(p.numel() for p in paper.parameters())
    print(f"alexnet: {n:,} parameters (the paper's 60 million; 60,965,224 exactly)")
    print("the zoo:", ", ".join(m.name for m in alexnet.list_models()))
    found["paper_params"] = n

    step("2. Weights: torchvision's ImageNet alexnet if given, else a saved and reloaded model")
    if args.weights is not None:
        model, meta = load_model(args.weights)  # loaded into alexnet_owt, torchvision's layout
    else:
        # A checkpoint of our own: the metadata travels with the weights (classes, sizes, stats).
        model, meta = load_model(_saved_owt(work / "owt.safetensors"))
    print(f"loaded: {meta.describe()}")
    found["model"] = meta.model

    step("3. Activations: what each layer computes for one image")
    photo = args.photo or _a_photo(work)
    image = load_image(photo, meta.image_size)  # uint8 [3, S, S], the paper's 256 px square
    x = meta.eval_transform()(image.unsqueeze(0))  # centre crop, normalised like training
    with torch.inference_mode():
        acts = model.forward_layers(x, ["conv1", "conv5", "fc7"])
    for name, a in acts.items():
        print(f"{name}: {tuple(a.shape)}, {float((a > 0).float().mean()):.0%} of units active")
    found["conv1_shape"] = tuple(acts["conv1"].shape)

    step("4. Top-5 labels for the photo (softmax over the classes)")
    top = predict_images(model, meta, image.unsqueeze(0), k=5)[0]
    for p_ in top:
        print(f"  {p_.prob:6.1%}  {p_.name}")
    found["top5"] = [p_.name for p_ in top]

    step("5. fc7 features: the 4096-d code the paper retrieves neighbours with (Figure 4)")
    predictor = Predictor(model, meta, crops=1, device="cpu")
    feats = predictor.features(image.unsqueeze(0))
    print(f"fc7 feature of the photo: {tuple(feats.shape)}, norm {float(feats.norm()):.1f}")
    found["fc7_dim"] = feats.shape[1]

    step("6. Fine-tune the small AlexNet on a folder of images (class sub-folders)")
    data = generate(work / "shapes", num_classes=3, train_per_class=120, val_per_class=30, size=64, workers=1)
    print(f"dataset: {open_dataset(data, 'train')}")
    # The demo's recipe (a batch-norm variant of the small net, one-cycle lr) on this folder.
    cfg = from_dict({"data": str(data), "out": str(work / "run"), "epochs": args.epochs, "batch_size": 32,
                     "progress": False, "tensorboard": False}, preset("demo"))
    result = train(cfg)
    print(f"val top-1 after {args.epochs} epochs: {result.val_top1:.1%} (chance: 33%); run in {result.run_dir}")
    found["val_top1"] = result.val_top1
    return found


def _saved_owt(path: Path) -> Path:
    """Save a freshly initialised torchvision-layout model with ImageNet metadata, to load back."""
    meta = imagenet_meta("alexnet_owt")
    save_safetensors(path, alexnet.create_model("alexnet_owt").state_dict(), meta)
    return path


def _a_photo(work: Path) -> Path:
    """A real ImageNet photo from ../shared/data when there, else a drawn one."""
    samples = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
    found = sorted(samples.glob("*.JPEG"))[:1] if samples.is_dir() else []
    if found:
        return found[0]
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 240), (40, 90, 160))
    ImageDraw.Draw(img).ellipse((100, 60, 220, 180), fill=(230, 200, 40))
    path = work / "drawn.jpg"
    img.save(path)
    return path


if __name__ == "__main__":
    main()
