"""The bad-input corpus: every broken data file, recipe and command line a user may plausibly
produce, each answered with exit code 2 and one short error that names the file / line / key and
the fix, no traceback, nothing left behind and no input file touched.

Each case builds its inputs in a fresh folder and returns the command line. After the run the
whole folder must be byte-identical to before (so: no run folder, no temp file, inputs intact).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import synthetic_rows
from corpus_helpers import run_cli, snapshot

# ---------------------------------------------------------------------------------------------
# building blocks


class B:
    """A case's workspace: good defaults to break one thing at a time."""

    def __init__(self, d: Path, env: dict):
        self.d, self.bert, self.llama, self.env = d, env["bert"], env["llama"], env
        self.out = d / "run"

    def write(self, name: str, content: str | bytes) -> Path:
        p = self.d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return p

    def jsonl(self, name: str, rows: list) -> Path:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def good(self, train=True, test=True) -> None:
        if train:
            self.jsonl("train.jsonl", synthetic_rows(60, 1))
        if test:
            self.jsonl("test.jsonl", synthetic_rows(30, 2))

    def chat_rows(self, n=40) -> list[dict]:
        return [{"messages": [{"role": "user", "content": f"question {i} about shipping"},
                              {"role": "assistant", "content": f"answer {i}: it ships in {i % 5 + 1} days"}]}
                for i in range(n)]

    def recipe(self, name="recipe.yaml", **over) -> Path:
        r = {"task": "classify", "model": str(self.bert), "method": "full",
             "data": {"train": "train.jsonl", "test": "test.jsonl"},
             "train": {"epochs": 1, "batch_size": 8, "max_length": 32}, "output": str(self.out)}
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(r.get(k), dict):
                r[k] = {**r[k], **v}
            elif v is _DROP:
                r.pop(k, None)
            else:
                r[k] = v
        return self.write(name, yaml.safe_dump(r, sort_keys=False))

    def train(self, *extra, **over) -> list:
        """Good data (unless already written) + recipe with `over` -> `tuneline train recipe`."""
        if not (self.d / "train.jsonl").exists():
            self.good()
        return ["train", self.recipe(**over), *extra]

    def train_with(self, name: str, content, *extra, **over) -> list:
        """Replace one data file (train.jsonl by default) with broken content."""
        self.good()
        if isinstance(content, list):
            self.jsonl(name, content)
        else:
            self.write(name, content)
        key = "test" if name.startswith("test") else "validation" if name.startswith("validation") else "train"
        data = {key: name, **over.pop("data", {})}
        return self.train(*extra, data=data, **over)

    def chat(self, rows, **over) -> list:
        self.good(train=False, test=False)
        self.jsonl("chat.jsonl", rows)
        over = {"model": str(self.llama), "data": {"train": "chat.jsonl", "test": None}, **over}
        return self.train(task="generate", **over)


_DROP = object()
ROWS = lambda n=60: synthetic_rows(n, 1)  # noqa: E731


def rows_with(line: int, row) -> list:
    """Good rows with row number `line` (1-based) replaced."""
    rows = ROWS()
    rows[line - 1] = row
    return rows


def lines_with(line: int, raw: str) -> str:
    """Good JSONL text with line `line` replaced by raw text."""
    lines = [json.dumps(r) for r in ROWS()]
    lines[line - 1] = raw
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], header="text,label") -> str:
    return header + "\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows)


def _model_copy(b: B, src: Path, name: str = "mymodel") -> Path:
    dst = b.d / name
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# the corpus


@dataclass
class Case:
    id: str
    build: Callable[[B], list]
    expect: tuple[str, ...]   # substrings the error paragraph must contain (file:line, key, the fix)
    needs_run: bool = False


CASES: list[Case] = []


def case(id: str, *expect: str, needs_run: bool = False):
    def register(fn):
        CASES.append(Case(id, fn, expect, needs_run))
        return fn
    return register


def simple(id: str, build: Callable[[B], list], *expect: str, needs_run: bool = False) -> None:
    CASES.append(Case(id, build, expect, needs_run))


# -- data files: syntax -------------------------------------------------------------------------
simple("jsonl-truncated-line", lambda b: b.train_with("train.jsonl", lines_with(3, '{"text": "cut off", "lab')),
       "train.jsonl:3", "not valid JSON")
simple("jsonl-array-line", lambda b: b.train_with("train.jsonl", lines_with(2, "[1, 2, 3]")),
       "train.jsonl:2", "JSON object")
simple("jsonl-string-line", lambda b: b.train_with("train.jsonl", lines_with(5, '"just a sentence"')),
       "train.jsonl:5", "JSON object")
simple("jsonl-number-line", lambda b: b.train_with("train.jsonl", lines_with(7, "42")), "train.jsonl:7")
simple("jsonl-whole-file-is-array", lambda b: b.train_with("train.jsonl", json.dumps(ROWS()) + "\n"),
       "train.jsonl:1", "one JSON object per line")
simple("jsonl-pretty-printed", lambda b: b.train_with("train.jsonl", json.dumps(ROWS()[0], indent=2) + "\n"),
       "train.jsonl:1", "not valid JSON")
simple("jsonl-trailing-comma", lambda b: b.train_with("train.jsonl", lines_with(4, '{"text": "a b", "label": "x",}')),
       "train.jsonl:4")
simple("jsonl-single-quotes", lambda b: b.train_with("train.jsonl", lines_with(6, "{'text': 'a', 'label': 'b'}")),
       "train.jsonl:6")
simple("jsonl-nul-byte", lambda b: b.train_with("train.jsonl", lines_with(8, '\x00{"text": "a", "label": "b"}')),
       "train.jsonl:8")
simple("jsonl-two-objects-one-line",
       lambda b: b.train_with("train.jsonl", lines_with(9, '{"text": "a", "label": "b"} {"text": "c", "label": "d"}')),
       "train.jsonl:9")
simple("empty-file", lambda b: b.train_with("train.jsonl", b""), "train.jsonl", "no rows")
simple("whitespace-only-file", lambda b: b.train_with("train.jsonl", "\n  \n\t\n"), "train.jsonl", "no rows")
simple("empty-test-file", lambda b: b.train_with("test.jsonl", b""), "test.jsonl", "no rows")
simple("bad-validation-line", lambda b: b.train_with("validation.jsonl", lines_with(2, "{oops")),
       "validation.jsonl:2")
simple("bad-test-line", lambda b: b.train_with("test.jsonl", lines_with(11, '{"text": ')), "test.jsonl:11")
simple("csv-empty", lambda b: b.train_with("train.csv", b""), "train.csv")
simple("csv-header-only", lambda b: b.train_with("train.csv", "text,label\n"), "train.csv", "no rows")
simple("csv-extra-field", lambda b: b.train_with(
    "train.csv", csv_text(ROWS()[:3]) + 'one,two,three\n' + csv_text(ROWS()[3:], header="")[1:]),
    "train.csv:5", "quote")
simple("csv-missing-field", lambda b: b.train_with(
    "train.csv", csv_text(ROWS()[:3]) + 'lonely\n' + csv_text(ROWS()[3:], header="")[1:]),
    "train.csv:5", "fewer fields")
simple("csv-unclosed-quote", lambda b: b.train_with("train.csv", 'text,label\n"open quote,positive\n' * 3),
       "train.csv")
simple("tsv-given-as-csv-one-column", lambda b: b.train_with(
    "train.csv", "text\tlabel\n" + "".join(f'{r["text"]}\t{r["label"]}\n' for r in ROWS())),
    "train.csv", "column")
simple("parquet-corrupt", lambda b: b.train_with("train.parquet", b"PAR1 this is not parquet at all"),
       "train.parquet", "Parquet")
simple("unknown-extension", lambda b: b.train_with("train.xlsx", b"PK\x03\x04 a spreadsheet"),
       "train.xlsx", ".jsonl")
simple("folder-not-datasets", lambda b: (b.write("rows/readme.txt", "hi"), b.train(data={"train": "rows"}))[1],
       "rows", "dataset_info.json")
simple("datasets-folder-corrupt", lambda b: (b.write("ds/dataset_info.json", "{not json"),
                                             b.write("ds/state.json", "{}"), b.train(data={"train": "ds"}))[2],
       "ds", "datasets")


# -- data files: encodings and junk -------------------------------------------------------------
simple("binary-junk", lambda b: b.train_with("train.jsonl", random.Random(0).randbytes(4096)),
       "train.jsonl:1")
simple("png-named-jsonl", lambda b: b.train_with("train.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
       "train.jsonl:1")
simple("gzip-named-jsonl", lambda b: b.train_with("train.jsonl", gzip.compress(lines_with(1, '{"text":"a","label":"b"}').encode())),
       "train.jsonl:1", "gzip")
simple("utf16-file", lambda b: b.train_with("train.jsonl", lines_with(1, json.dumps(ROWS()[0])).encode("utf-16")),
       "train.jsonl", "UTF-16")
simple("latin1-line", lambda b: b.train_with(
    "train.jsonl", lines_with(12, '{"text": "caf\u00e9 cr\u00e8me was great", "label": "positive"}').encode("latin-1")),
    "train.jsonl:12", "UTF-8")
simple("csv-latin1-line", lambda b: b.train_with(
    "train.csv", csv_text(ROWS()[:5]).encode() + '"na\u00efve review",neutral\n'.encode("latin-1")),
    "train.csv:7", "UTF-8")
simple("huge-truncated-line", lambda b: b.train_with(
    "train.jsonl", lines_with(2, '{"text": "' + "x" * (32 << 20))), "train.jsonl:2")
simple("huge-junk-line", lambda b: b.train_with("train.jsonl", lines_with(3, "=" * (8 << 20))), "train.jsonl:3")


# -- data files: columns and types (classify) ---------------------------------------------------
simple("missing-text-column", lambda b: b.train_with(
    "train.jsonl", [{"label": r["label"], "stars": i % 5} for i, r in enumerate(ROWS())]),
    "train.jsonl", "data.text_column")
simple("missing-label-column", lambda b: b.train_with(
    "train.jsonl", [{"text": r["text"], "id": f"row-{i}"} for i, r in enumerate(ROWS())]),
    "train.jsonl", "data.label_column")
simple("named-label-column-absent", lambda b: b.train(data={"label_column": "sentiment"}),
       "data.label_column", "sentiment")
simple("named-text-column-absent", lambda b: b.train(data={"text_column": "review_body"}),
       "data.text_column", "review_body")
simple("text-is-number", lambda b: b.train_with("train.jsonl", rows_with(4, {"text": 123, "label": "positive"})),
       "train.jsonl:4", "text")
simple("text-is-list", lambda b: b.train_with("train.jsonl", rows_with(4, {"text": ["a", "b"], "label": "positive"})),
       "train.jsonl:4", "text")
simple("text-is-null", lambda b: b.train_with("train.jsonl", rows_with(5, {"text": None, "label": "positive"})),
       "train.jsonl:5", "text")
simple("text-is-bool", lambda b: b.train_with("train.jsonl", rows_with(5, {"text": True, "label": "neutral"})),
       "train.jsonl:5", "text")
simple("text-empty", lambda b: b.train_with("train.jsonl", rows_with(6, {"text": "   ", "label": "positive"})),
       "train.jsonl:6", "empty")
simple("label-missing", lambda b: b.train_with("train.jsonl", rows_with(7, {"text": "fine item"})),
       "train.jsonl:7", "label")
simple("label-is-list", lambda b: b.train_with("train.jsonl", rows_with(8, {"text": "x y", "label": ["a", "b"]})),
       "train.jsonl:8", "label")
simple("label-is-object", lambda b: b.train_with("train.jsonl", rows_with(8, {"text": "x y", "label": {"a": 1}})),
       "train.jsonl:8", "label")
simple("label-empty", lambda b: b.train_with("train.jsonl", rows_with(9, {"text": "x y", "label": ""})),
       "train.jsonl:9", "label")
simple("one-class-only", lambda b: b.train_with(
    "train.jsonl", [{"text": r["text"], "label": "positive"} for r in ROWS()]), "train.jsonl", "one label")
simple("test-label-unseen", lambda b: b.train_with("test.jsonl", rows_with(3, {"text": "so so", "label": "mixed"})),
       "test.jsonl:3", "mixed")
simple("too-few-rows", lambda b: b.train_with("train.jsonl", ROWS(4), data={"test": None}),
       "train.jsonl", "never occur in train")
simple("text-equals-label-column", lambda b: b.train(data={"text_column": "text", "label_column": "text"}),
       "data.label_column")


# -- data files: generate -----------------------------------------------------------------------
def _chat_break(b: B, line: int, row) -> list:
    rows = b.chat_rows()
    rows[line - 1] = row
    return b.chat(rows)


simple("chat-messages-not-list", lambda b: _chat_break(b, 3, {"messages": "hello"}), "chat.jsonl:3", "messages")
simple("chat-unknown-role", lambda b: _chat_break(
    b, 4, {"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
    "chat.jsonl:4", "role")
simple("chat-no-assistant", lambda b: _chat_break(b, 5, {"messages": [{"role": "user", "content": "hi"}]}),
       "chat.jsonl:5", "assistant")
simple("chat-assistant-first", lambda b: _chat_break(
    b, 6, {"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]}),
    "chat.jsonl:6")
simple("chat-content-number", lambda b: _chat_break(
    b, 7, {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "five"}]}),
    "chat.jsonl:7")
simple("chat-prompt-without-completion", lambda b: b.chat(
    [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(30)] + [{"prompt": "lonely"}]),
    "chat.jsonl:31", "completion")
simple("chat-sharegpt-unknown-from", lambda b: b.chat(
    [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]} for i in range(30)]
    + [{"conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]}]),
    "chat.jsonl:31", "robot")
simple("chat-classify-rows-for-generate", lambda b: b.chat(ROWS()), "chat.jsonl", "data.format")
simple("chat-format-forced-wrong", lambda b: b.chat(b.chat_rows(), data={"train": "chat.jsonl", "test": None,
                                                                          "format": "alpaca"}),
       "chat.jsonl", "instruction")


# -- recipes: syntax and keys ---------------------------------------------------------------------
simple("recipe-missing", lambda b: ["train", b.d / "nope.yaml"], "nope.yaml", "not found")
simple("recipe-yaml-syntax", lambda b: (b.good(), ["train", b.write("recipe.yaml", "task: classify\nmodel: [x\ndata: {}\n")])[1],
       "recipe.yaml:", "YAML")
simple("recipe-tab-indent", lambda b: (b.good(), ["train", b.write("recipe.yaml", "task: classify\ndata:\n\ttrain: t.jsonl\n")])[1],
       "recipe.yaml:3")
simple("recipe-is-list", lambda b: ["train", b.write("recipe.yaml", "- task: classify\n")], "recipe.yaml", "mapping")
simple("recipe-empty", lambda b: ["train", b.write("recipe.yaml", "")], "recipe.yaml", "task", "model", "data")
simple("recipe-binary", lambda b: ["train", b.write("recipe.yaml", random.Random(1).randbytes(512))], "recipe.yaml")
simple("recipe-unknown-top-key", lambda b: b.train(optimiser="adam"), "optimiser", "allowed keys")
simple("recipe-unknown-train-key", lambda b: b.train(train={"learning_rate": 0.1}), "train.learning_rate", "lr")
simple("recipe-unknown-lora-key", lambda b: b.train(method="lora", lora={"rank": 4}), "lora.rank", "r,")
simple("recipe-section-not-mapping", lambda b: b.train(train=5), "train")
simple("recipe-missing-data", lambda b: b.train(data=_DROP), "data", "missing")
simple("recipe-missing-train-file-key", lambda b: b.train(data={"train": None}), "data.train")
simple("recipe-data-train-number", lambda b: b.train(data={"train": 123}), "data.train")

# -- recipes: types and impossible values -----------------------------------------------------------
simple("lr-not-number", lambda b: b.train(train={"lr": "fast"}), "train.lr")
simple("lr-negative", lambda b: b.train(train={"lr": -0.1}), "train.lr")
simple("epochs-list", lambda b: b.train(train={"epochs": [1, 2]}), "train.epochs")
simple("epochs-zero", lambda b: b.train(train={"epochs": 0}), "train.epochs")
simple("batch-size-zero", lambda b: b.train(train={"batch_size": 0}), "train.batch_size")
simple("batch-size-text", lambda b: b.train(train={"batch_size": "16x"}), "train.batch_size")
simple("max-steps-negative", lambda b: b.train(train={"max_steps": -5}), "train.max_steps")
simple("warmup-ratio-over-one", lambda b: b.train(train={"warmup_ratio": 1.5}), "train.warmup_ratio")
simple("max-length-tiny", lambda b: b.train(train={"max_length": 4}), "train.max_length")
simple("max-length-over-positions", lambda b: b.train(train={"max_length": 4096}), "train.max_length", "128")
simple("dropout-one", lambda b: b.train(train={"dropout": 1.0}), "train.dropout")
simple("validation-size-large", lambda b: b.train(data={"validation_size": 0.7}), "data.validation_size")
simple("max-rows-zero", lambda b: b.train(data={"max_rows": 0}), "data.max_rows")
simple("unknown-task", lambda b: b.train(task="summarize"), "task", "classify")
simple("unknown-method", lambda b: b.train(method="lokr"), "method", "lora")
simple("unknown-precision", lambda b: b.train(train={"precision": "fp8"}), "train.precision", "bf16")
simple("fp16-on-cpu", lambda b: b.train(train={"precision": "fp16"}), "train.precision", "GPU")
simple("scheduler-unknown", lambda b: b.train(train={"scheduler": "onecycle"}), "train.scheduler", "cosine")
simple("trust-remote-code-text", lambda b: b.train(trust_remote_code="yes please"), "trust_remote_code")
simple("early-stopping-unknown-metric", lambda b: b.train(train={"early_stopping": {"metric": "bleu"}}),
       "train.early_stopping.metric", "macro_f1")
simple("lora-targets-absent", lambda b: b.train(method="lora", lora={"target_modules": ["q_proj"]}),
       "lora.target_modules", "q_proj")
simple("freeze-nothing-to-train-generate", lambda b: b.chat(b.chat_rows(), method="freeze",
                                                             freeze={"train_layers": 0}), "freeze.train_layers")
simple("slices-column-absent", lambda b: b.train(eval={"slices": ["region"]}), "eval.slices", "region")
simple("counterfactual-file-missing", lambda b: b.train(eval={"counterfactuals": "pairs.csv"}),
       "eval.counterfactuals", "pairs.csv")
simple("forgetting-reference-missing", lambda b: b.train(eval={"forgetting": {"reference": "wiki.txt"}}),
       "eval.forgetting.reference", "wiki.txt")

# -- recipes: models and task/method/model pairs ---------------------------------------------------
simple("unknown-model-alias", lambda b: b.train(model="bert-tiny-xl"), "model", "minilm-l6")
simple("model-folder-without-config", lambda b: (b.write("emptymodel/README.md", "x"),
                                                 b.train(model=str(b.d / "emptymodel")))[1], "model", "config.json")
simple("model-gguf-missing", lambda b: b.train(model="weights/tiny.gguf"), "model", "tiny.gguf")
simple("model-config-not-json", lambda b: (b.write("badcfg/config.json", "{nope"),
                                           b.train(model=str(b.d / "badcfg")))[1], "model", "badcfg")


@case("model-weights-corrupt", "model", "mymodel", "cannot be read")
def _(b: B):
    m = _model_copy(b, b.bert)
    (m / "model.safetensors").write_bytes(b"\x00" * 64)
    return b.train(model=str(m))


@case("model-custom-code-without-trust", "model", "trust_remote_code")
def _(b: B):
    m = _model_copy(b, b.bert)
    cfg = json.loads((m / "config.json").read_text())
    cfg["model_type"] = "evilbert"  # unknown to Transformers: only the folder's own code could load it
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (m / "config.json").write_text(json.dumps(cfg))
    (m / "evil.py").write_text(f"open({str(b.d / 'PWNED')!r}, 'w').write('x')\n")
    return b.train(model=str(m))


simple("generate-with-encoder", lambda b: b.chat(b.chat_rows(), model=str(b.bert)), "model", "generate")
simple("prompt-tuning-freeze-conflict-layers", lambda b: b.train(method="freeze", freeze={"train_layers": -1}),
       "freeze.train_layers")

# -- the command line -------------------------------------------------------------------------------
simple("set-without-equals", lambda b: b.train("--set", "train.lr"), "--set", "KEY=VALUE")
simple("set-into-scalar", lambda b: b.train("--set", "task.kind=x"), "--set", "task")
simple("set-bad-value", lambda b: b.train("--set", "train.batch_size=-3"), "train.batch_size")
simple("output-is-a-file", lambda b: (b.write("taken.txt", "mine"), b.train(output=str(b.d / "taken.txt")))[1],
       "taken.txt", "output")
simple("output-exists-not-run", lambda b: (b.write("run/notes.txt", "keep me"), b.train())[1],
       "run", "--overwrite")
simple("resume-not-a-run", lambda b: (b.write("run/notes.txt", "keep me"), b.train("--resume"))[1],
       "run.json", "resume")


def _old_run(b: B) -> None:
    """A run folder from before: --overwrite with a bad input must leave it as it is."""
    b.write("run/run.json", '{"status": "completed"}')
    b.write("run/eval.json", '{"tuned": {"accuracy": 0.9}}')
    b.write("run/recipe.yaml", b.recipe("old-recipe.yaml").read_text())


simple("overwrite-with-bad-data-keeps-old-run", lambda b: (_old_run(b), b.train_with(
    "train.jsonl", lines_with(5, "{broken"), "--overwrite"))[1], "train.jsonl:5")
simple("overwrite-with-bad-value-keeps-old-run", lambda b: (_old_run(b), b.train("--overwrite", train={"lr": 0}))[1],
       "train.lr")
simple("overwrite-with-bad-model-pair-keeps-old-run", lambda b: (_old_run(b), b.train(
    "--overwrite", train={"max_length": 1024}))[1], "train.max_length")


@case("overwrite-with-corrupt-weights-keeps-old-run", "model", "mymodel", "cannot be read")
def _(b: B):
    _old_run(b)
    m = _model_copy(b, b.bert)
    (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:1000])  # cut short
    return b.train("--overwrite", model=str(m))


simple("resume-with-changed-recipe", lambda b: (_old_run(b), b.write("run/run.json", '{"status": "interrupted"}'),
                                                b.train("--resume", train={"lr": 0.5}))[2], "recipe differs", "train.lr")
simple("nproc-zero", lambda b: b.train("--nproc", "0"), "--nproc")
simple("unknown-option", lambda b: b.train("--epochs", "3"), "--epochs")
simple("data-check-missing-file", lambda b: ["data", "check", b.d / "none.jsonl"], "none.jsonl", "not found")
simple("data-check-bad-task", lambda b: (b.good(), ["data", "check", b.d / "train.jsonl", "--task", "regress"])[1],
       "--task", "classify")
simple("predict-no-run", lambda b: ["predict", b.d / "nothing", "--text", "hi"], "nothing", "run folder")
simple("predict-no-input", lambda b: ["predict", b.env["run"], ], "--text", needs_run=True)
simple("predict-input-missing", lambda b: ["predict", b.env["run"], "--input", b.d / "in.txt"], "in.txt",
       needs_run=True)
simple("predict-input-no-text-column", lambda b: ["predict", b.env["run"], "--input",
                                                  b.jsonl("in.jsonl", [{"body2": "x"}])],
       "in.jsonl", "text", needs_run=True)
simple("predict-input-binary", lambda b: ["predict", b.env["run"], "--input", b.write("in.txt", b"\xff\xfe\x00junk")],
       "in.txt", "UTF-8", needs_run=True)
simple("evaluate-bad-data-line", lambda b: ["evaluate", b.env["run"], "--data", b.write("more.jsonl", lines_with(2, "{"))],
       "more.jsonl:2", needs_run=True)
simple("evaluate-unseen-label", lambda b: ["evaluate", b.env["run"], "--data",
                                           b.jsonl("more.jsonl", rows_with(3, {"text": "meh", "label": "mixed"}))],
       "more.jsonl:3", "mixed", needs_run=True)
simple("evaluate-unfinished-run", lambda b: (b.write("half/run.json", '{"status": "running"}'),
                                             ["evaluate", b.d / "half"])[1], "half", "--resume")
simple("report-not-a-run", lambda b: ["report", b.d], "run.json")
simple("compare-one-run", lambda b: ["compare", b.d], "two or more")


@case("run-folder-escaping-model-dir", "tuneline.json", "model_dir", needs_run=True)
def _(b: B):
    # a run folder from elsewhere must not make us load files outside it
    run = b.d / "copied-run"
    shutil.copytree(b.env["run"], run)
    info = json.loads((run / "tuneline.json").read_text())
    info["model_dir"] = "../../../../../../etc"
    (run / "tuneline.json").write_text(json.dumps(info))
    return ["predict", run, "--text", "hello"]


# ---------------------------------------------------------------------------------------------
# the test


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert):
    """One tiny trained run for the predict / evaluate cases (a few seconds)."""
    import tuneline

    d = tmp_path_factory.mktemp("finished")
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(60, 1)))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(30, 2)))
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "classify", "model": str(tiny_bert), "data": {"train": "train.jsonl", "test": "test.jsonl"},
        "train": {"epochs": 1, "batch_size": 16, "max_length": 32}, "eval": {"counterfactuals": False}}))
    return tuneline.train(recipe, output=d / "run").path


@pytest.fixture(scope="module")
def env(tiny_bert, tiny_llama):
    return {"bert": tiny_bert, "llama": tiny_llama}


def test_corpus_is_large_enough():
    assert len(CASES) >= 60, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input(c: Case, tmp_path, env, request, capsys, monkeypatch):
    d = tmp_path / "case"
    d.mkdir()
    env = dict(env, run=request.getfixturevalue("finished_run") if c.needs_run else None)
    monkeypatch.chdir(d)  # a default `runs/<name>` would land here too, and be seen
    argv = c.build(B(d, env))
    before = snapshot(d)
    run_before = snapshot(env["run"]) if env["run"] else None

    code, out, err = run_cli(argv, capsys, monkeypatch)

    if os.environ.get("TUNELINE_SHOW_ERRORS"):  # review the wording: TUNELINE_SHOW_ERRORS=1 pytest -s ...
        sys.__stderr__.write(f"\n[{c.id}] {err.strip()}\n")
    assert "Traceback" not in out + err
    assert code == 2, f"exit code {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    message = err.strip()
    assert message, "no error message"
    assert len(message) < 1500 and len(message.splitlines()) <= 12, f"not one short paragraph:\n{message}"
    for want in c.expect:
        assert want in message, f"{want!r} not in the error:\n{message}"
    assert snapshot(d) == before, "inputs changed or something was left behind"
    if run_before is not None:
        assert snapshot(env["run"]) == run_before, "the finished run was touched"
    assert not (d / "PWNED").exists(), "code from a model folder ran"
