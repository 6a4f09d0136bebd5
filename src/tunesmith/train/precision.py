"""Choosing the numeric precision of training: bf16 autocast only where it is really faster.

On a GPU that is a capability check. On a CPU the capability flags are not enough: a CPU without
native bf16 units (AVX-512 BF16 or AMX) runs bf16 matrix products through a slow fallback, often
several times slower than fp32. So a CPU gets bf16 only when oneDNN reports bf16 support *and* a
small matrix-product probe shows bf16 beating fp32.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

Resolved = Literal["bf16", "fp16", "fp32"]


def _best_time(dtype: torch.dtype, size: int = 256, repeats: int = 5) -> float:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up: first calls pick kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16_is_fast() -> bool:
    supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return supported and _best_time(torch.bfloat16) < 0.8 * _best_time(torch.float32)


def resolve_precision(requested: str, device: torch.device) -> Resolved:
    """`auto` becomes bf16 where the hardware runs it fast; fp16 (with a gradient scaler) on GPUs
    without bf16; fp32 otherwise. fp16 asked for without a GPU is fp32: CPUs have no fp16
    matrix units and no scaler."""
    if requested == "fp16":
        return "fp16" if device.type == "cuda" else "fp32"
    if requested != "auto":
        return "bf16" if requested == "bf16" else "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_bf16_is_fast() else "fp32"


def autocast_for(
    precision: str, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of the autocast context that evaluates as a model was trained."""
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtypes[precision])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
