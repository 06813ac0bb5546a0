"""The benchmark scripts run end to end on the CPU at tiny sizes, so they cannot rot;
and the fast LRN they rely on equals the paper's formula."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.layers import LocalResponseNorm, lrn, lrn_reference

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _common  # noqa: E402
import airbench_reference  # noqa: E402
import cifar10  # noqa: E402
import cifar10_curve  # noqa: E402
import end_to_end  # noqa: E402
import train_throughput  # noqa: E402

# --------------------------------------------------------------------------- fast LRN


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_lrn_equals_reference(size: int) -> None:
    x = torch.randn(2, 9, 4, 5, dtype=torch.float64) * 20
    torch.testing.assert_close(lrn(x, size, 1e-4, 0.75, 2.0), lrn_reference(x, size, 1e-4, 0.75, 2.0))


def test_lrn_even_window_follows_pytorch() -> None:
    # The paper's n is odd; for an even n the window is PyTorch's (n//2 before, n//2 - 1 after),
    # which is what this module computed before the fast path.
    x = torch.randn(2, 9, 4, 5, dtype=torch.float64) * 20
    torch.testing.assert_close(lrn(x, 4, 1e-4, 0.75, 2.0), F.local_response_norm(x, 4, 4e-4, 0.75, 2.0))


def test_lrn_groups_and_channels_last_and_gradient() -> None:
    x = (torch.randn(3, 8, 5, 5, dtype=torch.float64) * 20).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = LocalResponseNorm(groups=2)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)  # layout is kept
    expected = torch.cat([lrn_reference(x[:, :4]), lrn_reference(x[:, 4:])], 1)
    torch.testing.assert_close(y, expected)
    # Gradients agree with PyTorch's own LRN (alpha scaled by n: its convention).
    (g,) = torch.autograd.grad(y.square().sum(), x)
    x2 = x.detach().clone().requires_grad_()
    theirs = F.local_response_norm(x2.reshape(6, 4, 5, 5), 5, 5e-4, 0.75, 2.0).reshape(3, 8, 5, 5)
    (g2,) = torch.autograd.grad(theirs.square().sum(), x2)
    torch.testing.assert_close(g, g2)


def test_lrn_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="groups"):
        lrn(torch.zeros(1, 5, 2, 2), groups=2)
    with pytest.raises(ValueError, match="B, C, H, W"):
        lrn(torch.zeros(5, 2, 2))


# --------------------------------------------------------------------------- helpers


def test_forward_flops_counts_multiply_adds_twice() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    conv = 2 * (3 * 3 * 3) * 4 * 6 * 6
    linear = 2 * 144 * 5
    assert _common.forward_flops(model, (3, 8, 8)) == conv + linear


def test_paper_alexnet_forward_flops() -> None:
    from alexnet.models import create_model

    with torch.device("meta"):
        model = create_model("alexnet")
    # The grouped paper net: 1.449 GFLOP forward, so 4.35 GFLOP per training image at 3x.
    flops = _common.forward_flops(model, (3, 224, 224), device="meta")
    assert flops == 1_448_813_632
    assert round(3 * flops / 1e9, 2) == 4.35


def test_describe_hardware_names_cpu_and_torch() -> None:
    line = _common.describe_hardware(torch.device("cpu"))
    assert line.startswith("hardware: ") and f"torch {torch.__version__}" in line


# --------------------------------------------------------------------------- train_throughput.py


def test_train_throughput_cpu_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    results = train_throughput.main(
        [
            "--device=cpu",
            "--model=alexnet_small",
            '--model-options={"norm": "lrn", "width": 0.25}',
            "--num-classes=10",
            "--batch-sizes=2,4",
            "--steps=2",
            "--warmup=0",
            "--no-compile",
            "--inference",
        ]
    )
    out = capsys.readouterr().out
    assert "hardware:" in out and "forward FLOPs per image:" in out
    ratios = re.findall(r"ratio: ([0-9.]+)x", out)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)
    assert len(re.findall(r"images/s +[0-9.]+ TFLOP/s", out)) == 4
    assert {(r.path, r.batch_size) for r in results} == {(p, b) for p in ("baseline", "fast") for b in (2, 4)}
    for r in results:
        assert r.images_per_s > 0 and r.tflops > 0 and r.inference_images_per_s > 0
    # The baseline really swapped in PyTorch's LRN; the fast path kept ours.
    model, _ = train_throughput.build(train_throughput.parse_args(["--device=cpu", "--model=alexnet_small",
                                      '--model-options={"norm": "lrn"}', "--image-size=32"]), "baseline",
                                      torch.device("cpu"))
    assert any(isinstance(m, train_throughput.TorchLRN) for m in model.modules())
    assert not any(isinstance(m, LocalResponseNorm) for m in model.modules())


def test_train_throughput_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--device=cpu", "--batch-sizes=0"])
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--device=cpu", "--paths=nope"])
    with pytest.raises(SystemExit):
        train_throughput.parse_args(["--device=cpu", "--model-options=[1]"])


@pytest.mark.slow
def test_train_throughput_compiled_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """The torch.compile path (C++ codegen on the CPU: about a minute on 2 cores)."""
    train_throughput.main(
        ["--device=cpu", "--model=alexnet_small", '--model-options={"norm": "lrn", "width": 0.25}',
         "--num-classes=10", "--batch-sizes=4", "--steps=2", "--warmup=1", "--paths=fast"]
    )
    assert "torch.compile" in capsys.readouterr().out


# --------------------------------------------------------------------------- end_to_end.py


@pytest.fixture(scope="module")
def prepared_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared JPEG dataset of 24 random 48x40 photos in 3 classes, stored at 40 px."""
    from PIL import Image

    from alexnet.data.prepared import prepare_dataset

    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (src / c).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / c / f"{i}.jpg")
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(src, out, size=40, workers=1, progress=False)
    return out


def test_end_to_end_cpu_tiny(prepared_tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = end_to_end.main(
        [str(prepared_tiny), "--device=cpu", "--model=alexnet_small", '--model-options={"width": 0.25}',
         "--crop=32", "--batch-size=4", "--steps=3", "--warmup=1", "--workers=0", "--no-compile"]
    )
    out = capsys.readouterr().out
    assert "decode gpu: skipped (needs a CUDA device)" in out
    assert re.search(r"end to end: +[0-9.,]+ images/s delivered into training steps", out)
    assert re.search(r"data wait: +[0-9.]+% of wall time blocked on the loader; device idle [0-9.]+%", out)
    r = results["cpu"]
    assert r["end_to_end_images_per_s"] > 0 and r["compute_images_per_s"] > 0
    assert 0.0 <= r["loader_wait_fraction"] < 1.0 and 0.0 <= r["device_idle_fraction"] < 1.0


def test_end_to_end_worker_processes(prepared_tiny: Path) -> None:
    # Batches come through a worker process and more epochs than the data holds (24 images, 8 steps of 4).
    results = end_to_end.main(
        [str(prepared_tiny), "--device=cpu", "--model=alexnet_small", '--model-options={"width": 0.125}',
         "--crop=32", "--batch-size=4", "--steps=8", "--warmup=0", "--workers=1", "--no-compile", "--decode=cpu"]
    )
    assert results["cpu"]["end_to_end_images_per_s"] > 0


def test_jpeg_bytes_batches_are_the_stored_images(prepared_tiny: Path) -> None:
    import simplejpeg

    from alexnet.data import open_dataset

    ds = open_dataset(prepared_tiny, "train")
    flat, lengths, labels = end_to_end.JpegBytes(ds).get_batch([5, 0, 17])
    decoded = [simplejpeg.decode_jpeg(b.numpy().tobytes(), colorspace="RGB") for b in flat.split(lengths.tolist())]
    x, y = ds.get_batch([5, 0, 17])
    assert torch.equal(torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2), x)
    assert torch.equal(labels, y)


def test_end_to_end_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="error"):
        end_to_end.main([str(tmp_path / "nope"), "--device=cpu"])


# --------------------------------------------------------------------------- cifar10.py


def _jpeg_folder(root: Path, per_class: int, size: int = 32, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in ("cat", "dog", "ship"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.jpg")
    return root


@pytest.mark.parametrize(
    ("preset", "options"),
    [("cifar10", "{width: 0.125}"), ("cifar10-small", "{width: 0.125, norm: bn, dropout: 0.5}")],
)
def test_cifar10_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str, options: str) -> None:
    train = _jpeg_folder(tmp_path / "train", per_class=6)
    test = _jpeg_folder(tmp_path / "test", per_class=2, seed=1)
    (test / "ship" / "broken.jpg").write_bytes(b"not a jpeg")  # counted and skipped, not fatal
    out = cifar10.main(
        ["--train", str(train), "--test", str(test), "--device=cpu", "--epochs=1", "--minutes=2", "--preset", preset,
         "--members", "1", "--out", str(tmp_path / "run"), "--set", "batch_size=8", "--set", f"model_options={options}",
         "--json", str(tmp_path / "result.json"), "--val-images", "3"]
    )
    text = capsys.readouterr().out
    # the epoch lines validate on 3 of the 6 test images (a third each), the final figures on all 6
    assert "per-epoch validation: 3 of the test images, evenly spaced" in text
    val = float(re.search(r"^epoch 1/1 .* val top-1 ([\d.]+)%", text, re.M).group(1))
    assert min(abs(val - k * 100 / 3) for k in range(4)) < 0.1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["val_images"] == 3
    pad = cifar10.PRESET_PAD[preset]
    assert f"18 training / 6 test images in memory (1 unreadable skipped), 3 classes, padded to {32 + 2 * pad} px" in text
    assert re.search(r"^test top-1: \d+\.\d%$", text.strip().splitlines()[-1])
    assert "test top-1 single view:" in text and "images/s" in text
    assert re.search(r"^epoch 1/1 .* val top-1", text, re.M)  # the engine's epoch line is in the log
    assert re.search(r"training step: [\d.]+ GFLOP per image .* ratio [\d.]+ of bf16, [\d.]+ of fp32", text)
    assert 0.0 <= out["top1"] <= 1.0 and out["epochs"] == 1 and out["achieved_gflops"] > 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["preset"] == preset and stored["top1_tta"] == out["top1_tta"]
    # the log handler goes with the run: later commands in this process print their lines once
    assert not any(isinstance(h, _common._Stdout) for h in logging.getLogger("alexnet").handlers)


def test_cifar10_members_train_in_their_own_processes_and_vote_together(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    train = _jpeg_folder(tmp_path / "train", per_class=6)
    out = cifar10.main(
        ["--train", str(train), "--holdout", "2", "--device=cpu", "--epochs=1", "--minutes=2", "--members", "2",
         "--threads", "2", "--out", str(tmp_path / "run"), "--set", "batch_size=4", "--set", "model_options={width: 0.125}"]
    )
    text = capfd.readouterr().out
    assert "training 2 networks at once, 1 thread(s) each, seeds 0..1" in text
    # each member's engine lines carry its name; each reports its own accuracy
    assert re.search(r"^\[member 1\] epoch 1/1 ", text, re.M) and re.search(r"^\[member 2\] epoch 1/1 ", text, re.M)
    assert re.search(r"^member 2: training: completed, 1 epochs, .* 6 views$", text, re.M)
    assert "test top-1 ensemble of 2, single view:" in text
    assert out["members"] == 2 and out["member_epochs"] == [1, 1]
    from safetensors.torch import load_file

    first, second = (load_file(tmp_path / "run" / f"member-{k}" / "model.safetensors") for k in (0, 1))
    assert not torch.equal(first["model.conv2.weight"], second["model.conv2.weight"])  # different seeds, different networks


def test_cifar10_ensemble_is_the_mean_of_the_members_softmaxes() -> None:
    labels = torch.tensor([1, 0])

    def member(logits: list[list[float]]) -> dict[str, torch.Tensor]:
        t = torch.tensor(logits)
        return {"centre": t, "mirror": t, "tta": t}

    # image 0: member A mildly prefers class 0 (p = 0.62), member B is sure of class 1 (p = 0.99):
    # the mean softmax says 1. Image 1: both prefer class 0.
    a, b = member([[0.5, 0.0], [2.0, 0.0]]), member([[0.0, 5.0], [1.0, 0.0]])
    assert cifar10.top1_scores([a], labels) == {"top1": 0.5, "top1_flip": 0.5, "top1_tta": 0.5}
    assert cifar10.top1_scores([a, b], labels) == {"top1": 1.0, "top1_flip": 1.0, "top1_tta": 1.0}
    # the mirror view counts in the flip figure only
    c = {**a, "mirror": torch.tensor([[0.0, 3.0], [2.0, 0.0]])}
    assert cifar10.top1_scores([c], labels)["top1_flip"] == 1.0 and cifar10.top1_scores([c], labels)["top1"] == 0.5


def test_cifar10_members_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cifar10.parse_args(["--train", str(tmp_path), "--holdout", "1", "--members", "0"])
    assert cifar10.parse_args(["--train", str(tmp_path), "--holdout", "1"]).members == 1
    with pytest.raises(SystemExit):
        cifar10.parse_args(["--train", str(tmp_path), "--holdout", "1", "--val-images", "-1"])
    with pytest.raises(SystemExit):
        cifar10.parse_args(["--train", str(tmp_path), "--holdout", "1", "--threads", "0"])


def test_cifar10_engine_errors_are_one_line(tmp_path: Path) -> None:
    """A folder smaller than one batch, or a bad --set value: ``error: ...``, not a traceback."""
    train = _jpeg_folder(tmp_path / "train", per_class=5)
    common = ["--train", str(train), "--holdout", "1", "--epochs", "1", "--set", "model_options={width: 0.125}"]
    with pytest.raises(SystemExit, match=r"^error: config key 'batch_size': 1024 .* larger than the 12 training images"):
        cifar10.main(common)
    with pytest.raises(SystemExit, match=r"^error: .*label_smoothing"):
        cifar10.main([*common, "--set", "label_smoothing=7"])


class _Recorder(torch.nn.Module):
    """A 'model' that records the views it is shown and votes for the class written into
    each view's top-left pixel (channel 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.views: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.views.append(x.clone())
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 2), 3).float() * 10


def test_cifar10_tta_views_are_the_centre_and_one_pixel_shifts_with_mirrors() -> None:
    from alexnet.data.stats import DatasetStats
    from alexnet.data.transforms import EvalTransform

    x = torch.arange(2 * 3 * 36 * 36).reshape(2, 3, 36, 36).remainder(251).to(torch.uint8)
    stats = DatasetStats(mean=torch.zeros(3), std=torch.ones(3), eigval=torch.ones(3), eigvec=torch.eye(3))
    data = cifar10.InMemoryImages(x, torch.tensor([0, 1]), ["a", "b", "c"], stats=stats)
    model = _Recorder()
    cifar10.evaluate(model, data, EvalTransform(32, stats, "channel"), torch.device("cpu"), bf16=False,
                     channels_last=False)
    full = x.float()
    want = []
    for dy, dx in ((0, 0), (-1, -1), (1, 1)):
        view = full[:, :, 2 + dy : 34 + dy, 2 + dx : 34 + dx]
        want += [view, view.flip(-1)]
    assert len(model.views) == 6
    for got, expected in zip(model.views, want, strict=True):
        torch.testing.assert_close(got, expected)


def test_cifar10_tta_weights_the_shifted_views_half() -> None:
    from alexnet.data.stats import DatasetStats
    from alexnet.data.transforms import EvalTransform

    # The top-left pixel of each view names a class: centre (and its mirror's) -> 1, the
    # up-left shift -> 2, the down-right shift -> 2 as well. Centre pair 2 x 10 x 1.0 = 20
    # votes for class 1, the shifted pairs 4 x 10 x 0.5 = 20 for class 2: a tie, which argmax
    # gives to class 1; with the shifted views weighted 1 class 2 would win.
    x = torch.zeros(1, 3, 36, 36, dtype=torch.uint8)
    x[0, 0, 2, 2], x[0, 0, 2, 33] = 1, 1  # centre view, top-left and (mirrored) top-right
    x[0, 0, 1, 1], x[0, 0, 1, 32] = 2, 2  # up-left view
    x[0, 0, 3, 3], x[0, 0, 3, 34] = 2, 2  # down-right view
    stats = DatasetStats(mean=torch.zeros(3), std=torch.ones(3), eigval=torch.ones(3), eigvec=torch.eye(3))
    data = cifar10.InMemoryImages(x, torch.tensor([1]), ["a", "b", "c"], stats=stats)
    scores = cifar10.evaluate(_Recorder(), data, EvalTransform(32, stats, "channel"), torch.device("cpu"),
                              bf16=False, channels_last=False)
    assert scores["top1"] == 1.0 and scores["top1_flip"] == 1.0 and scores["top1_tta"] == 1.0


def test_train_step_flops_counts_forward_and_weight_gradients() -> None:
    # Linear 4 -> 3 without bias: forward 2*4*3 = 24 FLOPs; backward, the weight's gradient
    # (24; the input needs none); conv with a frozen weight and no input gradient: forward only.
    assert _common.train_step_flops(torch.nn.Linear(4, 3, bias=False), (4,)) == 48
    frozen = torch.nn.Linear(4, 3, bias=False).requires_grad_(False)
    model = torch.nn.Sequential(frozen, torch.nn.Linear(3, 2, bias=False))
    assert _common.train_step_flops(model, (4,)) == 24 + 12 + 12


def test_cifar10_holdout_split_and_padding(tmp_path: Path) -> None:
    train = _jpeg_folder(tmp_path / "train", per_class=5)
    groups, classes = cifar10.load_folder(train)
    assert classes == ["cat", "dog", "ship"] and all(len(files) == 5 for files, _ in groups)
    x, y, _, skipped = cifar10.decode_all(groups)
    assert x.shape == (15, 3, 32, 32) and skipped == 0 and y.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    padded = cifar10.reflect_pad(x, 4)
    assert padded.shape == (15, 3, 40, 40) and torch.equal(padded[:, :, 4:36, 4:36], x)
    ds = cifar10.InMemoryImages(padded, y, classes)
    xb, yb = ds.get_batch([14, 0])
    assert torch.equal(xb, padded[[14, 0]]) and yb.tolist() == [2, 0]
    with pytest.raises(SystemExit):
        cifar10.parse_args(["--train", str(train)])  # neither --test nor --holdout


# --------------------------------------------------------------------------- airbench_reference.py


def test_airbench_reference_is_the_same_network_as_alexnet_fast() -> None:
    """Both implement airbench's net: the reference's parameter count (2x2 whitening, three
    two-conv blocks of 64/256/256, bias-free head) must equal the project's at width 1."""
    from alexnet.models import create_model

    ref = airbench_reference.ReferenceNet()
    ours = create_model("alexnet_fast", num_classes=10)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in ours.parameters())


def test_airbench_reference_whitening_decorrelates_patches() -> None:
    gen = torch.Generator().manual_seed(0)
    # correlated colour channels and neighbouring pixels: far from white
    base = torch.randn(400, 1, 9, 9, generator=gen).repeat(1, 3, 1, 1) + 0.3 * torch.randn(400, 3, 9, 9, generator=gen)
    images = F.avg_pool2d(base, 2, stride=1)
    net = airbench_reference.ReferenceNet()
    net.init_whitening(images, eps=0.0)
    out = F.conv2d(images, net.whiten.weight[:12]).permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = out.T @ out / len(out)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.double), atol=1e-3)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_airbench_reference_newton_schulz_keeps_directions_and_evens_the_spectrum() -> None:
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(576, 64, generator=gen))
    spectrum = torch.logspace(0, -3, 64)  # condition number 1000
    g = u @ torch.diag(spectrum) @ v.T
    x = airbench_reference.newton_schulz(g)
    in_basis = u.T @ x @ v  # diagonal if x has g's singular vectors
    off = in_basis - torch.diag(torch.diagonal(in_basis))
    assert off.abs().max() < 0.05
    s = torch.diagonal(in_basis)
    # three steps bring every direction down to 1/30 of the largest into [0.5, 1.25] (a 30x spread
    # made < 2.5x) and only raise the rest (each grows by up to 3.4445x per step)
    assert s[:32].min() > 0.5 and s.max() < 1.25
    assert bool((s[32:] > spectrum[32:] / spectrum.norm()).all())


def test_airbench_reference_translations_are_windows_of_the_padded_images() -> None:
    images = torch.arange(4 * 3 * 6 * 6, dtype=torch.float32).view(4, 3, 6, 6)
    padded = F.pad(images, (2,) * 4, mode="reflect")
    out = airbench_reference.translated(padded, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    for k in range(4):
        windows = [padded[k, :, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[k], w) for w in windows)


def test_airbench_reference_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = _jpeg_folder(tmp_path / "train", per_class=24)
    out = airbench_reference.main(["--train", str(train), "--holdout", "4", "--epochs", "2", "--threads", "2",
                                   "--json", str(tmp_path / "r.json"), "--set", "batch_size=16",
                                   "--set", "model_options={width: 0.125}"])
    text = capsys.readouterr().out
    assert "data: 60 training / 12 test images (0 unreadable skipped)" in text
    assert re.search(r"^reference epoch 2/2  step 2 ", text, re.M)  # batch = the 60 images: one step an epoch
    assert re.search(r"^reference \(airbench94_muon's recipe, 2 epochs\): test top-1 single view [\d.]+%", text, re.M)
    assert re.search(r"^project \(cifar10 preset, 2 epochs\): test top-1", text, re.M)
    assert "'width': 0.125}" in text and "batch 16," in text  # --set reached the project's run
    diff = float(re.search(r"^project - reference: ([+-][\d.]+) points", text, re.M).group(1))
    assert diff == pytest.approx(100 * (out["project_top1_tta"] - out["reference_top1_tta"]), abs=0.051)
    assert json.loads((tmp_path / "r.json").read_text())["train_images"] == 60
    for bad in (["--epochs", "0"], ["--threads", "-1"], ["--max-train", "0"]):
        with pytest.raises(SystemExit):
            airbench_reference.parse_args(["--train", str(train), "--holdout", "4", *bad])


def test_cifar10_curve_recipes_are_the_presets_they_name() -> None:
    """The curve's comparison recipes rebuild the presets they stand for from today's preset
    and `--set` overrides: the SGD one-cycle recipe of the previous preset, at width 1.25 and 1."""
    from alexnet.training.config import from_dict, parse_override, preset

    def config(recipe: str):
        args = cifar10_curve.RECIPES[recipe][1]
        sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        name = args[args.index("--preset") + 1]
        return from_dict(dict(parse_override(s) for s in sets), preset(name))

    assert config("cifar10").optimizer == "muon"
    for recipe, width in (("cifar10-sgd", 1.25), ("cifar10-w1", 1.0)):
        cfg = config(recipe)
        assert (cfg.optimizer, cfg.schedule, cfg.onecycle_pct, cfg.onecycle_div) == ("torch", "onecycle", 0.23, 5.0)
        assert cfg.model == "alexnet_fast" and cfg.model_options == {"width": width}


def test_cifar10_curve_plots_and_tabulates_stored_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for recipe, minutes, acc in (("cifar10", 5, 0.88), ("cifar10", 15, 0.91), ("cifar10-small", 5, 0.84)):
        run = {"top1": acc - 0.01, "top1_flip": acc, "top1_tta": acc, "train_images_per_s": 1000.0,
               "elapsed_s": 60 * minutes - 30, "epochs": minutes, "budget_minutes": minutes}
        (tmp_path / f"{recipe}-{minutes}min.json").write_text(json.dumps(run))
    results = cifar10_curve.main(["--train", str(tmp_path), "--out", str(tmp_path), "--plot-only"])
    text = capsys.readouterr().out
    assert [len(results[r]) for r in ("cifar10", "cifar10-small")] == [2, 1] and "cifar10-w1" not in results
    assert "| `cifar10` | 15 min | 15 | 1,000 | 14.5 min | 90.0% | 91.0% | **91.0%** |" in text
    assert (tmp_path / "cifar10_curve.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        cifar10_curve.main(["--train", str(tmp_path), "--out", str(tmp_path / "empty"), "--plot-only"])


def test_cifar10_throughput_probe_times_the_runs_own_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe that plans the epochs steps with the optimiser the run will use (Muon for the
    cifar10 preset: its orthogonalisation is part of the step's time), not a stand-in SGD."""
    from alexnet.training import optim
    from alexnet.training.config import from_dict, preset

    calls: list[tuple[int, ...]] = []
    real = optim.orthogonalize
    monkeypatch.setattr(optim, "orthogonalize", lambda g, steps=3: calls.append(tuple(g.shape)) or real(g, steps))
    images = torch.randint(0, 256, (8, 3, 36, 36), dtype=torch.uint8)
    data = cifar10.InMemoryImages(images, torch.arange(8) % 2, ["a", "b"])
    cfg = from_dict({"model_options": {"width": 0.125}, "batch_size": 4, "crop": 32, "amp": "none",
                     "channels_last": False}, preset("cifar10"))
    assert cifar10.measure_train_speed(cfg, data, torch.device("cpu"), seconds=0.0) > 0
    assert len(calls) >= 5 * 6 and (8, 24 * 9) in calls  # 6 filter banks per step, >= 5 steps; conv2 is 8 x 24*3*3
