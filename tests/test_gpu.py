"""The CUDA paths: bf16 autocast, fused SGD, torch.compile with CUDA graphs, the paper's split
model, DDP over NCCL, nvJPEG decode, exact resume; and the GPU suite (bench/gpu_suite.py).

Every check is parametrized over devices: ``cpu`` always runs (so the device-independent
logic of each check runs in CI), ``cuda`` is marked ``gpu`` and skipped without CUDA. A
GPU session runs the CUDA half alone with ``pytest tests/test_gpu.py -m gpu`` (part2 of
``bench/gpu_suite.py`` does). Checks whose CPU form already lives elsewhere, or that are
only worth their time on a GPU, are CUDA-only and say where the CPU form is.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.models import AlexNetSplit, create_model, split_to_grouped

# cuBLAS is deterministic only with a fixed workspace, read once when CUDA starts: set it
# before any test touches the device (the trainer's own setdefault comes too late when an
# earlier test has already used cuBLAS).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import _common  # noqa: E402
import end_to_end  # noqa: E402
import gpu_suite  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")])
DEVICES = ["cpu", CUDA]


def torchvision_io():
    """``torchvision.io``, or skip: it is not installed on the CPU machines."""
    try:
        import torchvision.io
    except Exception as exc:  # ImportError, or a build raising at import time
        pytest.skip(f"needs torchvision ({type(exc).__name__}: {exc})")
    return torchvision.io


class NoTF32:
    """fp32 comparisons on CUDA: TF32 convolutions/matmuls would differ in the 3rd digit."""

    def __enter__(self) -> None:
        self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc: object) -> None:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """``|actual - expected| / |expected| < tol`` over the whole tensor: robust to the fp32
    rounding of different convolution algorithms (cudnn.benchmark picks per shape), where an
    element-wise atol would either hide errors in small gradients or flag rounding."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    err = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
    assert err < tol, f"{what}: relative error {err:.2e} (tolerance {tol:.0e})"


def small_model(width: float = 0.25, dropout: float = 0.0) -> nn.Module:
    """alexnet_small with the paper's LRN (the layer the fast path rewrites), 32 px."""
    return create_model("alexnet_small", num_classes=10, width=width, norm="lrn", dropout=dropout, input_size=32)


# --------------------------------------------------------------------------- bf16 autocast


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_step_keeps_fp32_master_weights(device: str) -> None:
    """Under bf16 autocast the network computes in bf16, the loss, weights and gradients stay
    fp32, and the gradients point where the fp32 ones do. CUDA: the paper model at 224 px."""
    torch.manual_seed(0)
    if device == "cuda":
        model, x = create_model("alexnet", num_classes=100, dropout=0.0), torch.randn(16, 3, 224, 224)
        assert _common.bf16_supported(torch.device("cuda")), "an H100 has native bf16: amp 'auto' must use it"
    else:
        model, x = small_model(), torch.randn(4, 3, 32, 32)
    model = model.to(device).to(memory_format=torch.channels_last)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (len(x),), device=device)
    ref = copy.deepcopy(model)

    with torch.autocast(device, dtype=torch.bfloat16):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    with NoTF32():
        ref_logits = ref(x)
        F.cross_entropy(ref_logits, y).backward()

    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
        cos = F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cos > 0.9, f"{name}: bf16 gradient cosine {cos:.4f} to the fp32 one"  # a wrong one: ~0
    rel = (logits.float() - ref_logits).norm() / ref_logits.norm()
    assert rel < 0.05, f"bf16 logits differ from fp32 by {rel:.3%}"


# --------------------------------------------------------------------------- fused SGD


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_sgd_matches_the_per_parameter_loop(device: str, nesterov: bool) -> None:
    """Fused SGD (one kernel for all parameters) takes the same steps as the classic loop,
    with the trainer's parameter groups (no decay on biases), and its state loads into the
    loop's optimiser (a checkpoint written by one continues in the other)."""
    from alexnet.training.trainer import parameter_groups

    torch.manual_seed(0)
    fused_model = small_model().to(device)
    loop_model = copy.deepcopy(fused_model)
    kw = {"lr": 0.05, "momentum": 0.9, "nesterov": nesterov}
    fused = torch.optim.SGD(parameter_groups(fused_model, 5e-4, False), fused=True, **kw)
    loop = torch.optim.SGD(parameter_groups(loop_model, 5e-4, False), foreach=False, **kw)
    assert len(fused.param_groups) == 2 and fused.param_groups[1]["weight_decay"] == 0.0
    grads = torch.Generator().manual_seed(1)
    for step in range(6):
        for p, q in zip(fused_model.parameters(), loop_model.parameters(), strict=True):
            g = torch.randn(p.shape, generator=grads).to(device)
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        loop.step()
        if step == 2:  # swap the states both ways mid-run
            state = copy.deepcopy(fused.state_dict())
            fused.load_state_dict(copy.deepcopy(loop.state_dict()))
            loop.load_state_dict(state)
    for (name, p), q in zip(fused_model.named_parameters(), loop_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    # The benchmarks' fast path asks for exactly this optimiser on CUDA.
    fast = _common.make_sgd(fused_model.parameters(), 0.1, fast=True, device=torch.device(device))
    assert bool(fast.param_groups[0]["fused"]) is (device == "cuda")
    assert bool(fast.param_groups[0]["foreach"]) is (device != "cuda")


# --------------------------------------------------------------------------- torch.compile (+ CUDA graphs)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_training_step_matches_eager(device: str) -> None:
    """The model compiles into one graph (no graph breaks: the slice-sum LRN traces) and a
    compiled training step takes the eager step's steps. CUDA: inductor with CUDA graphs
    (mode reduce-overhead), and a CUDA-graph skip is an error. CPU: the ``aot_eager``
    backend, which traces forward and backward the same way without generating code."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    eager = small_model().to(device)
    compiled_model = copy.deepcopy(eager)
    if device == "cuda":
        net = torch.compile(compiled_model, mode="reduce-overhead", dynamic=False)
    else:
        net = torch.compile(compiled_model, backend="aot_eager", dynamic=False)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05, momentum=0.9)
    opt_c = torch.optim.SGD(compiled_model.parameters(), lr=0.05, momentum=0.9)
    batches = [(torch.randn(16, 3, 32, 32, device=device), torch.randint(0, 10, (16,), device=device))
               for _ in range(4)]
    losses_e, losses_c = [], []
    import torch._inductor.config as inductor_config

    with NoTF32(), inductor_config.patch({"triton.cudagraph_or_error": True}):
        for x, y in batches:
            for opt, losses, fn in ((opt_e, losses_e, eager), (opt_c, losses_c, net)):
                if fn is net and device == "cuda":
                    torch.compiler.cudagraph_mark_step_begin()
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(fn(x), y)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    assert not counters["graph_break"], f"graph breaks: {dict(counters['graph_break'])}"
    assert counters["inductor"]["cudagraph_skips"] == 0
    np.testing.assert_allclose(losses_c, losses_e, rtol=2e-4, atol=1e-5)
    for (name, p), q in zip(compiled_model.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5, msg=name)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- the paper's split model


@pytest.mark.parametrize("device", [CUDA])  # the CPU form: tests/test_models.py::test_split_equals_grouped_*
def test_split_model_both_towers_on_one_gpu(device: str, tmp_path: Path) -> None:
    """The two-tower model with both towers on cuda:0 computes what the grouped model does,
    forward and backward, and trains through the engine with ``split_devices``."""
    torch.manual_seed(0)
    grouped = create_model("alexnet", num_classes=50, dropout=0.0)
    split = AlexNetSplit.from_grouped(grouped, ["cuda:0", "cuda:0"])
    grouped.to("cuda:0")
    assert all(p.device == torch.device("cuda:0") for p in split.parameters())
    x = torch.randn(8, 3, 224, 224, device="cuda:0")
    y = torch.randint(0, 50, (8,), device="cuda:0")
    with NoTF32():
        loss_g = F.cross_entropy(grouped(x), y)
        loss_s = F.cross_entropy(split(x), y)
        loss_g.backward()
        loss_s.backward()
    assert_rel_close(loss_s, loss_g, 1e-5, "loss")
    grads_s = split_to_grouped({k: p.grad for k, p in split.named_parameters()})
    for k, p in grouped.named_parameters():
        assert_rel_close(grads_s[k], p.grad, 1e-4, f"gradient of {k}")

    from alexnet.checkpoint import load_model
    from alexnet.training import from_dict, train

    run = tmp_path / "split"
    cfg = from_dict({"out": str(run), "model": "alexnet", "crop": 224, "norm_mode": "channel", "epochs": 1,
                     "batch_size": 8, "num_workers": 0, "progress": False, "tensorboard": False,
                     "split_devices": ["cuda:0", "cuda:0"], "max_steps": 2, "lighting": 0.0})
    result = train(cfg, train_set=Blobs(16, classes=4, size=232))
    assert result.step == 2 and result.status in ("max_steps", "completed")
    model, _ = load_model(run / "model.safetensors")  # stored in the one-device layout
    assert type(model).__name__ == "AlexNet"


# --------------------------------------------------------------------------- DDP


@pytest.mark.parametrize("device", DEVICES)
def test_ddp_world_size_one(device: str) -> None:
    """DistributedDataParallel over NCCL (Gloo on the CPU) with one process: the same
    gradients as the plain model, and the engine's collectives answer correctly. (The engine
    itself joins a group only for world size > 1, so this builds the group directly.)"""
    import torch.distributed as dist

    from alexnet.training import distributed as D

    backend = "nccl" if device == "cuda" else "gloo"
    if not dist.is_available() or (backend == "nccl" and not dist.is_nccl_available()):
        pytest.skip(f"torch.distributed without {backend}")
    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    kwargs = {"device_id": dev} if device == "cuda" else {}
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **kwargs)
    try:
        torch.manual_seed(0)
        plain = small_model().to(dev)
        ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(plain), device_ids=[dev] if device == "cuda" else None)
        x, y = torch.randn(8, 3, 32, 32, device=dev), torch.randint(0, 10, (8,), device=dev)
        with NoTF32():
            F.cross_entropy(plain(x), y).backward()
            F.cross_entropy(ddp(x), y).backward()
        for (name, p), q in zip(plain.named_parameters(), ddp.module.parameters(), strict=True):
            assert_rel_close(q.grad, p.grad, 1e-4, f"gradient of {name}")
        t = torch.tensor([1.5, 2.0], device=dev)
        assert D.all_reduce_sum(t).tolist() == [1.5, 2.0]
        assert D.any_flag(True, dev) and not D.any_flag(False, dev)
        assert D.broadcast_object({"a": 1}) == {"a": 1}
        assert D.all_gather_object("rank0") == ["rank0"]
        D.barrier()
    finally:
        D.cleanup()
    assert not dist.is_initialized()


# --------------------------------------------------------------------------- nvJPEG


@pytest.fixture(scope="module")
def prepared_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared JPEG dataset of 12 smooth 64 px photos (colour gradients, as photos mostly
    are: noise or hard edges would magnify the decoders' allowed differences in chroma
    upsampling). Skips first where torchvision is missing: preparing forks a worker pool,
    which is not worth doing (or risking, in a process with torch threads) for a skipped test."""
    torchvision_io()
    from PIL import Image

    from alexnet.data.prepared import prepare_dataset

    src = tmp_path_factory.mktemp("photos")
    yy, xx = np.mgrid[0:72, 0:80].astype(np.float64)
    for c in ("a", "b"):
        (src / c).mkdir()
        for i in range(6):
            img = np.stack([xx * 3 + 5 * i, yy * 3 + 20 * i, (xx + yy) * 1.5 + 10 * i], -1).clip(0, 255)
            Image.fromarray(img.astype(np.uint8)).save(src / c / f"{i}.jpg", quality=95)
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(src, out, size=64, workers=1, progress=False)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_nvjpeg_batch_decode_matches_the_cpu_decoder(device: str, prepared_jpeg: Path) -> None:
    """end_to_end.py's GPU decode path (flat shard bytes -> torchvision.io.decode_jpeg on the
    device, nvJPEG on CUDA) gives the images the loader's CPU decoder (libjpeg-turbo) gives,
    up to the decoders' rounding. The CPU form needs torchvision (absent on the CI machines)."""
    torchvision_io()
    from alexnet.data import open_dataset

    ds = open_dataset(prepared_jpeg, "train")
    idx = [3, 0, 11, 7]
    packed, labels = end_to_end.PackedJpegBytes(ds).get_batch(idx)  # what the loader hands over
    flat, lengths = end_to_end.PackedJpegBytes.unpack(packed, len(labels))
    x = end_to_end.gpu_decode(flat, lengths, torch.device(device))
    ref, ref_labels = ds.get_batch(idx)
    assert x.device.type == device and x.dtype == torch.uint8 and x.shape == ref.shape
    diff = (x.cpu().int() - ref.int()).abs().float()
    assert diff.mean() < 1.5 and diff.max() <= 48, f"mean {diff.mean():.2f}, max {diff.max():.0f}"
    assert torch.equal(labels, ref_labels)
    if device == "cuda":
        assert end_to_end.gpu_decode_unavailable(ds, torch.device(device)) is None


def test_nvjpeg_path_batches_come_through_the_loader(staged: Path) -> None:
    """The loader's contract is ``(x, y)`` batches: the nvJPEG path packs each batch's JPEG
    bytes and lengths into ``x`` and they come out of ``make_loader`` (a worker process,
    pinning) as the stored images; ``Repeat`` serves a small sample set several times per
    epoch (index i is image i mod n). Runs on the CPU: it is the GPU path minus the decode."""
    import simplejpeg

    from alexnet.data import open_dataset
    from alexnet.data.loader import make_loader

    ds = open_dataset(staged / "imagenet" / "prepared", "train")
    n = len(ds)
    src = end_to_end.Repeat(end_to_end.PackedJpegBytes(ds), 3)
    assert len(src) == 3 * n and end_to_end.Repeat(ds, 2).classes == ds.classes  # attributes pass through
    loader = make_loader(src, 4, shuffle=False, num_workers=1, drop_last=True, pin_memory=False)
    loader.set_epoch(0)
    seen = 0
    for b, (packed, y) in enumerate(loader):
        flat, lengths = end_to_end.PackedJpegBytes.unpack(packed, len(y))
        images = torch.from_numpy(np.stack([simplejpeg.decode_jpeg(t.numpy().tobytes(), colorspace="RGB")
                                            for t in flat.split(lengths.tolist())])).permute(0, 3, 1, 2)
        ref_x, ref_y = ds.get_batch([i % n for i in range(4 * b, 4 * b + 4)])
        assert torch.equal(images, ref_x) and torch.equal(y, ref_y), f"batch {b}"
        seen += len(y)
    assert seen == 3 * n
    assert end_to_end.auto_repeat(1000, 256, 16) == 17 and end_to_end.auto_repeat(50_000, 256, 16) == 1


def test_end_to_end_gpu_decode_option_runs_with_a_cpu_decoder(staged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """end_to_end.py's ``--decode gpu`` branch end to end (loader workers slicing bytes,
    unpacking, decode, the training step), with nvJPEG swapped for a CPU decoder so that CI
    runs everything but the decode call itself."""
    import simplejpeg

    def cpu_decode(flat: torch.Tensor, lengths: torch.Tensor, device: torch.device) -> torch.Tensor:
        images = [simplejpeg.decode_jpeg(t.numpy().tobytes(), colorspace="RGB") for t in flat.split(lengths.tolist())]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().to(device)

    monkeypatch.setattr(end_to_end, "gpu_decode", cpu_decode)
    monkeypatch.setattr(end_to_end, "gpu_decode_unavailable", lambda ds, device: None)
    results = end_to_end.main([str(staged / "imagenet" / "prepared"), "--device=cpu", "--decode=gpu",
                               "--model=alexnet_small", '--model-options={"width": 0.125}', "--crop=32",
                               "--batch-size=4", "--steps=3", "--warmup=1", "--workers=1", "--no-compile"])
    assert results["gpu"]["end_to_end_images_per_s"] > 0


# --------------------------------------------------------------------------- exact resume


class Blobs(torch.utils.data.Dataset):
    """Tiny in-memory dataset (as tests/test_training.py's): each class a colour plus noise."""

    def __init__(self, n: int = 96, classes: int = 4, size: int = 36, seed: int = 0) -> None:
        from alexnet.data.stats import compute_stats

        g = torch.Generator().manual_seed(seed)
        self.targets = [i % classes for i in range(n)]
        colours = torch.randint(0, 256, (classes, 3, 1, 1), generator=torch.Generator().manual_seed(7))
        noise = torch.randint(-50, 50, (n, 3, size, size), generator=g)
        self.images = (colours[torch.tensor(self.targets)] + noise).clamp(0, 255).to(torch.uint8)
        self.classes = [f"c{i}" for i in range(classes)]
        self.class_names = list(self.classes)
        self.image_size = size
        self.stats = compute_stats([self.images])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def _config(out: Path, device: str, **kw):
    from alexnet.training import from_dict

    # crop 32: alexnet_small's adaptive pool then sees 4x4 and maps it 1:1 (its CUDA backward
    # would otherwise accumulate with atomics, which no deterministic mode can order).
    values = {"out": str(out), "model": "alexnet_small", "model_options": {"width": 0.125, "fc_dim": 128,
              "dropout": 0.5}, "crop": 32, "norm_mode": "channel", "epochs": 2, "batch_size": 16, "lr": 0.05,
              "schedule": "onecycle", "num_workers": 0, "log_every": 2, "progress": False, "tensorboard": False,
              "deterministic": True, "device": device, **kw}
    return from_dict(values)


# The CPU form: tests/test_training.py::test_stopped_then_resumed_equals_uninterrupted.
@pytest.mark.parametrize("device", [CUDA])
def test_stopped_then_resumed_on_the_device_is_bit_exact(device: str, tmp_path: Path) -> None:
    """Stop mid-epoch, resume: the final weights equal an uninterrupted run's bit for bit on
    the device too (CUDA RNG, the device augmentation generator, dropout and momentum all
    restored). Nondeterministic-op warnings are reported with a failure."""
    from alexnet.checkpoint import load_safetensors
    from alexnet.training import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_config(tmp_path / "a", device), train_set=Blobs(), val_set=Blobs(32, seed=1))
        part = train(_config(tmp_path / "b", device, max_steps=9), train_set=Blobs(), val_set=Blobs(32, seed=1))
        done = train(_config(tmp_path / "b", device), train_set=Blobs(), val_set=Blobs(32, seed=1), resume=True)
    assert part.status == "max_steps" and done.status == "completed" and done.step == 12
    a = load_safetensors(tmp_path / "a" / "model.safetensors")[0]
    b = load_safetensors(tmp_path / "b" / "model.safetensors")[0]
    nondet = sorted({str(w.message)[:160] for w in caught if "determinis" in str(w.message)})
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ after resume: {differing}; nondeterministic ops: {nondet}"


# --------------------------------------------------------------------------- the engine's device path


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_device_fast_path(device: str, tmp_path: Path) -> None:
    """The engine on the device: bf16 autocast where native ('auto'), channels_last on CUDA,
    pinned memory and non-blocking copies, torch.compile on CUDA; it learns the blobs."""
    from alexnet.devices import native_bf16
    from alexnet.training import train

    cuda = device == "cuda"
    # On the CPU: no compilation (minutes there; the slow bench test covers it) and one epoch
    # (tests/test_training.py shows the engine learns on the CPU).
    result = train(_config(tmp_path / "run", device, deterministic=False, epochs=3 if cuda else 1, compile=cuda),
                   train_set=Blobs(), val_set=Blobs(32, seed=1))
    info = json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert info["amp"] == ("bf16" if native_bf16(torch.device(device)) else "none")
    assert info["channels_last"] is cuda
    assert info["device"].startswith(device)
    assert result.status == "completed" and result.val_top1 is not None
    if cuda:
        assert result.val_top1 > 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_uses_fused_sgd_and_cuda_graphs_on_a_gpu(device: str, tmp_path: Path) -> None:
    """The trainer's optimiser is fused on CUDA (one kernel for every parameter) and
    ``compile_mode='reduce-overhead'`` (CUDA graphs) reaches torch.compile; on the CPU the
    optimiser is the plain loop."""
    from alexnet.training.trainer import Trainer

    cfg = _config(tmp_path / "run", device, deterministic=False, epochs=1, compile=device == "cuda",
                  compile_mode="reduce-overhead")
    t = Trainer(cfg, train_set=Blobs(), val_set=None)
    assert t.optimizer.defaults["fused"] is (True if device == "cuda" else None)
    if device == "cuda":
        assert t.fit().status == "completed"


# --------------------------------------------------------------------------- the GPU suite itself


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gpu_suite.py stage --dry-run``: synthetic data in the staged layout (a CIFAR zip, a
    prepared JPEG set of 24 images). Run in a fresh process: it forks a preparation pool,
    which is not safe from this one once torch's threads have started."""
    import subprocess

    stage = tmp_path_factory.mktemp("stage")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "stage", "--dry-run", "--dest",
                           str(stage)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return stage


def test_gpu_suite_dry_run_every_part(staged: Path, tmp_path: Path) -> None:
    """Every part of bench/gpu_suite.py on the CPU at tiny sizes on staged synthetic data: the
    same commands and arguments as on the GPU, the same JSON and tables."""
    stage, out = staged, tmp_path / "out"
    assert (stage / "cifar10" / "cifar10-train.zip").is_file() and (stage / "imagenet" / "prepared").is_dir()
    rc = gpu_suite.main(["all", "--dry-run", "--in-process", "--data", str(stage), "--out", str(out)])
    reports = {p: json.loads((out / f"{p}.json").read_text()) for p in gpu_suite.PARTS}
    statuses = {(p, s["name"]): s["status"] for p, r in reports.items() for s in r["steps"]}
    assert rc == 0, statuses
    assert set(statuses.values()) == {"ok"}
    assert {n for _, n in statuses} == {"environment", "throughput", "end_to_end", "gpu_tests", "cuda_graphs",
                                        "cifar10_60s", "profile", "cifar10_long"}
    md = gpu_suite.render(list(reports.values()))
    for heading in ("Training throughput", "End to end", "CIFAR-10 on a time budget", "Where the time goes",
                    "top kernels, compiled", "CUDA tests:", "Unit atlas", "Targets (issue 19)"):
        assert heading in md, heading
    assert "DRY RUN" in md and "dry run: no verdict" in md
    assert "python bench/train_throughput.py" in md.replace(sys.executable, "python")
    assert (out / "profile.txt").is_file() and (out / "part1.log").stat().st_size > 0
    # the report command reads the parts back
    assert gpu_suite.main(["report", str(out), "--write", str(tmp_path / "all.md")]) == 0
    assert "Where the time goes" in (tmp_path / "all.md").read_text()


def test_gpu_suite_failures_are_loud(tmp_path: Path) -> None:
    """A failing, a hanging and an unreached step are each recorded as such (never 'ok'), and a
    failed environment check stops the part before it measures anything."""
    ctx = gpu_suite.Context(stage=tmp_path, out=tmp_path / "out", work=tmp_path / "work", dry=True)
    gpu_suite.setup_env(ctx)
    py = sys.executable
    S = gpu_suite.Step
    stale = tmp_path / "stale.json"
    stale.write_text('{"results": []}')  # an earlier attempt's file: not this step's results
    steps = [S("ok", [py, "-c", "print('fine')"], 30, "throughput"),
             S("fails", [py, "-c", "raise SystemExit(3)"], 30, "throughput"),
             S("silent", [py, "-c", "pass"], 30, "throughput", json_path=str(stale)),
             S("hangs", [py, "-c", "import time; time.sleep(60)"], 1, "throughput"),
             S("late", [py, "-c", "pass"], 30, "throughput")]
    got = {r.name: r.status for r in gpu_suite.run_part("part1", ctx, time_limit=21, steps=steps)}
    assert got["ok"] == "ok" and got["fails"] == "failed (rc 3)"
    assert got["silent"] == "failed (no results written)" and got["hangs"].startswith("timed out")
    assert got["late"] == "not run (the part's time limit was reached)"
    steps = [S("environment", [py, "-c", "raise SystemExit(1)"], 30, "environment"), S("next", [py, "-c", ""], 30, "x")]
    got = {r.name: r.status for r in gpu_suite.run_part("part1", ctx, time_limit=60, steps=steps)}
    assert got == {"environment": "failed (rc 1)", "next": "not run (the environment check failed)"}


def test_gpu_suite_targets_verdicts() -> None:
    """The targets table: met / not met from the figures, 'not measured' where a part is missing."""
    tp = {"results": [{"path": "baseline", "batch_size": 256, "images_per_s": 12_000.0},
                      {"path": "fast", "batch_size": 256, "images_per_s": 41_000.0}]}
    e2e = {"results": {"cpu": {"end_to_end_images_per_s": 9_000.0}, "gpu": {"end_to_end_images_per_s": 24_000.0}}}
    cifar = {"top1_flip": 0.931, "elapsed_s": 59.0}
    steps = {"throughput": {"data": tp}, "end_to_end": {"data": e2e}, "cifar10_60s": {"data": cifar}}
    rows = gpu_suite.targets(steps, dry=False)
    assert [v for _, _, v in rows] == ["**met**", "**not met**", "**met**"]
    assert "3.42x the baseline" in rows[0][1] and "(gpu decode)" in rows[1][1]
    assert [v for _, _, v in gpu_suite.targets({}, dry=False)] == ["not measured"] * 3


def test_gpu_marker_selects_only_the_cuda_half() -> None:
    """``-m gpu`` (the GPU session's selection) must pick the CUDA parameters and nothing that
    would run on the CPU: every 'cuda' parameter carries the marker and the CUDA skip."""
    marks = {m.name for m in CUDA.marks}
    assert marks == {"gpu", "skipif"}
    assert CUDA.values == ("cuda",)
