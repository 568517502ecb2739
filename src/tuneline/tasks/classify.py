"""Task `classify`: text -> one label, with a sequence-classification head on any encoder or decoder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from ..data.batching import pad_batch, padding_groups
from ..data.columns import LABEL_COLUMNS, TEXT_COLUMNS, guess_columns, pick_column, text_and_label
from ..data.io import Rows
from ..data.streaming import StreamedRows
from ..data.token_cache import TOKENS, ChunkEncoder, TokenColumn, WhereColumn, row_lengths
from ..errors import UserError
from ..evaluation.metrics import classification_metrics
from ..recipe import eval_batch_size
from . import register_task
from .base import Task


@dataclass
class Encoded:
    """One split, tokenized: token ids per row, label ids, and where each row came from."""

    input_ids: list[list[int]]
    labels: list[int]
    where: list[str]
    texts: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # the raw rows, for evaluation slices

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> "list[int] | np.ndarray":
        return row_lengths(self.input_ids)  # a numpy array when the rows live in the token cache

    def trained_tokens(self) -> int:
        return int(np.sum(self.lengths))


@register_task
class ClassifyTask(Task):
    name = "classify"
    model_class = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    pipeline_tag = "text-classification"
    new_head = True
    data_shape = "labelled_text"
    default_metric = "macro_f1"
    metric_names = ("loss", "accuracy", "macro_f1")
    headline_metrics = ("accuracy", "macro_f1", "loss")
    key_metric = "accuracy"
    serves = ("classify",)
    export_formats = ("hf", "onnx")
    report_sections = ("classes",)

    # -- data -------------------------------------------------------------
    def columns(self, rows: Rows, recipe) -> tuple[str, str]:
        guess_text, guess_label = guess_columns(rows)
        d = recipe.data
        text = pick_column(rows, d.text_column, TEXT_COLUMNS, "data.text_column", guess_text)
        label = pick_column(rows, d.label_column, LABEL_COLUMNS, "data.label_column", guess_label)
        if text == label and not (d.text_column and d.label_column):
            # one usable column was found for both roles: the other one is missing
            missing = "label" if d.text_column or text.lower() in TEXT_COLUMNS else "text"
            raise UserError(f"{rows.path}: cannot tell which column is the {missing} (columns: "
                            f"{', '.join(rows.columns)}); set data.{missing}_column in the recipe")
        if text == label:
            raise UserError(f"{rows.path}: text and label column are both {text!r}; set data.text_column / data.label_column")
        return text, label

    def extract(self, rows: Rows, recipe, need_label: bool = True) -> tuple[list[str], list[str | None]]:
        text_col, label_col = self.columns(rows, recipe) if need_label else (
            pick_column(rows, recipe.data.text_column, TEXT_COLUMNS, "data.text_column"), None)
        texts, labels = [], []
        for i, rec in enumerate(rows.records):
            t, lab = text_and_label(rec, rows.where(i), text_col, label_col)
            texts.append(t)
            if label_col is not None:
                labels.append(lab)
        return texts, labels

    def strata(self, rows: Rows, recipe) -> list[str]:
        return self.extract(rows, recipe)[1]

    def build_labels(self, train_labels: list[str]) -> list[str]:
        labels = sorted(set(train_labels))
        if len(labels) < 2:
            raise UserError(f"data.train: only one label ({labels[0]!r}) in the training data; a classifier needs 2 or more")
        return labels

    def prepare(self, splits, recipe, tokenizer) -> "Prepared":
        if isinstance(splits.train, StreamedRows):
            labels, train = self.encode_streamed(splits.train)
        else:
            _, train_labels = self.extract(splits.train, recipe)
            labels = self.build_labels(train_labels)
            train = self.encode_rows(splits.train, recipe, tokenizer, labels)
        return Prepared(labels, train, *(self.encode_rows(getattr(splits, s), recipe, tokenizer, labels)
                                         for s in ("validation", "test")))

    # -- data larger than memory (data/streaming.py) ------------------------
    def stream_encoder(self, head: Rows, recipe, tokenizer) -> "ChunkEncoder":
        """Encodes chunks of (line, record) into the token cache; columns chosen on the first rows."""
        text_col, label_col = self.columns(head, recipe)
        max_length, path = recipe.train.max_length, head.path

        def encode(chunk: list[tuple[int, dict]]) -> dict:
            pairs = [text_and_label(rec, f"{path}:{line}", text_col, label_col) for line, rec in chunk]
            ids = tokenizer([t for t, _ in pairs], truncation=True, max_length=max_length,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            return {"input_ids": ids, "label": [lab for _, lab in pairs]}

        return ChunkEncoder(pa.schema([("input_ids", TOKENS), ("label", pa.string())]), encode)

    def encode_streamed(self, rows: StreamedRows) -> tuple[list[str], Encoded]:
        """The training split read from the token cache: ids by index, labels as a numpy array."""
        codes, values = rows.label_codes()
        present = np.unique(codes)
        labels = self.build_labels([values[c] for c in present])  # sorted, as values are
        remap = np.full(len(values), -1, dtype=np.int64)
        remap[present] = np.arange(len(present))
        ids = TokenColumn(rows.file.tokens("input_ids"), rows.positions)
        return labels, Encoded(ids, remap[codes], WhereColumn(rows.path, rows.lines))

    def encode_rows(self, rows: Rows, recipe, tokenizer, labels: list[str]) -> Encoded:
        texts, raw = self.extract(rows, recipe)
        index = {l: i for i, l in enumerate(labels)}
        ids = []
        for i, lab in enumerate(raw):
            if lab not in index:
                raise UserError(
                    f"{rows.where(i)}: label {lab!r} does not occur in the training data (labels: {', '.join(labels)})"
                )
            ids.append(index[lab])
        enc = tokenizer(texts, truncation=True, max_length=recipe.train.max_length)
        return Encoded(enc["input_ids"], ids, [rows.where(i) for i in range(len(rows))], texts, list(rows.records))

    # -- model ------------------------------------------------------------
    def load_model(self, path: str, recipe, tokenizer, labels: list[str], dtype=torch.float32):
        from transformers import AutoModelForSequenceClassification

        from ..models import load_config

        config = load_config(
            path, recipe.trust_remote_code, recipe.train.dropout,
            num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        )
        if config.pad_token_id is None:
            # decoders find the last real token through pad_token_id
            config.pad_token_id = tokenizer.pad_token_id
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, trust_remote_code=recipe.trust_remote_code, dtype=dtype,
            )
        except ValueError as e:
            raise UserError(f"model: {path!r} has no sequence-classification head in Transformers: {e}") from None
        return model

    def load_trained(self, folder: str, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=trust_remote_code)

    # -- batches ----------------------------------------------------------
    def collate(self, data: Encoded, idx: list[int], pad_id: int) -> dict:
        ids, mask = pad_batch([data.input_ids[i] for i in idx], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([data.labels[i] for i in idx])}

    def loss_items(self, batch: dict) -> int:
        """How many terms the mean loss of `batch` averages: its rows."""
        return len(batch["labels"])

    def loss(self, model, batch: dict) -> torch.Tensor:
        return model(**batch).loss

    # -- evaluation -------------------------------------------------------
    @torch.no_grad()
    def logits(self, model, input_ids: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
        was_training = model.training
        model.eval()
        out = torch.empty(len(input_ids), model.config.num_labels)
        for idx in padding_groups([len(x) for x in input_ids], batch_size):
            ids, mask = pad_batch([input_ids[i] for i in idx], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            out[idx] = logits.float().cpu()
        model.train(was_training)
        return out

    def evaluate(self, model, data: Encoded, labels: list[str], pad_id: int, batch_size: int, device) -> dict:
        logits = self.logits(model, data.input_ids, pad_id, batch_size, device)
        y = torch.tensor(data.labels)
        pred = logits.argmax(-1)
        m = classification_metrics(y.tolist(), pred.tolist(), labels)
        m["loss"] = float(F.cross_entropy(logits, y))
        return m

    def majority(self, train_labels) -> int:
        labels = train_labels.tolist() if isinstance(train_labels, np.ndarray) else train_labels
        return int(Counter(labels).most_common(1)[0][0])

    def baseline(self, majority: int, data: Encoded, labels: list[str]) -> dict:
        """The majority class of the training data, scored on the same rows."""
        m = classification_metrics(data.labels, [majority] * len(data), labels)
        m["kind"] = "majority_class"
        m["predicts"] = labels[majority]
        return m

    def evaluate_test(self, model, tokenizer, data: Encoded, recipe, info: dict, device) -> dict:
        bs = eval_batch_size(recipe)
        labels = info["labels"]
        logits = self.logits(model, data.input_ids, tokenizer.pad_token_id, bs, device)
        y = torch.tensor(data.labels)
        tuned = classification_metrics(data.labels, logits.argmax(-1).tolist(), labels)
        tuned["loss"] = float(F.cross_entropy(logits, y))
        baseline = self.baseline(labels.index(info["majority_label"]), data, labels)
        probs = logits.softmax(-1)
        predictions = [{
            "where": data.where[i], "text": data.texts[i] if data.texts else None,
            "label": labels[data.labels[i]], "pred": labels[int(probs[i].argmax())],
            "probs": [round(float(p), 6) for p in probs[i]],
        } for i in range(len(data))]
        return {"tuned": tuned, "baseline": baseline, "predictions": predictions}

    @torch.no_grad()
    def predict(self, model, tokenizer, texts: list[str], max_length: int, batch_size: int = 32,
                options=None, system_prompt=None) -> list[dict]:
        enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        device = next(model.parameters()).device
        probs = self.logits(model, enc, tokenizer.pad_token_id, batch_size, device).softmax(-1)
        id2label = model.config.id2label
        out = []
        for p in probs:
            k = int(p.argmax())
            out.append({
                "label": id2label[k],
                "score": float(p[k]),
                "scores": {id2label[i]: float(p[i]) for i in range(len(p))},
            })
        return out

    # -- evaluation extras (eval.json) ----------------------------------------
    def evaluation_extras(self, result: dict, preds: list[dict], data: Encoded, model, tokenizer, recipe,
                          info: dict, device, base_dir) -> None:
        """Calibration, the most confident errors, the zero-shot baseline, slices by accuracy and
        counterfactual flips (on by default: one extra forward pass over the rows that name a group)."""
        from ..evaluation.calibration import calibration, most_confident_errors
        from ..evaluation.slices import slice_metrics

        labels = info["labels"]
        index = {l: i for i, l in enumerate(labels)}
        y = [index[p["label"]] for p in preds]
        result["tuned"]["calibration"] = calibration([p["probs"] for p in preds], y)
        result["most_confident_errors"] = most_confident_errors(preds, labels)
        self._zero_shot(result, preds, y, info, recipe, device)

        def score(idx):
            return classification_metrics([y[i] for i in idx], [index[preds[i]["pred"]] for i in idx], labels)

        result["slices"] = [slice_metrics(c, data.records, score, "accuracy") for c in recipe.eval.slices]
        spec = recipe.eval.counterfactuals
        if spec is None or spec:
            result["counterfactuals"] = self._counterfactuals(preds, model, tokenizer, recipe, info,
                                                              True if spec is None else spec, base_dir)

    def _zero_shot(self, result: dict, preds: list[dict], y: list[int], info: dict, recipe, device) -> None:
        """A second baseline where the base model is a chat model: asked for a label, untuned."""
        from ..evaluation.metrics import difference
        from ..evaluation.zero_shot import zero_shot_baseline
        from .generate import GenerateTask

        zs = zero_shot_baseline([p["text"] for p in preds], y, info["labels"], info, recipe, device,
                                GenerateTask().generate, max_rows=recipe.eval.max_samples or 200)
        if zs is not None:
            result["zero_shot"] = zs
            result["difference_zero_shot"] = difference(result["tuned"], zs, self.headline_metrics)

    def _counterfactuals(self, preds: list[dict], model, tokenizer, recipe, info: dict, spec, base_dir) -> dict:
        from ..evaluation.counterfactual import Swapper, load_pairs, summarise

        pairs, name = load_pairs(spec, base_dir)
        sw = Swapper(pairs)
        hits = [(i, s) for i, p in enumerate(preds) if (s := sw.swap(p["text"])) is not None]
        after = self.predict(model, tokenizer, [s for _, s in hits], info.get("max_length", 512),
                             eval_batch_size(recipe)) if hits else []
        before = [preds[i]["pred"] for i, _ in hits]
        return summarise(
            [preds[i]["text"] for i, _ in hits], [s for _, s in hits], before, [a["label"] for a in after],
            [preds[i]["where"] for i, _ in hits], [b != a["label"] for b, a in zip(before, after)], name,
            extra=[{"score_change": round(a["scores"][b] - max(preds[i]["probs"]), 4)}
                   for (i, _), b, a in zip(hits, before, after)])

    # -- model cards ------------------------------------------------------------
    def intended_use(self, info: dict) -> str:
        labels = ", ".join(f"`{l}`" for l in info.get("labels") or [])
        return (f"Assigns one of these labels to a text: {labels}. Use it on text like the training data; "
                "it has not been tested on other domains or languages.")

    def card_summary(self, info: dict) -> str:
        return f"labels: {', '.join(info['labels'])}"

    # -- the run's tuneline.json --------------------------------------------------
    def run_info(self, recipe, prepared) -> dict:
        """The labels, and the majority label of the training data (the test baseline predicts it)."""
        majority = self.majority(prepared.train.labels)
        return {**super().run_info(recipe, prepared), "labels": prepared.labels,
                "majority_label": prepared.labels[majority]}

    # -- service: drift and retraining ---------------------------------------------
    def input_texts(self, rows: Rows, recipe) -> tuple[list[str], list[str]]:
        return self.extract(rows, recipe)

    def plain_rows(self, rows: Rows, recipe) -> list[dict]:
        texts, labels = self.extract(rows, recipe)
        return [{"text": t, "label": l} for t, l in zip(texts, labels)]

    def plain_data_keys(self) -> dict:
        return {"text_column": "text", "label_column": "label"}

    def plain_input(self, record: dict) -> str:
        return record["text"]

    def correction(self, feedback: dict) -> str | None:
        return feedback["corrected_label"]

    def feedback_record(self, conversation: list[dict], fix: str) -> dict:
        return {"text": conversation[-1]["content"], "label": fix}

    def row_scores(self, run, rows: list[dict]) -> list[float]:
        """Correct 1, wrong 0."""
        preds = run.predict([r["text"] for r in rows])
        return [float(p["label"] == r["label"]) for p, r in zip(preds, rows)]



@dataclass
class Prepared:
    labels: list[str]
    train: Encoded
    validation: Encoded
    test: Encoded

