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


def busy_cores(sample_s: float = 0.3) -> float:
    """Cores kept busy by other processes right now (system-wide CPU use over a short sample,
    taken while this process sleeps), in physical-core units."""
    try:
        import psutil

        share = psutil.cpu_percent(interval=sample_s) / 100
    except (ImportError, OSError):
        return 0.0
    return share * physical_cores()


def training_threads() -> tuple[int, str]:
    """Threads for CPU training when the recipe names none: the physical cores not already busy.
    An OpenMP team larger than the free cores waits on its slowest (descheduled) thread at
    every parallel region: on this 2-core machine with other jobs running, 2 threads trained
    at 5.9 tokens/s where 1 thread reached 87, and a 512x512 matmul ran at 11-16 vs 49-51 GFLOP/s.
    An OMP_NUM_THREADS in the environment is the caller's choice and is taken as it is."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), ""
    cores = physical_cores()
    busy = busy_cores()
    n = max(1, cores - round(busy))
    note = f"{busy:.1f} of {cores} cores busy with other work" if n < cores else ""
    return n, note


def describe() -> dict:
    return {
        "device": device_type(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
    }
