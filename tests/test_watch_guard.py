"""The divergence guard: a planted NaN loss or gradient stops the run cleanly; a loss that climbs
far above its minimum stops it too; a noisy but healthy loss does not."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import tuneline
from tuneline.errors import RunFailed
from tuneline.training.guard import DivergenceGuard
from tuneline.recipe import DivergenceConfig
from tuneline.runs import RunDir
from tuneline.tasks.classify import ClassifyTask


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not numbers."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _plant(monkeypatch, at_call: int, how: str):
    original = ClassifyTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        out = original(self, model, batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] == at_call:
                return out * float("nan") if how == "loss" else _NanGrad.apply(out)
        return out

    monkeypatch.setattr(ClassifyTask, "loss", loss)


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_planted_nan_stops_the_run_and_keeps_the_good_checkpoints(tiny_recipe, tmp_path, monkeypatch, how):
    # 120 train rows / batch 8 = 15 steps per epoch; evaluation (and checkpoint) every 4 steps
    recipe = tiny_recipe("full", epochs=2, eval_every=4, log_every=1)
    _plant(monkeypatch, at_call=10, how=how)
    out = tmp_path / f"nan-{how}"
    with pytest.raises(RunFailed) as e:
        tuneline.train(recipe, output=out)
    msg = str(e.value)
    assert "diverged at step 10" in msg and ("loss is nan" if how == "loss" else "gradient norm is nan") in msg
    assert "checkpoints/last (step 8)" in msg and "checkpoints/best" in msg
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["diverged"]["step"] == 10
    # no model, no evaluation, nothing that looks like a success
    for name in ("model", "adapter", "tuneline.json", "eval.json", "report.html"):
        assert not (out / name).exists(), name
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag[0]["check"] == "divergence" and diag[0]["severity"] == "error" and diag[0]["step"] == 10
    # the kept checkpoints hold numbers only (the NaN step never reached the weights on disk)
    for ckpt in ("last", "best"):
        weights = load_file(str(out / "checkpoints" / ckpt / "trainable.safetensors"))
        assert weights and all(torch.isfinite(t).all() for t in weights.values())
    steps = [r["step"] for r in RunDir(out).read_metrics() if r["type"] == "train"]
    assert max(steps) == 9  # the diverged step was not logged as a training step


def _guard(tmp_path, **cfg):
    return DivergenceGuard(DivergenceConfig(**cfg), RunDir(tmp_path), lr=1e-3, max_grad_norm=None)


def test_loss_climbing_far_above_its_minimum_stops(tmp_path):
    guard, state = _guard(tmp_path, loss_ratio=3.0, min_steps=5), {"step": 0}
    losses = [2.0 - 0.1 * i for i in range(15)] + [0.6 * 1.5 ** i for i in range(1, 30)]
    with pytest.raises(RunFailed) as e:
        for step, loss in enumerate(losses, 1):
            guard.observe(loss, step, state)
    assert "rose to" in str(e.value) and "above the starting loss 2" in str(e.value)
    assert "lower train.lr (now 0.001" in str(e.value) and "max_grad_norm" in str(e.value)
    stopped = int(str(e.value).split("step ")[1].split(":")[0])
    assert 15 < stopped < 30
    assert json.loads((tmp_path / "run.json").read_text())["diverged"]["step"] == stopped


def test_a_loss_that_explodes_at_once_stops_at_min_steps(tmp_path):
    guard, state = _guard(tmp_path, loss_ratio=3.0, min_steps=10), {}
    losses = [1.1, 20.0, 60.0, 75.0, 80.0, 90.0, 100.0, 120.0, 150.0, 200.0, 250.0]
    with pytest.raises(RunFailed, match=r"diverged at step 10: the smoothed training loss is .*x the starting loss 1.1"):
        for step, loss in enumerate(losses, 1):
            guard.observe(loss, step, state)


def test_noisy_converging_loss_and_small_wiggles_near_zero_do_not_stop(tmp_path):
    guard, state = _guard(tmp_path), {}
    g = torch.Generator().manual_seed(0)
    # noisy decrease to ~0.01, then a jump to 0.08 (8x the minimum but far below the start)
    losses = [max(0.01, 1.1 * math.exp(-i / 20)) * float(1 + 0.5 * torch.rand(1, generator=g)) for i in range(200)]
    losses += [0.08] * 30
    for step, loss in enumerate(losses, 1):
        guard.observe(loss, step, state)
    assert state["guard"]["min_ema"] < 0.03


def test_disabled_guard_still_refuses_a_nan_loss(tmp_path):
    guard = _guard(tmp_path, enabled=False)
    guard.observe(1e9, 50, {})  # no rise check
    guard.check_grad_norm(float("inf"), 3, {})  # no gradient check
    with pytest.raises(RunFailed):
        guard.check_loss(float("nan"), 3, {})
