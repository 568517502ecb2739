"""`tuneline train --dry-run`: the plan with measured speed and estimates; nothing written."""

import subprocess
import sys

import tuneline


def test_dry_run_plans_and_writes_nothing(tiny_recipe, tmp_path):
    recipe = tiny_recipe("lora")
    r = subprocess.run([sys.executable, "-m", "tuneline", "train", str(recipe), "--dry-run"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Plan (dry run" in out and "trained tokens/s" in out and "peak memory" in out
    assert "a dry run writes no audit.json" in out and "details in the run's audit.json" not in out
    assert not (tmp_path / "run-lora").exists()


def test_dry_run_numbers_match_the_real_run(tiny_recipe, tmp_path):
    recipe = tiny_recipe("full", epochs=2)
    plan = tuneline.train(recipe, dry_run=True)
    assert not (tmp_path / "run-full").exists()
    assert plan["rows"]["train"] + plan["rows"]["validation"] == 150 and plan["rows"]["test"] == 30
    assert plan["trainable"] == plan["total"] > 0 and plan["probe"]["tokens_per_s"] > 0
    assert plan["estimated_train_seconds"] > 0 and plan["estimated_peak_bytes"] > 0
    result = tuneline.train(recipe)
    manifest = __import__("json").loads((result.path / "run.json").read_text())
    assert manifest["steps"] == plan["steps"]
    assert manifest["trained_tokens"] == plan["train_tokens_per_epoch"] * 2
    assert manifest["parameters"]["trainable"] == plan["trainable"]
    # an existing run folder does not stop a dry run, and is left as it was
    before = sorted(p.name for p in result.path.iterdir())
    tuneline.train(recipe, dry_run=True)
    assert sorted(p.name for p in result.path.iterdir()) == before
