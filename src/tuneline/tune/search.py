"""`tuneline tune`: check the recipe's search, open or resume the study folder, run the
workers, and summarise (best recipe, summary.json, report)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import hardware
from ..errors import RunFailed, UserError
from ..recipe import load_recipe, recipe_diff
from .budget import fmt_seconds, probe
from .space import base_dict, build_space
from ..evaluation.direction import lower_is_better
from .study import Settings, StudyDir, open_study, recover
from .summary import format_summary, require_metric, summarize


@dataclass
class SearchResult:
    path: Path
    summary: dict

    @property
    def best(self) -> dict | None:
        return self.summary.get("best")


def default_study_dir(recipe_path: Path, recipe) -> Path:
    name = recipe_path.stem if recipe_path.stem != "recipe" else recipe_path.resolve().parent.name
    return Path(f"{recipe.output or Path('runs') / name}-tune")


def make_settings(recipe_path: Path, overrides: list[str], trials: int | None, nproc: int, force: bool) -> Settings:
    recipe, base_dir = load_recipe(recipe_path, overrides)
    build_space(recipe)  # every key and bound checked before anything is written
    search = recipe.search
    metric = search.metric or (recipe.train.early_stopping.metric if recipe.train.early_stopping
                               else _default_metric(recipe))
    require_metric(metric, recipe)
    direction = search.direction or ("minimize" if lower_is_better(metric) else "maximize")
    if nproc < 1:
        raise UserError("--nproc: give 1 or more processes")
    threads = max(1, hardware.physical_cores() // nproc) if nproc > 1 else None
    return Settings(recipe_file=str(recipe_path.resolve()), base_dir=str(base_dir), base=base_dict(recipe),
                    search=search.model_dump(mode="json"), metric=metric, direction=direction,
                    trials=trials or search.trials, nproc=nproc, threads=threads, force=force)


def _default_metric(recipe) -> str:
    from ..tasks import task_of

    return task_of(recipe).default_metric


def dry_run(s: Settings, budget_seconds: float | None) -> str:
    """Print the plan and how many trials fit, from a timing probe of the base recipe."""
    recipe = s.recipe()
    dims = build_space(recipe)
    k, startup = s.search["evals_per_trial"], s.search["startup_trials"]
    lines = [f"Search space ({len(dims)} keys):"] + [f"  {d.describe()}" for d in dims]
    lines.append(f"Objective: validation {s.metric}, {s.direction}; TPE sampler after {startup} random trials; "
                 f"pruner {s.search['pruner']} at {k} checks per trial")
    print("\n".join(lines), flush=True)
    base = recipe.model_copy(deep=True)
    base.search = None
    if s.threads and base.train.num_threads is None:
        base.train.num_threads = s.threads
    print("Timing probe: a few steps of the base recipe ...", flush=True)
    est = probe(base, Path(s.base_dir), k, force=s.force)
    out = [f"One full trial of the base recipe: about {fmt_seconds(est.full_trial)} "
           f"(set-up and saving {fmt_seconds(est.setup_seconds)}, {est.steps} steps x {est.step_seconds:.2f} s, "
           f"{est.checks} validation checks x {est.eval_seconds:.1f} s, test {est.test_seconds:.1f} s); "
           f"a trial pruned at its first check: about {fmt_seconds(est.pruned_at_first_check(k))}"]
    par = f" with {s.nproc} trials at a time" if s.nproc > 1 else ""
    out.append(f"{s.trials} trials{par}: about {fmt_seconds(est.full_trial * s.trials / s.nproc)} if none is pruned")
    if budget_seconds:
        low, high = est.trials_that_fit(budget_seconds * s.nproc, k, startup)
        out.append(f"Budget {fmt_seconds(budget_seconds)}: {low} full trials fit"
                   + (f", up to {high} when the pruner stops weak trials at their first check" if high > low else "")
                   + (" (not even one: raise the budget or shrink the trials, e.g. data.max_rows)" if low == 0 else ""))
    out.append("Estimates scale the probe's steps to a full trial of the base recipe; searched values that change "
               "the work per trial (batch size, epochs, max_length) move them.")
    return "\n".join(out)


def _prepare_study(sd: StudyDir, s: Settings, overwrite: bool) -> None:
    if sd.exists():
        old = sd.read_settings()
        if overwrite:
            shutil.rmtree(sd.trials, ignore_errors=True)
            shutil.rmtree(sd.logs, ignore_errors=True)
            for f in (sd.db, sd.summary_file, sd.best_recipe, sd.report, sd.settings_file):
                f.unlink(missing_ok=True)
        elif old.identity() != s.identity():
            diff = recipe_diff(old.identity(), s.identity())
            raise UserError(f"{sd.path}: this study was started with a different recipe or search ({', '.join(diff)}); "
                            "run the same recipe to continue it, or use --overwrite or another -o")
    elif sd.path.exists() and any(p for p in sd.path.iterdir() if not p.name.startswith(".")):
        if not overwrite:
            raise UserError(f"{sd.path}: folder exists and is not a study; give another folder with -o or --overwrite")


def run_search(recipe: str | Path, *, overrides: list[str] | None = None, trials: int | None = None,
               timeout_seconds: float | None = None, budget_seconds: float | None = None, nproc: int = 1,
               output: str | Path | None = None, overwrite: bool = False, force: bool = False,
               dry: bool = False) -> SearchResult | None:
    recipe_path = Path(recipe)
    s = make_settings(recipe_path, overrides or [], trials, nproc, force)
    if dry:
        print(dry_run(s, budget_seconds))
        return None
    sd = StudyDir(output or default_study_dir(recipe_path, s.recipe()))
    with sd.session_lock():
        _prepare_study(sd, s, overwrite)
        started = time.time()
        _start_session(sd, s, started, timeout_seconds, budget_seconds)
        limits = [f"{s.trials} trials"] + ([f"timeout {fmt_seconds(timeout_seconds)}"] if timeout_seconds else []) \
            + ([f"budget {fmt_seconds(budget_seconds)}"] if budget_seconds else [])
        print(f"Search: validation {s.metric} ({s.direction}), {', '.join(limits)}, "
              f"{nproc} process{'es' if nproc > 1 else ''}; trial logs in {sd.logs}", flush=True)
        old_best = _old_best(sd)
        reason = ""
        try:
            reason = _run_workers(sd, nproc)
        except KeyboardInterrupt:
            reason = "interrupted"
            print("\nInterrupted: run the same command again to continue the study.", file=sys.stderr, flush=True)
            raise
        finally:
            summary = _finish(sd, s, reason, time.time() - started, old_best)
    if reason.startswith("failed"):
        raise RunFailed(f"the search stopped: {reason}")
    return SearchResult(sd.path, summary)


def _start_session(sd: StudyDir, s: Settings, started: float, timeout_seconds: float | None,
                   budget_seconds: float | None) -> None:
    """This session's limits in the settings; trials a killed session left running are queued
    again (they resume from their checkpoints)."""
    study = open_study(sd, s)
    existing = len(study.get_trials(deepcopy=False))
    s.session = {"started": started, "seed_offset": 7919 * existing,
                 "timeout_end": started + timeout_seconds if timeout_seconds else None,
                 "budget_end": started + budget_seconds if budget_seconds else None}
    sd.write_settings(s)
    again = recover(study)
    if existing:
        done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
        print(f"Resuming the study in {sd.path}: {done} trials finished"
              + (f"; interrupted trials run again from their checkpoints: {', '.join(map(str, again))}" if again else ""),
              flush=True)


def _old_best(sd: StudyDir) -> str | None:
    if not sd.summary_file.exists():
        return None
    best = json.loads(sd.summary_file.read_text()).get("best")
    return best["folder"] if best else None


def _finish(sd: StudyDir, s: Settings, reason: str, seconds: float, old_best: str | None) -> dict:
    from .report import write_study_reports
    from .worker import tidy_weights

    study = open_study(sd, s)
    tidy_weights(study, sd, s)
    summary = summarize(study, sd, s, reason, seconds)
    write_study_reports(sd, summary)
    if old_best and (not summary["best"] or summary["best"]["folder"] != old_best):
        _plain_report(sd.path / old_best)  # no longer the best: drop the search section from its report
    print(format_summary(summary, sd), flush=True)
    if reason and reason not in ("done", "interrupted"):
        print(f"Stopped: {_REASONS.get(reason, reason)}", flush=True)
    return summary


_REASONS = {"timeout": "the --timeout was reached (no new trial starts after it)",
            "budget": "the time budget cannot afford another full trial"}


def _plain_report(folder: Path) -> None:
    from ..reporting.report import write_report
    from ..runs import RunDir

    run = RunDir(folder)
    if run.eval_file.exists():
        write_report(run)


def _run_workers(sd: StudyDir, nproc: int) -> str:
    from .worker import run_worker

    if nproc == 1:
        return run_worker(sd.path, 0)
    for f in sd.path.glob(".worker-*.error"):
        f.unlink()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Workers are plain processes (not fork): each gets a fresh torch with its own thread count.
    procs = [subprocess.Popen([sys.executable, "-m", "tuneline.tune.worker", str(sd.path), str(i)], env=env)
             for i in range(nproc)]
    try:
        codes = _wait_all(procs, sd)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    errors = [(sd.path / f".worker-{i}.error") for i in range(nproc)]
    for e in errors:
        if e.exists():
            msg = e.read_text(encoding="utf-8")
            e.unlink()
            raise UserError(msg)
    if any(c == 130 for c in codes):
        raise KeyboardInterrupt
    bad = [c for c in codes if c not in (0, 2)]
    if bad:
        return f"failed: worker exit codes {codes} (see {sd.logs})"
    from .worker import stop_reason

    return stop_reason(open_study(sd, sd.read_settings()), sd.read_settings()) or "done"


def _wait_all(procs, sd: StudyDir) -> list[int]:
    """Wait for every worker; when one stops on a user error, stop the others (their trials resume later)."""
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        if any(c == 2 for c in codes):
            _stop(procs)
            return [p.wait() for p in procs]
        time.sleep(0.5)


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
