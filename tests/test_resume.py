"""Resume after a kill -9 ends where an uninterrupted run ends."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tuneline
from conftest import synthetic_rows, write_jsonl, write_recipe

TUNELINE = [sys.executable, "-m", "tuneline.cli"]


def _eval_steps(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]


# Kill points: before the first checkpoint (resume starts over), and two steps drawn at random
# (seeded, so a failure can be replayed) among those after it. 18 optimizer steps in all.
TOTAL_STEPS = 18
_rng = random.Random(20261125)
KILL_STEPS = [2, *sorted(_rng.sample(range(4, TOTAL_STEPS), 2))]


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory, tiny_bert):
    """One recipe (full tuning, dropout on: the RNG state must come back too) and its uninterrupted run."""
    d = tmp_path_factory.mktemp("resume")
    write_jsonl(d / "train.jsonl", synthetic_rows(80, 1))
    write_jsonl(d / "test.jsonl", synthetic_rows(20, 2))
    recipe = write_recipe(
        d / "recipe.yaml", task="classify", model=str(tiny_bert), method="full",
        data={"train": "train.jsonl", "test": "test.jsonl"},
        train={"epochs": 2, "lr": 2e-3, "batch_size": 8, "max_length": 32, "log_every": 1, "seed": 7,
               "eval_every": 3, "num_threads": 1},
        eval={"counterfactuals": False})
    straight = tuneline.train(recipe, output=d / "straight")
    assert json.loads((straight.path / "run.json").read_text())["steps"] == TOTAL_STEPS
    return recipe, straight.path


def _last_logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(l)["step"] for l in lines[:-1] if '"train"' in l]  # the last line may be half-written
    return max(steps, default=0)


@pytest.mark.parametrize("kill_step", KILL_STEPS)
def test_resume_after_kill9_matches_uninterrupted(resume_setup, tmp_path, kill_step, capsys):
    recipe, straight = resume_setup
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*TUNELINE, "train", str(recipe), "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and _last_logged_step(out) < kill_step:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _last_logged_step(out) >= kill_step, "the run ended or stalled before the kill point"
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "running"  # killed: not completed, not half-written
    assert not (out / "eval.json").exists()

    capsys.readouterr()
    tuneline.train(recipe, output=out, resume=True)
    said = capsys.readouterr().out
    assert ("Resuming from step" in said) if kill_step > 3 else ("starting from step 0" in said or "Resuming" in said)
    a = json.loads((straight / "eval.json").read_text())
    b = json.loads((out / "eval.json").read_text())
    assert a["tuned"]["accuracy"] == b["tuned"]["accuracy"]
    assert a["tuned"]["loss"] == pytest.approx(b["tuned"]["loss"], abs=1e-6)
    ea, eb = _eval_steps(straight), _eval_steps(out)
    assert [e["step"] for e in ea] == [e["step"] for e in eb]
    for x, y in zip(ea, eb):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_existing_run_needs_resume_or_overwrite(tiny_recipe, tmp_path):
    recipe = tiny_recipe("full", epochs=1)
    tuneline.train(recipe)
    with pytest.raises(tuneline.UserError, match="--resume"):
        tuneline.train(recipe)
    # a completed run resumed is left as it is
    again = tuneline.train(recipe, resume=True)
    assert again.eval["task"] == "classify"
    with pytest.raises(tuneline.UserError, match="recipe differs"):
        tuneline.train(recipe, resume=True, overrides=["train.lr=0.5"])


def test_divergence_marks_run_failed(tiny_recipe, tmp_path):
    recipe = tiny_recipe("full", epochs=2, lr=1e6, max_grad_norm=None)
    with pytest.raises(tuneline.RunFailed):
        tuneline.train(recipe)
    run = tmp_path / "run-full"
    m = json.loads((run / "run.json").read_text())
    assert m["status"] == "failed" and "diverged" in m["error"]
    assert not (run / "eval.json").exists() and not (run / "tuneline.json").exists()


def test_overwrite_with_bad_data_keeps_old_run(tiny_recipe, tmp_path):
    recipe = tiny_recipe("full", epochs=1)
    run = tuneline.train(recipe).path
    before = (run / "eval.json").read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "a"}\n{"text": \n')
    with pytest.raises(tuneline.UserError, match=r"bad\.jsonl:2"):
        tuneline.train(recipe, overwrite=True, overrides=[f"data.train={bad}"])
    assert (run / "eval.json").read_text() == before
