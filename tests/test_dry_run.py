"""`tuneline train --dry-run`: the plan with measured speed and estimates; nothing written."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

import tuneline
from tuneline.data.batching import epoch_batches, split_by_tokens
from tuneline.training.estimate import epoch_layout, evaluations, typical_piece
from tuneline.training.loop import Plan


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
    manifest = json.loads((result.path / "run.json").read_text())
    assert manifest["steps"] == plan["steps"]
    metrics = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert plan["evaluations"] == sum(m["type"] == "eval" and m.get("split") == "validation" for m in metrics)
    # the padded tokens are the loop's own layout (the second epoch draws other batches: close, not equal)
    assert abs(manifest["computed_tokens"] - 2 * plan["padded_tokens_per_epoch"]) <= 0.15 * manifest["computed_tokens"]
    assert manifest["trained_tokens"] == plan["train_tokens_per_epoch"] * 2
    assert manifest["parameters"]["trainable"] == plan["trainable"]
    # an existing run folder does not stop a dry run, and is left as it was
    before = sorted(p.name for p in result.path.iterdir())
    tuneline.train(recipe, dry_run=True)
    assert sorted(p.name for p in result.path.iterdir()) == before


def test_evaluations_counted_once_each():
    assert evaluations(Plan(34, 34, 68, 0), 20) == 5  # steps 20, 34 (epoch end), 40, 60, 68
    assert evaluations(Plan(34, 34, 68, 0), 17) == 4  # 17, 34, 51, 68: an epoch end on the beat counts once
    assert evaluations(Plan(34, 34, 30, 0), None) == 1  # max_steps before the epoch's end: the last step only


def test_probe_times_a_typical_piece_of_the_loops_own_layout():
    lengths = np.array([10] * 90 + [200] * 10)
    tc = SimpleNamespace(batch_size=8, batch_tokens=None, seed=7, group_by_length=True)
    pieces, scale = epoch_layout(lengths, tc, 1024)
    assert scale == 1
    assert pieces == [p for b in epoch_batches(lengths, 8, 7000, True) for p in split_by_tokens(b, lengths, 1024)]
    piece = typical_piece(pieces, lengths)
    assert len(piece) == 8 and lengths[piece].max() == 10  # not the long rows the old probe timed
