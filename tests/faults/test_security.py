"""Security: nothing unpickled from user files, no model code run unless the recipe says so,
run-folder paths cannot point outside it, user text cannot script the report.
(The HTTP service's API key is the service's own suite: serving is not part of this branch.)"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

import tuneline
from conftest import synthetic_rows, write_jsonl
from corpus_helpers import run_cli, snapshot

SRC = Path(tuneline.__file__).parent
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else None
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
            yield node, owner, name, {k.arg: k.value for k in node.keywords}


# The one place that runs code on purpose: a `python` grader's own source, which check_specs refuses
# unless the grader says `trust_code: true` (tests/test_graders.py), as OpenAI's python grader runs
# user code.
RUNS_USER_CODE = {("rewards/code.py", "exec")}


def test_source_never_unpickles_or_trusts_remote_code():
    """A scan of every module: the rules hold for code added later too."""
    problems = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        where = lambda n: f"{path.relative_to(SRC)}:{n.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where(node)} imports {a.name}" for a in node.names if a.name in PICKLE_MODULES]
            elif isinstance(node, ast.ImportFrom) and node.module in PICKLE_MODULES:
                problems.append(f"{where(node)} imports from {node.module}")
        for node, owner, name, kw in _calls(tree):
            if owner == "torch" and name == "load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where(node)} torch.load without weights_only=True")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                problems.append(f"{where(node)} yaml.{name} (use yaml.safe_load)")
            for key in ("trust_remote_code", "allow_pickle"):
                v = kw.get(key)
                if isinstance(v, ast.Constant) and v.value is True:
                    problems.append(f"{where(node)} {key}=True")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec"):
                if (str(path.relative_to(SRC)), name) not in RUNS_USER_CODE:
                    problems.append(f"{where(node)} {name}()")
    assert problems == []


def test_trust_remote_code_is_off_by_default():
    from tuneline.recipe import recipe_from_dict

    r = recipe_from_dict({"task": "classify", "model": "minilm-l6", "data": {"train": "x.jsonl"}})
    assert r.trust_remote_code is False


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _poison(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}))


def test_pickle_weights_in_a_model_folder_are_not_executed(tmp_path, tiny_bert, capsys, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(tiny_bert, model)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    _poison(model / "pytorch_model.bin", marker)
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(60, 1))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"task": "classify", "model": str(model), "data": {"train": "train.jsonl"},
                                      "train": {"epochs": 1, "max_length": 32}}))
    before = snapshot(tmp_path)
    code, _, err = run_cli(["train", recipe, "-o", tmp_path / "run"], capsys, monkeypatch)
    assert not marker.exists(), "a pickle from the model folder ran"
    assert code == 2 and "Traceback" not in err, err
    assert "model:" in err and "weights" in err
    assert snapshot(tmp_path) == before  # no run folder left behind


def test_poisoned_checkpoint_is_refused_on_resume(tmp_path, tiny_bert, capsys, monkeypatch):
    from tuneline.training.loop import Callback

    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(80, 1))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(20, 2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "classify", "model": str(tiny_bert), "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "train": {"epochs": 1, "batch_size": 8, "max_length": 32, "eval_every": 2, "num_threads": 1}}))

    class StopAt4(Callback):
        def on_evaluate(self, trainer, record):
            if record["step"] == 4:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tuneline.train(recipe, output=out, callbacks=[StopAt4()])
    ckpt = out / "checkpoints" / "last"
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    marker = tmp_path / "PWNED"
    _poison(ckpt / "optimizer.pt", marker)

    code, _, err = run_cli(["train", recipe, "-o", out, "--resume"], capsys, monkeypatch)
    assert not marker.exists(), "a pickle in the checkpoint ran"
    assert code == 2 and "Traceback" not in err, err
    assert "optimizer.pt" in err


@pytest.mark.parametrize("relative", ["../outside", "/etc", "model/../../outside", "link"])
def test_run_folder_paths_stay_inside(tmp_path, relative):
    from tuneline.runs import inside

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (run / "link").symlink_to(tmp_path / "outside")  # a link inside that leads out counts as out
    assert inside(run, "model", "tuneline.json: model_dir") == (run / "model").resolve()
    with pytest.raises(tuneline.UserError, match="outside the run folder"):
        inside(run, relative, "tuneline.json: model_dir")


def test_user_text_cannot_script_the_report(tmp_path, tiny_bert):
    """Rows are user input and the report shows some of them (confident errors): escaped."""
    rows = synthetic_rows(60, 1)
    attack = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    test = [{"text": f"{r['text']} {attack}", "label": r["label"]} for r in synthetic_rows(20, 2)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", test)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "classify", "model": str(tiny_bert), "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "train": {"epochs": 1, "batch_size": 16, "max_length": 32, "num_threads": 1}}))
    run = tuneline.train(recipe, output=tmp_path / "run").path
    page = (run / "report.html").read_text()
    assert "&lt;script&gt;alert(1)" in page  # the text is shown ...
    assert "<script>alert(1)" not in page and "<img src=x" not in page  # ... and never live
