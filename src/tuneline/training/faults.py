"""What happens when a run is stopped or breaks: Ctrl-C checkpoints and says how to resume; out of
memory and a full disk are answered with what to change; a bad input found once the run folder
exists leaves no half-made folder behind."""

from __future__ import annotations

import errno
import shutil
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunFailed, UserError
from .methods import get_method


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, handled at a step boundary: a checkpoint of that step exists."""

    def __init__(self, step: int):
        super().__init__(f"interrupted at step {step}")
        self.step = step


_stop = threading.Event()


def stop_requested() -> bool:
    return _stop.is_set()


@contextmanager
def graceful_interrupt(enabled: bool = True):
    """The first Ctrl-C asks the loop to stop after the current step (it checkpoints and raises
    Interrupted); a second one interrupts at once, as usual."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def first(signum, frame):
        _stop.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C is not ignored
        print("\nStopping after this step to save a checkpoint (Ctrl-C again to stop at once) ...",
              file=sys.stderr, flush=True)

    _stop.clear()
    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _stop.clear()


# -- explaining failures ---------------------------------------------------------------------------

def _is_oom(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def memory_advice(recipe) -> str:
    from ..hardware import device_type

    t = recipe.train
    steps = []
    # a smaller piece per forward is the same update: try it before anything that changes the run
    budget = recipe.memory.token_budget(device_type()) or t.batch_tokens or t.batch_size * t.max_length
    if budget > max(8, t.max_length):
        steps.append(f"--set memory.micro_batch_tokens={max(8, t.max_length, budget // 2)} (same update, "
                     "fewer rows per forward)")
    if t.batch_tokens and t.batch_tokens > t.max_length:
        steps.append(f"--set train.batch_tokens={t.batch_tokens // 2} --set train.grad_accum={t.grad_accum * 2} "
                     "(same tokens per step)")
    elif t.batch_size > 1:
        half = max(1, t.batch_size // 2)
        steps.append(f"--set train.batch_size={half} --set train.grad_accum={t.grad_accum * t.batch_size // half} "
                     "(same effective batch)")
    if t.max_length >= 16:
        steps.append(f"--set train.max_length={t.max_length // 2} (rows are cut shorter)")
    if recipe.memory.gradient_checkpointing is not True:
        steps.append("--set memory.gradient_checkpointing=true (recomputes activations: slower, far less memory)")
    method = get_method(recipe.method)
    if not method.adapter:
        steps.append("--set method=lora (trains adapters only: no optimizer state for the whole model)")
    elif method.options_section == "lora" and method.quantize is None:
        steps.append("--set method=qlora (the frozen base in 4 bits: about a seventh of its fp32 memory)")
    return "; ".join(steps) if steps else "use a machine with more memory"


def explain(e: BaseException, recipe, run) -> Exception:
    """The error a user should see for an exception that escaped the run."""
    if isinstance(e, (UserError, RunFailed)):
        return e
    t = recipe.train
    if _is_oom(e):
        return RunFailed(
            f"out of memory (train.{'batch_tokens' if t.batch_tokens else 'batch_size'}="
            f"{t.batch_tokens or t.batch_size}, train.grad_accum={t.grad_accum}, "
            f"train.max_length={t.max_length}, method {recipe.method}). Change, in this order: {memory_advice(recipe)}. "
            f"`tuneline train RECIPE --dry-run` estimates the peak memory before a run.")
    if _is_disk_full(e, run):
        where = getattr(e, "filename", None) or run.path
        return RunFailed(f"the disk is full (writing {where}: {str(e).splitlines()[0][:120]}; {_free_mib(run.path)} "
                         f"MiB free). The last complete checkpoint is kept: free some space, then continue with --resume")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RunFailed(f"cannot write {e.filename or run.path} ({e.strerror}); make the run folder writable, "
                         f"then continue with --resume")
    if _unreadable_weights(e):
        return UserError(f"model: the weights of {recipe.model} cannot be read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); the file is damaged or not a weights file. "
                         f"tuneline reads safetensors, and PyTorch files only without code (weights_only)")
    return RunFailed(f"run failed: {type(e).__name__}: {e} (details in {run.manifest})")


# torch.save's zip writer and safetensors lose the errno of a failed write; their messages remain.
_WRITE_FAILED = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")
_NO_SPACE = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def _is_disk_full(e: BaseException, run) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    if any(s in text for s in _NO_SPACE):
        return True
    if any(s in text for s in _WRITE_FAILED):
        free = _free_mib(run.path)
        return free != "?" and float(free) < 64  # a write failed and the disk is (nearly) full: that is why
    return False


def _unreadable_weights(e: BaseException) -> bool:
    name = type(e).__name__  # by name: this module imports no pickle machinery at all
    return (name in ("UnpicklingError", "SafetensorError", "HeaderTooLarge")
            or "Weights only load failed" in str(e))


def _free_mib(path: Path) -> str:
    try:
        p = Path(path)
        while not p.exists():
            p = p.parent
        return f"{shutil.disk_usage(p).free / 2**20:.0f}"
    except OSError:
        return "?"


def on_failure(run, e: BaseException, recipe, *, fresh: bool, existed: bool, resume_cmd: str) -> BaseException:
    """Record the failure in run.json (or remove a run folder that holds nothing yet) and return
    the exception to raise. Never raises itself: a full disk must not turn into a traceback here."""
    if isinstance(e, KeyboardInterrupt):
        _safe_update(run, status="interrupted", ended=time.time(), error="interrupted; continue with --resume")
        print(interrupt_message(run, e, resume_cmd), file=sys.stderr, flush=True)
        return e
    err = explain(e, recipe, run)
    if isinstance(err, UserError) and fresh and not run.checkpoints.exists():
        # Nothing trained yet: a folder would only block the corrected re-run ("already exists").
        shutil.rmtree(run.path, ignore_errors=True)
        if existed:
            run.path.mkdir(exist_ok=True)
        return err
    fields = {"status": "failed", "ended": time.time(), "error": str(err)}
    if not isinstance(err, UserError):
        fields["traceback"] = "".join(traceback.format_exception(e))
    _safe_update(run, **fields)
    return err


def interrupt_message(run, e: BaseException, resume_cmd: str) -> str:
    from .checkpoint import find_checkpoint

    if isinstance(e, Interrupted):
        where = f"Interrupted at step {e.step}; checkpoint saved in {run.last_ckpt}."
    else:
        ckpt = find_checkpoint(run.last_ckpt)
        step = _checkpoint_step(ckpt)
        where = (f"Interrupted; the last checkpoint (step {step}) is in {ckpt}." if ckpt
                 else "Interrupted before the first checkpoint; a resumed run starts from step 0.")
    return f"\n{where}\nContinue with: {resume_cmd}"


def _checkpoint_step(ckpt) -> int | str:
    import json

    try:
        return json.loads((Path(ckpt) / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def resume_command(recipe_arg, out: Path, overrides: list[str] | None, force: bool = False) -> str:
    import shlex

    parts = ["tuneline", "train", str(recipe_arg) if recipe_arg is not None else "RECIPE", "-o", str(out)]
    for o in overrides or []:
        parts += ["--set", o]
    return " ".join(shlex.quote(p) for p in parts + ["--resume"] + (["--force"] if force else []))


def _safe_update(run, **fields) -> None:
    try:
        run.update_manifest(**fields)
    except OSError as err:  # the disk that failed the run may refuse this write too
        print(f"warning: could not update {run.manifest}: {err.strerror}", file=sys.stderr)
