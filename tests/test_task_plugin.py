"""A task is one file plus its registration: a third task (text -> a number, e.g. a star rating)
registered here trains, evaluates, reports and predicts through the same pipeline, run folder
and commands as the built-in ones, without any change outside this file."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import tuneline
from tuneline.data.batching import pad_batch, sorted_batches
from tuneline.errors import UserError
from tuneline.tasks import TASKS, Task, get_task, register_task

from conftest import write_jsonl, write_recipe

GOOD = ["great", "excellent", "love", "perfect"]
BAD = ["terrible", "awful", "broken", "useless"]
FILLER = ["the", "product", "it", "was", "and", "this", "item", "really"]


@dataclass
class Scored:
    input_ids: list[list[int]]
    targets: list[float]
    where: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


@dataclass
class Prepared:
    labels: None
    train: Scored
    validation: Scored
    test: Scored


def _metrics(pred: torch.Tensor, y: torch.Tensor) -> dict:
    mse = float(((pred - y) ** 2).mean())
    var = float(((y - y.mean()) ** 2).mean())
    return {"loss": mse, "mae": float((pred - y).abs().mean()), "r2": 1 - mse / var if var else 0.0}


class ScoreTask(Task):
    """Text -> one number: a regression head (num_labels=1) trained with mean squared error."""

    name = "score"
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    pipeline_tag = "text-classification"
    new_head = True
    data_shape = "labelled_text"
    metric_names = ("loss", "mae", "r2")
    headline_metrics = ("r2", "mae", "loss")
    key_metric = "r2"

    def encode_rows(self, rows, recipe, tokenizer, labels=None) -> Scored:
        col = recipe.data.label_column or "score"
        texts = [r["text"] for r in rows.records]
        ids = tokenizer(texts, truncation=True, max_length=recipe.train.max_length)["input_ids"]
        return Scored(ids, [float(r[col]) for r in rows.records], [rows.where(i) for i in range(len(rows))], texts)

    def prepare(self, splits, recipe, tokenizer) -> Prepared:
        return Prepared(None, *(self.encode_rows(getattr(splits, s), recipe, tokenizer)
                                for s in ("train", "validation", "test")))

    def load_model(self, path, recipe, tokenizer, labels=None):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, problem_type="regression")

    def collate(self, data: Scored, idx, pad_id) -> dict:
        ids, mask = pad_batch([data.input_ids[i] for i in idx], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([data.targets[i] for i in idx])}

    def loss_items(self, batch) -> int:
        return len(batch["labels"])

    def loss(self, model, batch):
        return model(**batch).loss

    @torch.no_grad()
    def _predict_ids(self, model, input_ids, pad_id, batch_size, device) -> torch.Tensor:
        was = model.training
        model.eval()
        out = torch.empty(len(input_ids))
        for idx in sorted_batches([len(x) for x in input_ids], batch_size):
            ids, mask = pad_batch([input_ids[i] for i in idx], pad_id)
            out[idx] = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float().cpu()
        model.train(was)
        return out

    def evaluate(self, model, data, labels, pad_id, batch_size, device) -> dict:
        pred = self._predict_ids(model, data.input_ids, pad_id, batch_size, device)
        return _metrics(pred, torch.tensor(data.targets))

    def run_info(self, recipe, prepared) -> dict:
        return {"train_mean": float(np.mean(prepared.train.targets))}

    def evaluate_test(self, model, tokenizer, data, recipe, info, device) -> dict:
        y = torch.tensor(data.targets)
        pred = self._predict_ids(model, data.input_ids, tokenizer.pad_token_id, 16, device)
        baseline = {**_metrics(torch.full_like(y, info["train_mean"]), y), "kind": "training_mean"}
        rows = [{"where": w, "text": t, "target": float(a), "pred": float(p)}
                for w, t, a, p in zip(data.where, data.texts, y, pred)]
        return {"tuned": _metrics(pred, y), "baseline": baseline, "predictions": rows}

    def predict(self, model, tokenizer, texts, max_length, batch_size=8, options=None, system_prompt=None):
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        device = next(model.parameters()).device
        return [{"score": float(s)} for s in self._predict_ids(model, ids, tokenizer.pad_token_id, batch_size, device)]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        stars = 1 + i % 5
        words = rng.sample(FILLER, 4) + [rng.choice(GOOD if stars >= 3 else BAD) for _ in range(abs(stars - 3) + 1)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "score": (stars - 3) / 2})  # -1 .. 1: AdamW's steps are small
    return rows


@pytest.fixture
def score_task():
    register_task(ScoreTask)
    yield ScoreTask
    TASKS.pop("score")


def test_a_registered_task_trains_evaluates_reports_and_predicts(score_task, tmp_path, tiny_bert):
    write_jsonl(tmp_path / "train.jsonl", _rows(200, 1))
    write_jsonl(tmp_path / "test.jsonl", _rows(40, 2))
    recipe = write_recipe(tmp_path / "r.yaml", task="score", model=str(tiny_bert), method="full",
                          data={"train": "train.jsonl", "test": "test.jsonl", "label_column": "score"},
                          train={"epochs": 8, "lr": 3e-3, "batch_size": 16, "max_length": 32, "seed": 3,
                                 "early_stopping": {"metric": "r2", "patience": 10},
                                 "precision": "fp32"},  # evaluate() below runs in fp32 too
                          output=str(tmp_path / "run"))
    result = tuneline.train(recipe)
    run = result.path
    ev = json.loads((run / "eval.json").read_text())
    assert ev["task"] == "score" and ev["baseline"]["kind"] == "training_mean"
    assert ev["tuned"]["r2"] > ev["baseline"]["r2"] + 0.1, ev  # learned something the mean does not know
    assert set(ev["difference"]) == {"r2", "mae", "loss"}
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "completed" and manifest["task"] == "score"
    report = (run / "report.html").read_text()
    assert "r2" in report and "training mean" in report
    assert (run / "MODEL_CARD.md").exists() and (run / "model" / "config.json").exists()

    loaded = tuneline.load_run(run)
    high, low = loaded.predict(["great excellent love perfect", "terrible awful broken useless"])
    assert high["score"] > low["score"]
    assert tuneline.evaluate(run)["tuned"]["r2"] == pytest.approx(ev["tuned"]["r2"], abs=1e-4)


def test_an_unregistered_task_is_a_clear_recipe_error(tmp_path, tiny_bert):
    recipe = write_recipe(tmp_path / "r.yaml", task="score", model=str(tiny_bert), data={"train": "t.jsonl"})
    with pytest.raises(UserError, match=r"task.*'score'.*classify, generate"):
        tuneline.load_recipe(recipe)
    with pytest.raises(UserError, match="allowed: classify, generate"):
        get_task("score")
