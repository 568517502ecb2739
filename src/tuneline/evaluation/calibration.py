"""Calibration of a classifier: expected calibration error and the reliability-diagram bins."""

from __future__ import annotations

import numpy as np


def calibration(probs: list[list[float]], y_true: list[int], n_bins: int = 10) -> dict:
    """ECE with equal-width confidence bins (Guo et al. 2017): the mean |accuracy - confidence|
    over bins, weighted by bin size. scikit-learn's calibration_curve is binary-only, hence our own."""
    p = np.asarray(probs, dtype=float)
    y = np.asarray(y_true)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first bin
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        if n == 0:
            continue
        acc, c = float(correct[sel].mean()), float(conf[sel].mean())
        ece += n / len(y) * abs(acc - c)
        bins.append({"low": round(float(edges[b]), 3), "high": round(float(edges[b + 1]), 3), "count": n,
                     "confidence": c, "accuracy": acc})
    return {"ece": float(ece), "n_bins": n_bins, "bins": bins,
            "mean_confidence": float(conf.mean()) if len(y) else None,
            "accuracy": float(correct.mean()) if len(y) else None}


def most_confident_errors(predictions: list[dict], labels: list[str], k: int = 10) -> list[dict]:
    """The k wrong predictions the model was surest of: usually label errors or real blind spots."""
    wrong = [p for p in predictions if p["pred"] != p["label"]]
    wrong.sort(key=lambda p: -max(p["probs"]))
    return [{"where": p["where"], "text": p["text"], "label": p["label"], "pred": p["pred"],
             "confidence": max(p["probs"])} for p in wrong[:k]]
