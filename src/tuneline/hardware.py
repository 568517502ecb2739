"""What this machine can do: device and the precision that is actually fast on it."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    # bf16 training only pays on CPUs with AMX tile units. Without them PyTorch emulates or
    # half-uses bf16 and autocast's casts eat the gain (measured 9-12x slower on an AVX2 EPYC;
    # no better than fp32 on an AVX512-BF16 EPYC, with worse numerics). So: AMX or fp32.
    return "amx_bf16" in cpu_flags()


def device_type() -> str:
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_precision(requested: str) -> str:
    """Map the recipe's precision to fp32 | bf16 | fp16 for this machine."""
    if requested != "auto":
        return requested
    if device_type() == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return n
    except ImportError:
        pass
    return os.cpu_count() or 1


def describe() -> dict:
    return {
        "device": device_type(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
    }
