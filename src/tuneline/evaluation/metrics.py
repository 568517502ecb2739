"""Task metrics from well-kept libraries (scikit-learn here; sacrebleu / rouge-score for text)."""

from __future__ import annotations


def classification_metrics(y_true: list[int], y_pred: list[int], labels: list[str]) -> dict:
    # imported here: sklearn.metrics takes ~1.5 s to import (scipy.stats), which `tuneline predict`
    # and the service, who import the task's module but compute no metrics, should not pay
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i in ids
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
        "labels": list(labels),
        "n": len(y_true),
    }


def difference(tuned: dict, other: dict, keys: tuple[str, ...]) -> dict:
    """tuned - other for each of `keys` (the task's headline metrics) that both hold as a number."""
    return {k: tuned[k] - other[k] for k in keys
            if isinstance(tuned.get(k), (int, float)) and isinstance(other.get(k), (int, float))}
