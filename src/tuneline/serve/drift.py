"""Drift: are the live inputs still like the training data, and (a classifier's) the answers?

The reference is built once per served version from its training rows (and, for a
classifier, its predictions on the test rows) and cached in the version's folder as
`drift_reference.json`. Live inputs are compared with it:

- input length (tokens) and vocabulary (token frequencies over the reference's top tokens
  plus "other"): population stability index (PSI);
- embedding centroid: cosine distance between the mean input-embedding vector of the live
  texts and of the training texts (the model's own input embeddings, no extra forward pass);
- where the task has classes (the training rows have labels): predicted-label distribution
  against the training labels (PSI), and the mean confidence against the test set's.

Thresholds come from the recipe's `drift:` section. PSI is a ten-line formula; no
well-kept library offers it on its own, so it is written here.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter, deque
from pathlib import Path

import numpy as np

TOP_TOKENS = 200
LENGTH_BINS = 10
EPS = 1e-4


def psi(expected: list[float], actual: list[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for e, a in zip(expected, actual):
        e, a = max(e, EPS), max(a, EPS)
        total += (a - e) * math.log(a / e)
    return total


def _shares(counts: list[float]) -> list[float]:
    n = sum(counts)
    return [c / n for c in counts] if n else [0.0] * len(counts)


def _length_edges(lengths: list[int]) -> list[float]:
    qs = np.quantile(np.asarray(lengths, dtype=float), np.linspace(0, 1, LENGTH_BINS + 1)[1:-1])
    return sorted(set(float(q) for q in qs))


def _bin_lengths(lengths, edges) -> list[float]:
    idx = np.searchsorted(np.asarray(edges), np.asarray(lengths, dtype=float), side="right")
    return _shares(np.bincount(idx, minlength=len(edges) + 1).tolist())


def _vocab_shares(token_lists, top: list[int]) -> list[float]:
    index = {t: i for i, t in enumerate(top)}
    counts = [0] * (len(top) + 1)
    for ids in token_lists:
        for t in ids:
            counts[index.get(t, len(top))] += 1
    return _shares(counts)


def _centroid(embeddings, token_lists) -> np.ndarray:
    """Mean over texts of the mean input embedding of each text's tokens."""
    import torch

    vecs = []
    with torch.no_grad():
        for ids in token_lists:
            if ids:
                vecs.append(embeddings(torch.tensor(ids, device=embeddings.weight.device)).mean(0).float().cpu().numpy())
    return np.mean(vecs, axis=0) if vecs else np.zeros(embeddings.embedding_dim)


def _cosine_distance(a, b) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    return 1.0 - float(np.dot(a, b) / (na * nb))


def _tokens(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]


def reference_texts(run) -> tuple[list[str], list[str] | None, list[str]]:
    """(training inputs, training labels or None where the task has no classes, test inputs) of a loaded run."""
    from ..data.io import read_rows

    manifest = run.run.read_manifest()
    train = read_rows(Path(manifest["data"]["train"]["path"]))
    texts, labels = run.task.input_texts(train, run.recipe)
    return texts, labels, run.task.input_texts(read_rows(run.test_data_path()), run.recipe)[0]


def build_reference(run, version: str) -> dict:
    texts, labels, test_texts = reference_texts(run)
    tok = _tokens(run.tokenizer, texts, run.max_length)
    lengths = [len(x) for x in tok]
    counts = Counter(t for ids in tok for t in ids)
    top = [t for t, _ in counts.most_common(TOP_TOKENS)]
    ref = {
        "version": version, "rows": len(texts), "task": run.info["task"],
        "length_edges": _length_edges(lengths), "top_tokens": top,
        "vocab_shares": _vocab_shares(tok, top),
        "centroid": _centroid(run.model.get_input_embeddings(), tok).tolist(),
        "length_mean": float(np.mean(lengths)),
    }
    ref["length_shares"] = _bin_lengths(lengths, ref["length_edges"])
    if labels is not None:
        names = run.labels
        c = Counter(labels)
        ref["labels"] = names
        ref["label_shares"] = _shares([c.get(n, 0) for n in names])
        conf = [p["score"] for p in run.predict(test_texts)]
        ref["confidence_mean"] = float(np.mean(conf))
        ref["confidence_shares"] = _shares(np.histogram(conf, bins=10, range=(0, 1))[0].tolist())
    return ref


def load_reference(run, version: str, folder: Path) -> dict:
    cache = Path(folder) / "drift_reference.json"
    if cache.exists():
        try:
            ref = json.loads(cache.read_text())
            if ref.get("version") == version:
                return ref
        except (OSError, json.JSONDecodeError):
            pass
    ref = build_reference(run, version)
    try:
        from ..runs import atomic_write_json

        atomic_write_json(cache, ref)
    except OSError:
        pass  # a read-only run folder: rebuilt next time
    return ref


def _status(value: float, warn: float, alert: float) -> str:
    return "alert" if value >= alert else "warn" if value >= warn else "ok"


def compare(ref: dict, options, *, lengths: list[int] | None, token_lists: list[list[int]] | None = None,
            embeddings=None, labels: list[str] | None = None, confidences: list[float] | None = None) -> dict:
    """The drift report of live inputs (and answers) against a reference. lengths None: inputs
    unknown (stored without inputs), only the answers are compared."""
    n = len(lengths) if lengths is not None else len(labels or [])
    report = {"n": n, "window": options.window, "reference_rows": ref["rows"], "version": ref["version"],
              "checks": [], "alerts": [], "details": {}}
    if n < options.min_requests:
        report["verdict"] = "insufficient"
        report["message"] = f"{n} live inputs; drift is judged from {options.min_requests}"
        return report
    checks = report["checks"]

    def add(name, value, warn, alert, what):
        status = _status(value, warn, alert)
        checks.append({"name": name, "value": round(value, 4), "warn": warn, "alert": alert, "status": status,
                       "what": what})
        if status == "alert":
            report["alerts"].append(f"{name} {value:.3f} >= {alert} ({what})")

    if lengths is not None:
        live_len = _bin_lengths(lengths, ref["length_edges"])
        add("length_psi", psi(ref["length_shares"], live_len), options.psi_warn, options.psi_alert,
            "input length distribution")
        report["details"]["length_mean"] = {"reference": round(ref["length_mean"], 1),
                                            "live": round(float(np.mean(lengths)), 1)}
    if token_lists is not None:
        live_vocab = _vocab_shares(token_lists, ref["top_tokens"])
        add("vocabulary_psi", psi(ref["vocab_shares"], live_vocab), options.psi_warn, options.psi_alert,
            "token frequencies")
        report["details"]["other_token_share"] = {"reference": round(ref["vocab_shares"][-1], 3),
                                                  "live": round(live_vocab[-1], 3)}
        if embeddings is not None:
            dist = _cosine_distance(np.asarray(ref["centroid"]), _centroid(embeddings, token_lists))
            add("embedding_centroid_distance", dist, options.centroid_alert / 2, options.centroid_alert,
                "cosine distance of mean input embeddings")
    if labels is not None and "label_shares" in ref:
        c = Counter(labels)
        live = _shares([c.get(x, 0) for x in ref["labels"]])
        add("label_psi", psi(ref["label_shares"], live), options.psi_warn, options.psi_alert,
            "predicted labels vs training labels")
        report["details"]["labels"] = {"labels": ref["labels"], "reference": [round(x, 3) for x in ref["label_shares"]],
                                       "live": [round(x, 3) for x in live]}
    if confidences and "confidence_mean" in ref:
        mean = float(np.mean(confidences))
        drop = ref["confidence_mean"] - mean
        add("confidence_drop", max(drop, 0.0), options.confidence_drop_alert / 2, options.confidence_drop_alert,
            "mean confidence below the test set's")
        report["details"]["confidence_mean"] = {"reference": round(ref["confidence_mean"], 3), "live": round(mean, 3)}
    worst = {"ok": 0, "warn": 1, "alert": 2}
    level = max((worst[c["status"]] for c in checks), default=0)
    report["verdict"] = ["ok", "warn", "alert"][level]
    return report


class DriftMonitor:
    """The service's live window and its latest report (recomputed in the background)."""

    def __init__(self, served, metrics=None):
        self.served = served
        self.metrics = metrics
        self._lock = threading.Lock()
        self._window: deque = deque(maxlen=self._options().window)
        self._ref: dict | None = None
        self.last_report: dict | None = None
        self.last_error: str | None = None

    def _options(self):
        return self.served.current.run.recipe.drift

    def observe(self, texts: list[str], preds: list[dict] | None) -> None:
        with self._lock:
            for i, t in enumerate(texts):
                p = preds[i] if preds and i < len(preds) else None
                self._window.append((t, p["label"] if p else None, p["score"] if p else None))

    def reset(self) -> None:
        with self._lock:
            self._window = deque(maxlen=self._options().window)
            self._ref = None
            self.last_report = None

    def update(self) -> dict:
        v = self.served.current
        if self._ref is None or self._ref.get("version") != v.id:
            self._ref = load_reference(v.run, v.id, v.path)
        with self._lock:
            items = list(self._window)
        report = report_for_texts(self._ref, v.run, [t for t, _, _ in items],
                                  [l for _, l, _ in items if l is not None] or None,
                                  [c for _, _, c in items if c is not None] or None)
        before = {a.split()[0] for a in (self.last_report or {}).get("alerts", [])}
        for a in report["alerts"]:
            if a.split()[0] not in before:  # once when a check starts alerting, not at every update
                print(f"tuneline serve: DRIFT ALERT ({v.id}): {a}", flush=True)
        if self.metrics is not None:
            for c in report["checks"]:
                self.metrics.drift_alert.labels(c["name"]).set(1 if c["status"] == "alert" else 0)
        self.last_report = report
        return report


def report_for_texts(ref: dict, run, texts: list[str], labels=None, confidences=None) -> dict:
    tok = _tokens(run.tokenizer, texts, run.max_length) if texts else []
    return compare(ref, run.recipe.drift, lengths=[len(x) for x in tok], token_lists=tok,
                   embeddings=run.model.get_input_embeddings(), labels=labels, confidences=confidences)
