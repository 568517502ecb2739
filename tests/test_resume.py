"""Resume after a kill -9 ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tuneline

TUNELINE = [sys.executable, "-m", "tuneline.cli"]


def _eval_steps(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]


def test_resume_after_kill9_matches_uninterrupted(tiny_recipe, tmp_path):
    # full tuning with dropout active, so the RNG state must be restored too
    recipe = tiny_recipe("full", epochs=4, eval_every=5, log_every=1)
    straight = tuneline.train(recipe, output=tmp_path / "straight")

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*TUNELINE, "train", str(recipe), "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # wait until a checkpoint exists and training has gone past it, then kill -9
    while time.time() < deadline:
        state = out / "checkpoints" / "last" / "state.json"
        if state.exists() and json.loads(state.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the run never wrote a checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "running"  # killed: not completed, not half-written
    assert not (out / "eval.json").exists()

    done = subprocess.run([*TUNELINE, "train", str(recipe), "-o", str(out), "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Resuming from step" in done.stdout
    a = json.loads((straight.path / "eval.json").read_text())
    b = json.loads((out / "eval.json").read_text())
    assert a["tuned"]["accuracy"] == b["tuned"]["accuracy"]
    assert a["tuned"]["loss"] == pytest.approx(b["tuned"]["loss"], abs=1e-6)
    ea, eb = _eval_steps(straight.path), _eval_steps(out)
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
