"""Hyperparameter search: the space, pruning and the budget inside a trial, a whole study with
its best recipe and report, resume after kill -9, parallel workers, the dry run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

import tuneline
from tuneline.errors import UserError
from tuneline.recipe import load_recipe
from tuneline.tune.budget import parse_duration
from tuneline.tune import tune
from tuneline.tune.space import base_dict, build_space, trial_recipe

TUNELINE = [sys.executable, "-m", "tuneline.cli"]
SPACE = {"train.lr": {"low": 3e-4, "high": 1e-2}, "train.batch_size": {"choices": [8, 16]}}


def search_recipe(tmp_path, tiny_bert, cls_data, search=None, **train):
    t = {"epochs": 6, "batch_size": 8, "max_length": 32, "log_every": 2, "seed": 7, **train}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "task": "classify", "model": str(tiny_bert), "method": "full",
        "data": {"train": str(cls_data["train"]), "test": str(cls_data["test"])}, "train": t,
        "search": {"space": SPACE, "startup_trials": 2, "trials": 3, **(search or {})},
        "output": str(tmp_path / "run")}, sort_keys=False))
    return path


def _space_error(tmp_path, space) -> str:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"task": "classify", "model": "minilm-l6", "data": {"train": "x.jsonl"},
                                 "search": {"space": space}}))
    with pytest.raises(UserError) as e:
        build_space(load_recipe(p)[0])
    return str(e.value)


def test_space_types_and_errors(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"task": "classify", "model": "minilm-l6", "data": {"train": "x.jsonl"},
                                 "search": {"space": {"train.lr": {"low": 1e-5, "high": 1e-3},
                                                      "train.batch_size": {"low": 8, "high": 32, "step": 8},
                                                      "train.warmup_ratio": {"low": 0, "high": 0.2},
                                                      "method": {"choices": ["full", "lora"]}}}}))
    recipe = load_recipe(p)[0]
    dims = {d.key: d for d in build_space(recipe)}
    assert (dims["train.lr"].kind, dims["train.lr"].log) == ("float", True)  # learning rates: log scale by default
    assert (dims["train.batch_size"].kind, dims["train.batch_size"].step) == ("int", 8)
    assert dims["train.warmup_ratio"].kind == "float" and not dims["train.warmup_ratio"].log
    assert dims["method"].choices == ("full", "lora")
    # a trial recipe is the base with the values set, without the search section; a searched
    # method brings its own default lr when the base only had the default
    t = trial_recipe(base_dict(recipe), {"method": "lora", "train.batch_size": 24})
    assert t.search is None and t.method == "lora" and t.train.lr == 5e-4 and t.train.batch_size == 24

    assert "'lrr' is not a recipe key" in _space_error(tmp_path, {"train.lrr": {"low": 1e-5, "high": 1e-3}})
    assert "train.lr" in _space_error(tmp_path, {"train.lrr": {"low": 1e-5, "high": 1e-3}})
    assert "is a section" in _space_error(tmp_path, {"train": {"choices": [1, 2]}})
    assert "give choices" in _space_error(tmp_path, {"train.scheduler": {"low": 1, "high": 2}})
    assert "whole number" in _space_error(tmp_path, {"train.batch_size": {"low": 8.5, "high": 32}})
    assert "'fp8' is not valid" in _space_error(tmp_path, {"train.precision": {"choices": ["fp32", "fp8"]}})
    assert "search.space.train.lr" in _space_error(tmp_path, {"train.lr": {"low": 0, "high": 1e-3, "log": False}})
    msg = _space_error(tmp_path, {"train.lr": {"low": 1e-3}})
    assert "search.space.train.lr" in msg and "low and high" in msg


def test_train_ignores_search_and_durations(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: minilm-l6\ndata: {train: x.jsonl}\n")
    assert load_recipe(p)[0].search is None  # search is optional for train
    assert parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400 and parse_duration("45") == 45
    with pytest.raises(UserError, match="--timeout"):
        parse_duration("soon")


def _one_trial(tmp_path, recipe_path, pruner, deadline=None):
    import optuna

    from tuneline.tune.search import make_settings
    from tuneline.tune.study import STUDY_NAME, StudyDir, storage
    from tuneline.tune.trial import run_trial

    s = make_settings(recipe_path, [], 1, 1, False)
    sd = StudyDir(tmp_path / "study")
    sd.write_settings(s)
    study = optuna.create_study(storage=storage(sd), study_name=STUDY_NAME, direction="maximize", pruner=pruner)
    trial = study.ask()
    return run_trial(trial, sd, s, build_space(s.recipe()), deadline=deadline), sd, trial


def test_pruned_trial_is_marked_pruned_not_failed(tmp_path, tiny_bert, cls_data):
    import optuna

    recipe = search_recipe(tmp_path, tiny_bert, cls_data, {"evals_per_trial": 4})
    # every value is below 2.0: the pruner stops the trial at its first check
    out, sd, trial = _one_trial(tmp_path, recipe, optuna.pruners.ThresholdPruner(lower=2.0))
    assert out.state == "pruned" and "at check" in out.message
    folder = sd.trial_dir(0)
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["status"] == "pruned" and manifest["error"] is None and "at check" in manifest["stopped"]
    assert not (folder / "checkpoints").exists() and not (folder / "eval.json").exists()
    evals = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert len(evals) == 1 and evals[0]["epoch"] < 6  # stopped at the first check, long before the end
    # the check is the share of training done, in quarters: floor(4 * step / total steps)
    stored = optuna.load_study(study_name="tuneline", storage=f"sqlite:///{sd.db}").trials[0]
    assert list(stored.intermediate_values.values()) == [pytest.approx(evals[0]["macro_f1"])]
    assert f"check {list(stored.intermediate_values)[0]}/4" in out.message


def test_budget_deadline_stops_a_running_trial(tmp_path, tiny_bert, cls_data):
    import optuna

    recipe = search_recipe(tmp_path, tiny_bert, cls_data)
    out, sd, _ = _one_trial(tmp_path, recipe, optuna.pruners.NopPruner(), deadline=time.time())
    assert out.state == "stopped"
    assert json.loads((sd.trial_dir(0) / "run.json").read_text())["status"] == "stopped"


def test_study_best_recipe_report_and_resume(tmp_path, tiny_bert, cls_data, capsys):
    recipe = search_recipe(tmp_path, tiny_bert, cls_data)
    study_dir = tmp_path / "study"
    result = tune(recipe, trials=3, output=study_dir)
    s = result.summary
    assert sum(s["counts"].values()) == 3 and s["counts"].get("complete", 0) >= 2
    best = result.best
    complete = [r for r in s["trials"] if r["status"] == "complete"]
    assert best["value"] == max(r["value"] for r in complete)
    # the objective is the validation record at the kept (best) checkpoint, not a test figure
    folder = study_dir / best["folder"]
    manifest = json.loads((folder / "run.json").read_text())
    rec = next(json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()
               if '"eval"' in l and json.loads(l)["step"] == manifest["best_step"])
    assert best["value"] == pytest.approx(rec["macro_f1"])
    # the best recipe is a plain recipe with the best values
    plain, _ = load_recipe(study_dir / "best-recipe.yaml")
    assert plain.search is None
    assert plain.train.lr == pytest.approx(best["params"]["train.lr"])
    assert plain.train.batch_size == best["params"]["train.batch_size"]
    assert "search" not in yaml.safe_load((study_dir / "best-recipe.yaml").read_text())
    # reports: the study's, and the best run's own report carries the same section
    page = (study_dir / "report.html").read_text()
    assert "Hyperparameter search" in page and "Parameter importance" in page and "data:image/png" in page
    assert "Hyperparameter search" in (folder / "report.html").read_text()
    # keep_models: best -> only the best complete trial keeps its weights
    for r in complete:
        has_model = (study_dir / r["folder"] / "model").exists()
        assert has_model == (r["number"] == best["number"])
    assert tuneline.load_run(folder).predict(["great product"])[0]["label"] in ("positive", "negative", "neutral")

    # the same command with a higher target continues the study
    capsys.readouterr()
    again = tune(recipe, trials=4, output=study_dir)
    assert "Resuming the study" in capsys.readouterr().out
    assert sum(again.summary["counts"].values()) == 4
    assert [r["number"] for r in again.summary["trials"]] == [0, 1, 2, 3]
    # a different recipe is refused instead of mixing two searches in one study
    with pytest.raises(UserError, match="different recipe or search"):
        tune(recipe, trials=5, output=study_dir, overrides=["train.max_length=48"])


def test_resume_after_kill9_continues_the_cut_trial(tmp_path, tiny_bert, cls_data):
    recipe = search_recipe(tmp_path, tiny_bert, cls_data, {"pruner": "none"}, epochs=4, log_every=1)
    study_dir = tmp_path / "study"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [*TUNELINE, "tune", str(recipe), "--trials", "1", "-o", str(study_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = study_dir / "trials" / "trial-000" / "checkpoints" / "last" / "state.json"
    deadline = time.time() + 180
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["step"] >= 17:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("trial 0 never wrote a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "interrupted trials run again from their checkpoints: 0" in done.stdout
    s = json.loads((study_dir / "summary.json").read_text())
    by_number = {r["number"]: r for r in s["trials"]}
    assert by_number[0]["status"] == "interrupted"
    retry = next(r for r in s["trials"] if r["resume_of"] == 0)
    assert retry["status"] == "complete" and retry["params"] == by_number[0]["params"]
    assert (study_dir / retry["folder"] / "run.json").exists() and not (study_dir / "trials" / "trial-000").exists()
    assert "Resuming from step" in (study_dir / "logs" / f"trial-{retry['number']:03d}.log").read_text()
    assert [r["status"] for r in s["trials"]] == ["interrupted", "complete"]  # --trials 1: only the retry ran


def test_nproc_workers_share_the_study(tmp_path, tiny_bert, cls_data):
    from tuneline.hardware import physical_cores

    recipe = search_recipe(tmp_path, tiny_bert, cls_data, epochs=3)
    study_dir = tmp_path / "study"
    r = subprocess.run([*TUNELINE, "tune", str(recipe), "--trials", "3", "--nproc", "2", "-o", str(study_dir)],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    s = json.loads((study_dir / "summary.json").read_text())
    assert sum(s["counts"].values()) == 3  # the count is shared: no overshoot
    params = [tuple(sorted(t["params"].items())) for t in s["trials"]]
    assert len(set(params)) == 3  # workers draw different values
    for t in s["trials"]:
        trial_recipe_file = study_dir / t["folder"] / "recipe.yaml"
        assert yaml.safe_load(trial_recipe_file.read_text())["train"]["num_threads"] == max(1, physical_cores() // 2)
    assert "Best recipe:" in r.stdout


def test_cli_dry_run_and_errors(tmp_path, tiny_bert, cls_data):
    recipe = search_recipe(tmp_path, tiny_bert, cls_data)
    r = subprocess.run([*TUNELINE, "tune", str(recipe), "--dry-run", "--budget-minutes", "5", "-o",
                        str(tmp_path / "study")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "One full trial of the base recipe: about" in r.stdout and "full trials fit" in r.stdout
    assert not (tmp_path / "study").exists()  # a dry run writes nothing
    plain = tmp_path / "plain.yaml"
    plain.write_text(f"task: classify\nmodel: {tiny_bert}\ndata: {{train: {cls_data['train']}}}\n")
    r = subprocess.run([*TUNELINE, "tune", str(plain)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no `search:` section" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*TUNELINE, "tune", str(recipe), "--set", "search.metric=bleu"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "search.metric" in r.stderr and "accuracy" in r.stderr
