"""The study folder: settings (study.json), the Optuna study in SQLite, the locks that let
several processes share it, and recovery of trials an interruption left behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import UserError
from ..recipe import Recipe, recipe_from_dict
from ..runs import atomic_write_json

STUDY_NAME = "tuneline"


@dataclass
class Settings:
    """What every worker needs to know; saved as study.json."""

    recipe_file: str
    base_dir: str            # the recipe's folder: data paths resolve against it
    base: dict               # the base recipe without its search section
    search: dict             # the search section
    metric: str
    direction: str
    trials: int              # the study's target number of finished trials
    nproc: int = 1
    threads: int | None = None   # CPU threads per trial when several run at once
    force: bool = False
    session: dict = field(default_factory=dict)  # started, timeout_end, budget_end, seed_offset

    def recipe(self) -> Recipe:
        return recipe_from_dict({**self.base, "search": self.search}, source=self.recipe_file)

    def identity(self) -> dict:
        """What must not change between sessions of one study (the trial target may)."""
        search = {k: v for k, v in self.search.items() if k != "trials"}
        return {"base": _without(self.base, "output"), "search": search, "metric": self.metric,
                "direction": self.direction}


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


class StudyDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    settings_file = property(lambda self: self.path / "study.json")
    db = property(lambda self: self.path / "optuna.db")
    trials = property(lambda self: self.path / "trials")
    logs = property(lambda self: self.path / "logs")
    summary_file = property(lambda self: self.path / "summary.json")
    best_recipe = property(lambda self: self.path / "best-recipe.yaml")
    report = property(lambda self: self.path / "report.html")

    def trial_dir(self, number: int) -> Path:
        return self.trials / f"trial-{number:03d}"

    def trial_log(self, number: int) -> Path:
        return self.logs / f"trial-{number:03d}.log"

    def exists(self) -> bool:
        return self.settings_file.exists()

    def read_settings(self) -> Settings:
        return Settings(**json.loads(self.settings_file.read_text()))

    def write_settings(self, s: Settings) -> None:
        atomic_write_json(self.settings_file, asdict(s))

    @contextlib.contextmanager
    def session_lock(self):
        """One `tuneline tune` per study at a time; the OS drops the lock when the process dies."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".session.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path}: another `tuneline tune` is running on this study; "
                                "wait for it, or give another study folder with -o") from None
            yield

    @contextlib.contextmanager
    def ask_lock(self):
        """Workers decide 'one more trial?' and ask for it under this lock, so the count never overshoots."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".ask.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage(sd: StudyDir):
    import optuna

    # SQLite waits for a lock instead of failing when several workers write at once.
    return optuna.storages.RDBStorage(f"sqlite:///{sd.db.resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 120}})


def make_pruner(search: dict):
    import optuna

    kind, checks = search["pruner"], search["evals_per_trial"]
    if kind == "none" or checks < 2:
        return optuna.pruners.NopPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=checks, reduction_factor=3)
    # No pruning at check 0 (an evaluation before the first k-th of training: too noisy to judge).
    return optuna.pruners.MedianPruner(n_startup_trials=search["startup_trials"], n_warmup_steps=1)


def open_study(sd: StudyDir, s: Settings, worker: int = 0):
    import optuna

    quiet_optuna()
    seed = s.search.get("seed")
    seed = s.base["train"]["seed"] if seed is None else seed
    # Different seeds per worker and per session: the same seed would repeat the same random
    # start-up trials in every worker, and again after a resume.
    seed = seed + 1000 * worker + s.session.get("seed_offset", 0)
    sampler = optuna.samplers.TPESampler(n_startup_trials=s.search["startup_trials"], seed=seed,
                                         multivariate=True)
    return optuna.create_study(storage=storage(sd), study_name=STUDY_NAME, direction=s.direction,
                               sampler=sampler, pruner=make_pruner(s.search), load_if_exists=True)


def counted(trial) -> bool:
    """Trials that count towards --trials: everything but interrupted ones (they are retried) and waiting ones."""
    from optuna.trial import TrialState

    if trial.state == TrialState.WAITING:
        return False
    return not (trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted"))


def recover(study) -> list[int]:
    """Before a session starts (no worker alive): trials still marked running were cut off by a
    kill; mark them failed-interrupted. Every interrupted trial not yet retried is queued again
    with the same parameters; the worker continues its run folder from the last checkpoint.
    Returns the numbers of the trials queued again."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("resume_of") for t in trials}
    again = []
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"resume_of": t.number})
            again.append(t.number)
    return again
