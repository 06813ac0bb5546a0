"""Which device a command runs on, and what it computes natively: one rule for every command."""

from __future__ import annotations

import torch

from alexnet.errors import UsageError


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` (or None): CUDA if available, else the CPU; ``"cuda"`` without an index:
    this process's GPU (``local_rank`` under torchrun). A device name torch does not know,
    or CUDA on a machine without it, is a :class:`UsageError` naming the value."""
    if name is None or name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UsageError(f"device {str(name)!r} is not a device name (cpu, cuda, cuda:N, auto): {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {str(name)!r}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether the hardware computes in bf16 natively, so autocast to it is a speed-up:
    a CUDA GPU with bf16 (Ampere and later), or a CPU with AVX512-BF16 or AMX. Elsewhere
    bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return False


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast to for the ``amp`` setting: ``bf16`` always, ``auto`` where the
    hardware computes bf16 natively, ``none`` never (None: full fp32)."""
    return torch.bfloat16 if amp == "bf16" or (amp == "auto" and native_bf16(device)) else None
