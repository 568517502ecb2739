"""One trial = one ordinary run in the study folder, with a callback that reports each
validation check to Optuna, prunes weak trials and keeps to the time budget."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import RunFailed, RunStopped, UserError
from ..training.loop import Callback
from ..recipe import Recipe, recipe_from_dict
from ..runs import RunDir
from .space import Dimension, trial_recipe
from .study import Settings, StudyDir


class TrialCallback(Callback):
    """Validation records -> trial.report at check floor(k * step / total_steps), so trials with
    different batch sizes are compared at the same share of their training."""

    def __init__(self, trial, metric: str, checks: int, deadline: float | None = None):
        self.trial, self.metric, self.checks, self.deadline = trial, metric, checks, deadline
        self.reported: dict[int, float] = {}
        self.total = 1

    def on_train_start(self, trainer, state) -> None:
        self.total = trainer.plan.total_steps
        # A resumed trial: the checks before its checkpoint count too (the log was cut back to it).
        for rec in trainer.run.read_metrics():
            if rec.get("type") == "eval":
                self._report(rec)

    def _report(self, rec: dict) -> tuple[int, float]:
        value = rec.get(self.metric)
        if value is None:
            names = ", ".join(k for k, v in rec.items() if isinstance(v, (int, float)) and k not in ("step", "epoch"))
            raise UserError(f"search.metric: {self.metric!r} is not in the validation records; available: {names}")
        check = self.checks * rec["step"] // self.total
        if check not in self.reported:
            self.trial.report(value, check)
            self.reported[check] = value
        return check, value

    def on_log(self, trainer, record) -> None:
        self._check_deadline()

    def on_evaluate(self, trainer, record) -> None:
        check, value = self._report(record)
        # The last check comes after all training is spent: nothing left to save by pruning.
        if record["step"] < self.total and self.trial.should_prune():
            raise RunStopped("pruned", f"pruned at check {check}/{self.checks}: the pruner judged validation "
                             f"{self.metric} {value:.4f} too weak to go on")
        self._check_deadline()

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.time() >= self.deadline:
            raise RunStopped("stopped", "the search's time budget is spent")


@dataclass
class Outcome:
    number: int
    state: str                      # complete | pruned | stopped | failed | interrupted
    value: float | None = None      # the objective (complete trials)
    seconds: float = 0.0
    message: str = ""
    params: dict = field(default_factory=dict)


@lru_cache(maxsize=8)
def _train_rows(recipe_json: str, base_dir: str) -> int:
    """Rows left for training after the held-out splits (read once per process and data config)."""
    from ..training.pipeline import load_splits
    from ..tasks import task_of

    recipe = recipe_from_dict(json.loads(recipe_json))
    splits, _ = load_splits(recipe, Path(base_dir), task_of(recipe))
    return len(splits.train)


def train_rows(recipe: Recipe, base_dir: str | Path) -> int:
    data_only = {"task": recipe.task, "model": recipe.model, "data": recipe.data.model_dump(mode="json"),
                 "train": {"seed": recipe.train.seed}}
    return _train_rows(json.dumps(data_only, sort_keys=True), str(base_dir))


def with_checks(recipe: Recipe, base_dir: str, checks: int) -> Recipe:
    """Evaluate k times per trial (unless the recipe sets eval_every): the pruner needs checks
    during training, not just one at the end of a one-epoch run."""
    from ..training.loop import make_plan

    if recipe.train.eval_every is not None or checks < 2:
        return recipe
    total = make_plan(train_rows(recipe, base_dir), recipe.train).total_steps
    recipe.train.eval_every = max(1, math.ceil(total / checks))
    return recipe


def prepare_trial(trial, sd: StudyDir, s: Settings, dims: list[Dimension]) -> tuple[Recipe, Path, bool, dict]:
    """The trial's recipe and run folder. A retried (interrupted) trial takes over the old run
    folder and its exact recipe, and continues from its checkpoint."""
    folder = sd.trial_dir(trial.number)
    params = {d.key: d.sample(trial) for d in dims}
    old_number = trial.user_attrs.get("resume_of")
    if old_number is not None:
        old = RunDir(sd.trial_dir(old_number))
        if old.exists() and old.recipe.exists() and not folder.exists():
            old.path.rename(folder)
            return RunDir(folder).load_recipe(), folder, True, params
    recipe = trial_recipe(s.base, params)
    recipe.output = str(folder)  # where the trial ran, so its recipe.yaml says so
    if s.threads and s.base["train"].get("num_threads") is None:
        recipe.train.num_threads = s.threads
    return with_checks(recipe, s.base_dir, s.search["evals_per_trial"]), folder, False, params


def objective_value(folder: Path, metric: str) -> float:
    """The metric in the validation record of the step whose weights the run kept (its best
    checkpoint): the model the trial delivers, never the test split."""
    run = RunDir(folder)
    best_step = run.read_manifest().get("best_step")
    evals = [r for r in run.read_metrics() if r.get("type") == "eval" and metric in r]
    if not evals:
        raise RunFailed(f"{folder}: no validation record with {metric!r}")
    rec = next((r for r in evals if r["step"] == best_step), evals[-1])
    return float(rec[metric])


def run_trial(trial, sd: StudyDir, s: Settings, dims: list[Dimension], deadline: float | None = None) -> Outcome:
    """Train one trial (output to its log file) and return its outcome; the caller tells Optuna.
    UserError and KeyboardInterrupt propagate (after the outcome is recorded on the trial)."""
    from ..training.pipeline import train

    t0 = time.time()
    recipe, folder, resume, params = prepare_trial(trial, sd, s, dims)
    out = Outcome(trial.number, "failed", params=params)
    trial.set_user_attr("folder", str(folder.relative_to(sd.path)))
    sd.logs.mkdir(parents=True, exist_ok=True)
    cb = TrialCallback(trial, s.metric, s.search["evals_per_trial"], deadline)
    with open(sd.trial_log(trial.number), "a", encoding="utf-8") as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            train(recipe, output=folder, base_dir=Path(s.base_dir), resume=resume, force=s.force, callbacks=[cb])
            out.state, out.value = "complete", objective_value(folder, s.metric)
        except RunStopped as e:
            out.state, out.message = e.status, str(e)
        except RunFailed as e:
            out.message = str(e)
        except KeyboardInterrupt:
            out.state, out.message = "interrupted", "interrupted"
            raise
        finally:
            out.seconds = round(time.time() - t0, 1)
            trial.set_user_attr("seconds", out.seconds)
            trial.set_user_attr("status", out.state)
            if out.message:
                trial.set_user_attr("message", out.message[:500])
            if out.state not in ("complete", "interrupted"):  # an interrupted trial resumes from its checkpoint
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            print(f"\n[tune] trial {trial.number}: {out.state} {out.message}", flush=True)
    return out


def remove_weights(folder: Path, why: str) -> None:
    """keep_models: best. A trial's weights are 90 MB and up; its metrics, recipe and report stay."""
    run = RunDir(folder)
    if not run.model_dir.exists() and not run.adapter_dir.exists():
        return
    for d in (run.model_dir, run.adapter_dir, run.checkpoints):
        shutil.rmtree(d, ignore_errors=True)
    run.update_manifest(weights_removed=why)
