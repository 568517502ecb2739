"""The command line as a user meets it: exit codes, no tracebacks, --json output."""

import json
import os
import subprocess
import sys

import pytest
import yaml

TUNELINE = [sys.executable, "-m", "tuneline.cli"]


def run(*args, cwd=None):
    return subprocess.run([*TUNELINE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_bad_recipe_key_exit2_no_traceback(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: minilm-l6\nmethod: lora\nlora: {rank: 4}\ndata: {train: x.jsonl}\n")
    r = run("train", p)
    assert r.returncode == 2
    assert "lora.rank" in r.stderr and "Traceback" not in r.stderr


def test_bad_value_exit2(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: minilm-l6\ndata: {train: x.jsonl}\n")
    r = run("train", p, "--set", "train.precision=fp8")
    assert r.returncode == 2 and "train.precision" in r.stderr and "'bf16'" in r.stderr


def test_missing_data_file_exit2(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: minilm-l6\ndata: {train: nowhere.jsonl}\n")
    r = run("train", p, "-o", tmp_path / "run")
    assert r.returncode == 2 and "data.train" in r.stderr and "nowhere.jsonl" in r.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_malformed_row_exit2_names_line(tmp_path, tiny_bert):
    (tmp_path / "t.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"\n')
    p = tmp_path / "r.yaml"
    p.write_text(f"task: classify\nmodel: {tiny_bert}\ndata: {{train: t.jsonl}}\n")
    r = run("train", p, "-o", tmp_path / "run")
    assert r.returncode == 2 and "t.jsonl:2" in r.stderr and "Traceback" not in r.stderr


def test_missing_label_names_line(tmp_path, tiny_bert):
    rows = [{"text": f"t {i}", "label": "a" if i % 2 else "b"} for i in range(20)] + [{"text": "x"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = tmp_path / "r.yaml"
    p.write_text(f"task: classify\nmodel: {tiny_bert}\ndata: {{train: t.jsonl}}\n")
    r = run("train", p, "-o", tmp_path / "run")
    assert r.returncode == 2 and "t.jsonl:21" in r.stderr and "label" in r.stderr


def test_unknown_model_exit2(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("task: classify\nmodel: no-such-model\ndata: {train: x.jsonl}\n")
    r = run("train", p)
    assert r.returncode == 2 and "minilm-l6" in r.stderr


def test_train_predict_evaluate_json(tiny_recipe, tmp_path):
    recipe = tiny_recipe("full", epochs=2)
    r = run("train", recipe)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run-full"
    assert "Test metrics" in r.stdout and str(out) in r.stdout
    assert ", ETA 0m" in r.stdout  # progress lines without a terminal still say how long is left
    assert "Verdict: the tuned model is" in r.stdout and "the baseline (majority class) on accuracy" in r.stdout
    # the run's files can be shared as they are: the umask's modes, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    for f in ("report.html", "eval.json", "run.json", "recipe.yaml", "model/config.json"):
        assert (out / f).stat().st_mode & 0o777 == 0o666 & ~umask, f
    assert (out / "model").stat().st_mode & 0o777 == 0o777 & ~umask
    assert yaml.safe_load((out / "recipe.yaml").read_text())["output"] == str(out)  # where it really is
    ev = run("evaluate", out, "--json")
    assert ev.returncode == 0, ev.stderr
    got = json.loads(ev.stdout)
    saved = json.loads((out / "eval.json").read_text())
    assert got["task"] == "classify" and set(got) >= {"tuned", "baseline"}
    assert got["tuned"]["accuracy"] == pytest.approx(saved["tuned"]["accuracy"])
    pr = run("predict", out, "--text", "great product", "--text", "awful", "--json")
    assert pr.returncode == 0, pr.stderr
    lines = [json.loads(l) for l in pr.stdout.splitlines()]
    assert [l["text"] for l in lines] == ["great product", "awful"]
    assert all(l["label"] in saved["labels"] and 0 <= l["score"] <= 1 for l in lines)
    (tmp_path / "in.txt").write_text("one\ntwo\n\nthree\n")
    pr2 = run("predict", out, "--input", tmp_path / "in.txt")
    assert pr2.returncode == 0 and len(pr2.stdout.splitlines()) == 3
    bad = run("predict", tmp_path / "nope", "--text", "x")
    assert bad.returncode == 2 and "not found" in bad.stderr
    none = run("predict", out)
    assert none.returncode == 2 and "--text" in none.stderr


def test_models_list():
    r = run("models", "list", "--json")
    assert r.returncode == 0
    aliases = {m["alias"] for m in json.loads(r.stdout)}
    assert {"minilm-l6", "smollm2-135m-instruct"} <= aliases


def test_help_reads_like_a_cli_no_python_types():
    """Every command's --help: flags without a type, value options with a word (TEXT, PATH, N...),
    arguments as RECIPE / RUNS... in the usage line; no <bool>, <list[str]>, {recipe} from typer."""
    import re

    import typer
    from typer.testing import CliRunner

    from tuneline.cli import app

    def paths(cmd, path=()):
        yield list(path)
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from paths(sub, (*path, name))

    every = list(paths(typer.main.get_command(app)))
    assert ["train"] in every and ["models", "info"] in every and ["data", "check"] in every
    leak = re.compile(r"<(bool|int|float|str|path|file|dir|list|tuple)\b[^>]*>|list\[|\{[a-z_]+\}")
    for path in every:
        r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (path, r.output)
        assert not leak.search(r.output), (path, leak.search(r.output).group(0), r.output)
        for line in r.output.splitlines():  # a flag's row: no value word after its names
            m = re.match(r"^[│\s*]*--(help|json|dry-run|overwrite|force)\s+(-\w\s+)?([A-Z][A-Z=]+)\b", line)
            assert not m, (path, line)
    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "RECIPE" in out and "KEY=VALUE" in out and "PATH" in out
