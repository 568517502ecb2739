"""Faults during training: Ctrl-C, a full disk, an unwritable output folder, out of memory.
(kill -9 and --resume at several points: tests/test_resume.py.)"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import tuneline
from conftest import synthetic_rows, write_jsonl, write_recipe
from corpus_helpers import run_cli, snapshot

TUNELINE = [sys.executable, "-m", "tuneline"]


@pytest.fixture
def recipe(tmp_path, tiny_bert):
    """A small full-tuning run: 9 steps per epoch, evaluation only at epoch ends."""
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(80, 1))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(20, 2))

    def make(**train):
        t = {"epochs": 2, "lr": 2e-3, "batch_size": 8, "max_length": 32, "log_every": 1, "seed": 7,
             "num_threads": 1, **train}
        return write_recipe(tmp_path / "recipe.yaml", task="classify", model=str(tiny_bert), method="full",
                            data={"train": "train.jsonl", "test": "test.jsonl"}, train=t,
                            eval={"counterfactuals": False})
    return make


def _logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()[:-1]  # the last may be half-written
    except FileNotFoundError:
        return 0
    return max((json.loads(l)["step"] for l in lines if '"train"' in l), default=0)


def _leftovers(run: Path) -> list[str]:
    """Temp files and folders of interrupted writes (atomic writes use dot-prefixed temps)."""
    return [str(p.relative_to(run)) for p in run.rglob(".*") if p.name != ".last.old"]


# -- Ctrl-C ------------------------------------------------------------------------------------------

def test_ctrl_c_writes_checkpoint_and_says_how_to_resume(recipe, tmp_path, capsys):
    r = recipe(epochs=3, save_every=1000)  # no periodic checkpoint: only Ctrl-C writes one
    out = tmp_path / "run"
    proc = subprocess.Popen([*TUNELINE, "train", str(r), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and _logged_step(out) < 4:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    state = json.loads((out / "checkpoints" / "last" / "state.json").read_text())
    assert f"Interrupted at step {state['step']}; checkpoint saved in {out / 'checkpoints' / 'last'}" in stderr
    assert f"Continue with: tuneline train {r} -o {out} --resume" in stderr
    assert state["step"] >= 4
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert _leftovers(out) == []

    capsys.readouterr()
    done = tuneline.train(r, output=out, resume=True)
    assert f"Resuming from step {state['step']} of 27" in capsys.readouterr().out
    assert json.loads((done.path / "run.json").read_text())["status"] == "completed"


# -- a full disk ---------------------------------------------------------------------------------------

@contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers the code path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_small_disk_is_refused_before_anything_is_written(recipe, tmp_path, capsys, monkeypatch):
    r = recipe()
    with tmpfs(tmp_path / "small", "8m") as disk:
        code, _, err = run_cli(["train", r, "-o", disk / "run"], capsys, monkeypatch)
        assert code == 2, err
        assert "MiB free" in err and "-o DIR" in err and "Traceback" not in err
        assert list(disk.iterdir()) == []


def test_disk_filling_up_during_training_fails_cleanly(recipe, tmp_path, monkeypatch):
    """A real ENOSPC: a tmpfs with room for the first checkpoint but not for the second. The disk
    check passes first (space taken by something else during the run is what it cannot foresee)."""
    from tuneline.training import preflight

    r = recipe(eval_every=2)
    monkeypatch.setattr(preflight, "check_disk_space", lambda *a, **k: None)
    with tmpfs(tmp_path / "small", "22m") as disk:
        out = disk / "run"
        with pytest.raises(tuneline.RunFailed, match="disk is full") as info:
            tuneline.train(r, output=out)
        assert "--resume" in str(info.value)
        assert _leftovers(out) == []
        manifest = json.loads((out / "run.json").read_text())  # still valid JSON
        assert manifest["status"] in ("failed", "running")  # "running" when even run.json could not be written
        state = json.loads((out / "checkpoints" / "last" / "state.json").read_text())
        assert state["step"] >= 2


def test_injected_enospc_keeps_last_checkpoint_and_resumes(recipe, tmp_path, monkeypatch, capsys):
    """The same without root: the optimizer write of the second checkpoint fails half-way."""
    r = recipe(eval_every=3)
    out = tmp_path / "run"
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # checkpoint 1 = optimizer + scheduler; the 2nd checkpoint's optimizer fails
            Path(f).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(tuneline.RunFailed, match="disk is full") as info:
        tuneline.train(r, output=out)
    assert "free some space, then continue with --resume" in str(info.value)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert json.loads((out / "checkpoints" / "last" / "state.json").read_text())["step"] == 3
    assert _leftovers(out) == []

    monkeypatch.setattr(torch, "save", real_save)  # space freed
    capsys.readouterr()
    tuneline.train(r, output=out, resume=True)
    assert "Resuming from step 3" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


# -- an unwritable output folder ---------------------------------------------------------------------

@contextmanager
def read_only(folder: Path):
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    # root ignores permission bits: a read-only bind mount is what refuses root
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    ok = ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode == 0
    if not ok:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
        pytest.skip("root without mount rights: cannot make a folder read-only")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_unwritable_output_fails_early(recipe, tmp_path, capsys, monkeypatch):
    r = recipe()
    inputs = snapshot(tmp_path)
    with read_only(tmp_path / "locked") as locked:
        code, out, err = run_cli(["train", r, "-o", locked / "run"], capsys, monkeypatch)
        assert code == 2, err
        assert "cannot write in" in err and str(locked) in err and "-o DIR" in err
        assert "Data audit" not in out  # refused before reading or training anything
        assert list(locked.iterdir()) == []
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("locked")} == inputs


# -- out of memory ------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError()], ids=["cuda-oom", "cpu-memoryerror"])
def test_out_of_memory_is_answered_with_settings(recipe, tmp_path, capsys, monkeypatch, error):
    from tuneline.tasks.classify import ClassifyTask

    r = recipe(batch_size=8, grad_accum=2)
    real_loss = ClassifyTask.loss
    calls = {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        return real_loss(self, model, batch)

    monkeypatch.setattr(ClassifyTask, "loss", loss)
    code, out, err = run_cli(["train", r, "-o", tmp_path / "run"], capsys, monkeypatch)
    assert code == 1 and "Traceback" not in err
    for setting in ("memory.micro_batch_tokens=", "--set train.batch_size=4 --set train.grad_accum=4", "train.max_length=16",
                    "memory.gradient_checkpointing=true", "method=lora", "--dry-run"):
        assert setting in err, err
    manifest = json.loads((tmp_path / "run" / "run.json").read_text())
    assert manifest["status"] == "failed" and "out of memory" in manifest["error"]


def test_gradient_checkpointing_same_gradients(tiny_bert):
    """The setting the out-of-memory answer recommends: turned on, and changes no gradient."""
    from tuneline.training.methods import apply_method
    from tuneline.recipe import recipe_from_dict
    from tuneline.tasks.classify import ClassifyTask

    grads = []
    for on in (False, True):
        rec = recipe_from_dict({"task": "classify", "model": str(tiny_bert), "data": {"train": "x"},
                                "memory": {"gradient_checkpointing": on}})
        torch.manual_seed(0)
        task = ClassifyTask()
        model = apply_method(task.load_model(str(tiny_bert), rec, None, ["a", "b"]), rec, task)
        flag = "is_activation_checkpointing" if hasattr(model, "is_activation_checkpointing") else "is_gradient_checkpointing"
        assert getattr(model, flag) == on
        model.train()  # dropout on: checkpointing must replay the same masks
        torch.manual_seed(1)
        ids = torch.randint(1000, 2000, (4, 16))
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1])).loss
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)
