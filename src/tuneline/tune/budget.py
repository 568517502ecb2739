"""Time: durations on the command line, and the dry run's estimate of how many trials fit,
from a short timing probe of the base recipe on this machine."""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..training.loop import Callback, make_plan
from ..recipe import Recipe

_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, option: str = "--timeout") -> float:
    """'2h', '90m', '1h30m', '45s' or plain seconds -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        seconds = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", t)
        if not parts or "".join(n + u for n, u in parts) != t:
            raise UserError(f"{option} {text!r}: give a duration such as 2h, 90m, 1h30m or 600s")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"{option} {text!r}: must be more than zero")
    return seconds


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class _EvalTimer(Callback):
    """The probe's one validation pass: timed between the last step's log line and its evaluation."""

    def __init__(self):
        self.logged_at: float | None = None
        self.eval_seconds = 0.0

    def on_log(self, trainer, record) -> None:
        self.logged_at = time.perf_counter()

    def on_evaluate(self, trainer, record) -> None:
        if self.logged_at is not None:
            self.eval_seconds = time.perf_counter() - self.logged_at


@dataclass
class Estimate:
    setup_seconds: float        # model load, audit, saving, everything but steps and evaluations
    step_seconds: float
    eval_seconds: float         # one validation pass
    test_seconds: float         # the final test evaluation
    steps: int                  # optimizer steps of one full trial (base recipe)
    checks: int                 # validation passes of one full trial

    @property
    def full_trial(self) -> float:
        return self.setup_seconds + self.steps * self.step_seconds + self.checks * self.eval_seconds + self.test_seconds

    def pruned_at_first_check(self, k: int) -> float:
        return self.setup_seconds + math.ceil(self.steps / k) * self.step_seconds + self.eval_seconds

    def trials_that_fit(self, seconds: float, k: int, startup: int) -> tuple[int, int]:
        """(no trial pruned, every trial after the start-up ones pruned at its first check)."""
        low = int(seconds // self.full_trial)
        if low <= startup:
            return low, low
        rest = seconds - startup * self.full_trial
        return low, startup + int(rest // self.pruned_at_first_check(k))


def probe(recipe: Recipe, base_dir: Path, checks: int, force: bool = False, steps: int = 8) -> Estimate:
    """Train the base recipe for a few steps in a scratch folder (removed afterwards) and time it."""
    import contextlib
    import io

    from ..training.pipeline import train
    from ..runs import RunDir
    from .trial import train_rows, with_checks

    full = with_checks(recipe.model_copy(deep=True), str(base_dir), checks)
    plan = make_plan(train_rows(full, base_dir), full.train)
    every = full.train.eval_every
    # the loop evaluates at every eval_every steps, at each epoch end and at the last step
    n_checks = sum(1 for s in range(1, plan.total_steps + 1)
                   if s == plan.total_steps or (every and s % every == 0) or s % plan.steps_per_epoch == 0)
    short = recipe.model_copy(deep=True)
    short.train.max_steps = max(2, min(steps, plan.total_steps))
    short.train.eval_every = None
    short.train.early_stopping = None
    scratch = Path(tempfile.mkdtemp(prefix="tuneline-probe-"))
    timer = _EvalTimer()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train(short, output=scratch / "run", base_dir=base_dir, force=force, callbacks=[timer])
        wall = time.perf_counter() - t0
        m = RunDir(scratch / "run").read_manifest()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    step_s = m["train_seconds"] / m["steps"]
    test_s = m.get("test_eval_seconds", 0.0)
    setup = max(0.0, wall - m["train_seconds"] - timer.eval_seconds - test_s)
    return Estimate(setup, step_s, timer.eval_seconds, test_s, plan.total_steps, n_checks)
