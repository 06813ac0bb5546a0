"""Helpers shared by the benchmarks: device choice, hardware description, FLOP counts, timing.

The benchmark scripts import this as a sibling module (``bench/`` is put on ``sys.path``
by the scripts themselves), so they run as ``python bench/<name>.py`` from the project
root without being part of the installed package.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn


def resolve_device(name: str = "auto") -> torch.device:
    """The project's device rule (``auto``: CUDA when present); a bad one ends the benchmark
    with its one-line message."""
    from alexnet.devices import resolve_device as resolve
    from alexnet.errors import UsageError

    try:
        return resolve(name)
    except UsageError as exc:
        raise SystemExit(f"error: --device: {exc}") from None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_hardware(device: torch.device) -> str:
    """One line naming the accelerator (or CPU and its threads) and the torch build."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        extra = f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        hw = f"{cpu_model()} ({torch.get_num_threads()} threads)"
        extra = ""
    return f"hardware: {hw}; torch {torch.__version__}{extra}; python {platform.python_version()}"


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worth using here: the training engine's own rule
    (``amp: auto``), so a benchmark measures what training does."""
    from alexnet.devices import native_bf16

    return native_bf16(device)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """FLOPs of one forward pass for one image (multiply-add = 2 FLOPs), by ``FlopCounterMode``.

    Counts the convolutions and matrix products (what the hardware's peak refers to);
    ReLU, LRN, pooling and dropout are a rounding error next to them. The model is
    run on a single image in eval mode so that the count is per image.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


class _Stdout(logging.StreamHandler):
    """A handler writing to whatever ``sys.stdout`` is at each message (pytest swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


@contextlib.contextmanager
def engine_messages(prefix: str = "") -> Iterator[None]:
    """Inside: the library's progress (logger ``alexnet``: epoch lines, re-plans) goes to
    stdout, as the CLI shows it, so that a benchmark's log holds the run's epochs; each line
    starts with ``prefix`` (which of several processes wrote it). The handler is removed on
    the way out (a test process runs other commands after a benchmark)."""
    logger = logging.getLogger("alexnet")
    handler, level = _Stdout(), logger.level
    handler.setFormatter(logging.Formatter(prefix.replace("%", "%%") + "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_first(step: Callable[[], object], device: torch.device) -> float:
    """Seconds of the first call (compilation with torch.compile, allocator warm-up)."""
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def time_steps(step: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls (device-synchronised)."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / max(steps, 1)


@contextlib.contextmanager
def maybe_autocast(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast on ``device`` when ``enabled`` (weights stay fp32: mixed precision)."""
    if enabled:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def make_sgd(params, lr: float, *, fast: bool, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum 0.9 and weight decay 5e-4 (the paper's); ``fast`` uses the fused
    kernel on CUDA (one launch for all parameters) or the foreach path elsewhere."""
    kwargs: dict[str, object] = {}
    if fast:
        kwargs = {"fused": True} if device.type == "cuda" else {"foreach": True}
    else:
        kwargs = {"foreach": False}
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, **kwargs)


def train_step_flops(model: nn.Module, input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> int:
    """FLOPs of one training step per image: forward and backward, counted by
    ``FlopCounterMode`` on a batch of two in training mode (frozen layers, such as a fixed
    first layer, need no weight gradient and are counted as they run)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.train()
    x = torch.zeros(2, *input_shape, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return int(counter.get_total_flops()) // 2


def matmul_tflops(
    device: torch.device, n: int | None = None, reps: int | None = None, dtype: torch.dtype = torch.bfloat16
) -> float:
    """Achieved TFLOP/s of an ``n x n x n`` matrix product of ``dtype`` (bf16 by default) on
    ``device`` (2n^3 FLOPs each).

    The practical ceiling of the tensor cores, measured in the same process as the figures it
    is compared with (clocks and driver as they are now), rather than a datasheet peak: an
    H100 SXM gives about 800 of its nominal 989 dense bf16 TFLOP/s. Random data (zeros run
    faster). Defaults: n 8192 and 10 timed products on CUDA, n 512 and 3 products elsewhere.
    """
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 512)
    reps = reps or (10 if cuda else 3)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    seconds = time_steps(lambda: torch.mm(a, b), reps, 3, device)
    return 2 * n**3 / seconds / 1e12
