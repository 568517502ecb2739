"""`tuneline train --nproc 2`: two gloo processes follow the loss trajectory of one process with
the same global batch, and only rank 0 writes the run folder."""

import json
import subprocess
import sys

import pytest


def _train(recipe, out, *extra):
    r = subprocess.run([sys.executable, "-m", "tuneline", "train", str(recipe), "-o", str(out), *extra],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tiny_recipe, tmp_path):
    # no dropout: the only randomness left is the batch order, which every rank shares
    recipe = tiny_recipe("full", epochs=2, dropout=0.0, batch_size=9, log_every=1)
    one, two = tmp_path / "one", tmp_path / "two"
    _train(recipe, one)
    r = _train(recipe, two, "--nproc", "2")
    a, b = _metrics(one), _metrics(two)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-4, abs=1e-5), (x, y)
    evals = [(x, y) for x, y in zip(a, b) if x["type"] == "eval"]
    assert evals and all(x["accuracy"] == y["accuracy"] for x, y in evals)
    ma, mb = (json.loads((p / "run.json").read_text()) for p in (one, two))
    assert mb["nproc"] == 2 and mb["status"] == "completed"
    assert mb["trained_tokens"] == ma["trained_tokens"]  # every row trained exactly once per epoch
    # rank 0 alone wrote: the same files as a one-process run, nothing else, one report line
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert r.stdout.count("Run folder:") == 1
