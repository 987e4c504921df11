"""Choosing the torch device and dtype from user settings ("auto", "cuda:1", "bf16", ...).

The name checks run when settings are read, before anything loads, so they avoid importing
torch for the names everyone types.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import UserInputError

if TYPE_CHECKING:
    import torch

_DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
# The device kinds REX runs on, recognised without importing torch.
_COMMON_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


MAX_DEVICE_INDEX = 1024  # torch refuses indices beyond a C int; no machine comes near


def check_device_name(device: "str | torch.device") -> None:
    """Refuse a device name torch does not know (``"cdua"``), before anything loads."""
    if isinstance(device, str) and ":" in device and device.partition(":")[2].isdigit() \
            and int(device.partition(":")[2]) >= MAX_DEVICE_INDEX:
        raise UserInputError(f"device {device!r}: no machine has that many GPUs (index under {MAX_DEVICE_INDEX})")
    if not isinstance(device, str) or device == "auto" or _COMMON_DEVICE.fullmatch(device):
        return
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise UserInputError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if kind not in ("cpu", "cuda"):  # mps, xpu, meta, ...: torch knows them, REX does not run there
        raise UserInputError(f"device {device!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """``"auto"`` picks CUDA when present, else CPU; a CUDA device that is absent is an error."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(device)
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} asked for, but no CUDA GPU is available; use --device cpu")
    return resolved


def check_dtype_name(dtype: str) -> str:
    """``dtype`` itself when it is "auto" or a known name; else the one-line ``UserInputError``."""
    if dtype != "auto" and str(dtype).lower() not in _DTYPES:
        raise UserInputError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
    return dtype


def resolve_dtype(dtype: "str | torch.dtype", device: "torch.device", *, half_on_gpu: bool = True) -> "torch.dtype":
    """``"auto"``: bf16 (or fp16 without bf16 support) on CUDA when ``half_on_gpu``, else fp32.

    Half precision on CPU is slow and poorly supported, so "auto" never picks it there.
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and half_on_gpu:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, _DTYPES[check_dtype_name(dtype).lower()])
