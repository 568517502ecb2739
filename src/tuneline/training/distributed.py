"""Data-parallel training over several processes (torchrun): gloo on CPU, NCCL on GPU.

Every rank reads the same data and draws the same batches (a pure function of seed and epoch);
each takes its share of the rows of every micro-batch, and the gradients are averaged before
the optimizer step, so N processes follow the trajectory of one process with the same global
batch. Gradients are all-reduced by hand rather than through DistributedDataParallel: the
generate loss runs the decoder and the output layer separately (output layer only where the
loss counts), which bypasses DDP's forward hooks. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def launched() -> bool:
    """Started by torchrun (any world size, this node or several): never relaunch."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main() -> bool:
    return world()[0] == 0


def active() -> bool:
    return world()[1] > 1


def init() -> None:
    """Join the process group (Accelerate's shared state picks gloo on CPU, NCCL on GPU)."""
    if active() and not dist.is_initialized():
        from accelerate import PartialState

        PartialState()


def barrier() -> None:
    if active() and dist.is_initialized():
        dist.barrier()


def shard(rows: list[int]) -> tuple[list[int], float]:
    """This rank's rows of a micro-batch, and the weight that makes the average of the ranks'
    mean losses equal the mean over the whole batch. A rank left without rows (a batch smaller
    than the world) computes one row with weight 0, so every rank joins the all-reduce."""
    rank, size = world()
    mine = rows[rank::size]
    if not mine:
        return rows[:1], 0.0
    return mine, len(mine) * size / len(rows)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    flat = _flatten_dense_tensors(grads)  # one collective instead of one per tensor
    dist.all_reduce(flat)
    flat /= world()[1]
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def _collective_device() -> torch.device:
    # NCCL reduces only tensors on the GPU; gloo only those on the CPU
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def launch(argv: list[str], nproc: int, sharded: bool = False) -> int:
    """Re-run this command under torchrun with nproc processes on this machine; each process
    gets an equal share of the CPU threads."""
    from ..hardware import device_type, physical_cores

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, physical_cores() // nproc)))
    if sharded and device_type() == "cpu":
        # FSDP's gathered weights and full-size gradients are freed after every block. glibc's
        # adaptive threshold then serves such blocks from the heap, which it keeps: measured on a
        # 134M Llama, per-process RSS stayed at plain data-parallel level (3.4 vs 3.2 GiB peak)
        # until large blocks were always mmap-ed (2.0 vs 3.0 GiB).
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tuneline", *argv]
    return subprocess.run(cmd, env=env).returncode
