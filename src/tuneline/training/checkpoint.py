"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and loop position.

Everything is safetensors or JSON except the optimizer state, which is our own file and is
read back with torch.load(weights_only=True): nothing user-supplied is ever unpickled.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import sharding
from ..runs import atomic_write_json, staged_dir


def trainable_state(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable weights. A sharded model's are gathered, which every rank
    must take part in; ranks that will not write pass keep=False and hold nothing."""
    out = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if sharding.is_sharded(p):
            t = sharding.full(p)
        elif keep:
            t = p.detach().cpu().contiguous().clone()
        if keep:
            out[n] = t
    return out


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise RuntimeError(f"checkpoint does not match the model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            p = params[n]
            p.copy_(sharding.shard_like(t, p) if sharding.is_sharded(p) else t.to(p.device, p.dtype))


def save_weights(model: torch.nn.Module, folder: Path, write: bool = True) -> None:
    """write=False: a sharded model's other ranks, which only help gather."""
    weights = trainable_state(model, keep=write)
    if not write:
        return
    with staged_dir(folder) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))


def save_checkpoint(folder: Path, model, optimizer, scheduler, loop_state: dict, write: bool = True) -> None:
    """write=False as for save_weights. A sharded run's files are those of an unsharded one."""
    sharded = any(sharding.is_sharded(p) for p in model.parameters())
    weights = trainable_state(model, keep=write)
    optim_state = sharding.full_optimizer_state(optimizer, keep=write) if sharded else optimizer.state_dict()
    if not write:
        return
    with staged_dir(folder) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        atomic_write_json(tmp / "state.json", {**loop_state, "python_random": _py_random_state()})


def find_checkpoint(folder: Path) -> Path | None:
    """The last complete checkpoint; a kill during the swap leaves the previous one as `.last.old`."""
    folder = Path(folder)
    for c in (folder, folder.with_name(f".{folder.name}.old")):
        if (c / "state.json").exists():
            return c
    return None


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> dict:
    folder = Path(folder)
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    optim_state = _load_tensors(folder / "optimizer.pt")
    if any(sharding.is_sharded(p) for p in model.parameters()):
        optim_state = sharding.shard_optimizer_state(optim_state, optimizer)
    optimizer.load_state_dict(optim_state)
    scheduler.load_state_dict(_load_tensors(folder / "scheduler.pt"))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    state = json.loads((folder / "state.json").read_text())
    _set_py_random_state(state.pop("python_random"))
    return state


def _load_tensors(path: Path):
    """Our own torch.save file, read without running code: anything else in it is refused."""
    from ..errors import UserError

    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for a damaged file
        raise UserError(f"{path}: not a checkpoint tuneline wrote ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        "start the run again with --overwrite") from None


def _py_random_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_py_random_state(s: list) -> None:
    random.setstate((s[0], tuple(s[1]), s[2]))
