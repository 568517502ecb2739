"""A worker: asks the shared study for trials and runs them until the study has enough, the
time is up or the budget cannot afford another. `--nproc N` starts N of these processes
(`python -m tuneline.tune.worker STUDY_DIR WORKER`); with one process it runs in the CLI's own."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from ..errors import UserError
from .space import build_space
from .study import Settings, StudyDir, counted, open_study
from .trial import Outcome, remove_weights, run_trial

MAX_FAILURES_IN_A_ROW = 3


def full_trial_seconds(study) -> float | None:
    """Median wall time of the trials that ran to the end: what one more full trial costs."""
    from optuna.trial import TrialState

    done = [t.user_attrs["seconds"] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "seconds" in t.user_attrs]
    return statistics.median(done) if done else None


def stop_reason(study, s: Settings) -> str | None:
    now = time.time()
    if sum(counted(t) for t in study.get_trials(deepcopy=False)) >= s.trials:
        return "done"
    if s.session.get("timeout_end") and now >= s.session["timeout_end"]:
        return "timeout"
    budget_end = s.session.get("budget_end")
    if budget_end:
        need = full_trial_seconds(study) or 0.0
        if now + need > budget_end:
            return "budget"
    return None


def describe_params(params: dict) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def _best_line(study) -> str:
    try:
        b = study.best_trial
    except ValueError:
        return "no complete trial yet"
    return f"best {b.value:.4f} (trial {b.number})"


def report_line(o: Outcome, s: Settings, study) -> str:
    what = {"complete": f"{s.metric} {o.value:.4f}" if o.value is not None else "",
            "pruned": o.message.split(":")[0], "stopped": "stopped: time budget spent",
            "failed": f"failed: {o.message}"}.get(o.state, o.state)
    return f"[trial {o.number}] {what}  ({o.seconds:.0f} s)  -> {_best_line(study)}"


def tidy_weights(study, sd: StudyDir, s: Settings) -> None:
    from optuna.trial import TrialState

    if s.search["keep_models"] != "best":
        return
    try:
        best = study.best_trial.number
    except ValueError:
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != best and "folder" in t.user_attrs:
            remove_weights(sd.path / t.user_attrs["folder"],
                           f"not the best trial of the study (trial {best}); retrain with this folder's recipe.yaml")


def run_worker(study_dir: str | Path, worker: int = 0) -> str:
    """Run trials until a stop reason; returns it. UserError and KeyboardInterrupt propagate."""
    from optuna.trial import TrialState

    sd = StudyDir(study_dir)
    s = sd.read_settings()
    dims = build_space(s.recipe())
    study = open_study(sd, s, worker)
    failures = 0
    while True:
        with sd.ask_lock():
            reason = stop_reason(study, s)
            if reason:
                return reason
            trial = study.ask()
        print(f"[trial {trial.number}] started: {describe_params(_params_preview(trial, dims))}", flush=True)
        try:
            o = run_trial(trial, sd, s, dims, deadline=s.session.get("budget_end"))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            raise
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        if o.state == "complete":
            study.tell(trial, o.value)
            failures = 0
        elif o.state in ("pruned", "stopped"):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
        with sd.ask_lock():
            tidy_weights(study, sd, s)
        print(report_line(o, s, study), flush=True)
        if failures >= MAX_FAILURES_IN_A_ROW:
            return f"failed {failures} trials in a row (see {sd.logs})"


def _params_preview(trial, dims) -> dict:
    # The values are drawn by run_trial; drawing them here first fixes them for it (Optuna returns
    # the same value for the same name within a trial).
    return {d.key: d.sample(trial) for d in dims}


def main(argv: list[str] | None = None) -> int:
    from ..cli.app import quiet_libraries

    argv = sys.argv[1:] if argv is None else argv
    quiet_libraries()
    study_dir, worker = argv[0], int(argv[1])
    try:
        reason = run_worker(study_dir, worker)
    except UserError as e:
        # The parent reads this file and reports it once, with exit code 2.
        (Path(study_dir) / f".worker-{worker}.error").write_text(str(e), encoding="utf-8")
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"[worker {worker}] finished: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
