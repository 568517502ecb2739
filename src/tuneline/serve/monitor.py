"""Summaries of the monitoring store: traffic, feedback, and drift from the stored requests.

Shared by `tuneline monitor` (offline, reading the store) and the dashboard (live).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import numpy as np

from ..errors import UserError
from .store import Store


def _pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def traffic_summary(store: Store, since: float | None = None, bucket_s: int = 60) -> dict:
    rows = store.request_stats(since)
    ok = [r for r in rows if r["status"] == 200]
    lat = [r["latency_ms"] for r in ok]
    by = defaultdict(lambda: {"requests": 0, "errors": 0})
    for r in rows:
        key = f"{r['endpoint']} {r['model_version']}"
        by[key]["requests"] += 1
        by[key]["errors"] += r["status"] != 200
    series = Counter()
    errors = Counter()
    for r in rows:
        b = int(r["created"] // bucket_s * bucket_s)
        series[b] += 1
        errors[b] += r["status"] != 200
    span = (max(r["created"] for r in rows) - min(r["created"] for r in rows)) if len(rows) > 1 else 0
    return {
        "requests": len(rows), "errors": len(rows) - len(ok),
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99),
                       "mean": round(float(np.mean(lat)), 2) if lat else None},
        "requests_per_s": round(len(rows) / span, 2) if span else None,
        "by_endpoint_version": [{"key": k, **v} for k, v in sorted(by.items())],
        "series": [{"t": t, "requests": series[t], "errors": errors[t]} for t in sorted(series)],
        "bucket_s": bucket_s,
    }


def feedback_summary(store: Store, limit: int = 50, task: str | None = None, retrain=None) -> dict:
    """Counts, the most frequent corrections and the latest rows; with `task` (the run's task name)
    also "next_retrain": what `tuneline retrain` would learn from now (`retrain`: the recipe's
    retrain options)."""
    rows = store.feedback_rows()
    ratings = Counter(r["rating"] for r in rows if r["rating"])
    items = [queue_item(r) for r in rows]
    # the label of the item the feedback is about: a request may classify several texts, and the
    # request row's own label is its first text's
    corrections = Counter((q["output"], q["corrected_label"]) for q in items if q["corrected_label"])
    return {
        "total": len(rows), "up": ratings.get("up", 0), "down": ratings.get("down", 0),
        "corrected_labels": sum(1 for r in rows if r["corrected_label"]),
        "corrected_answers": sum(1 for r in rows if r["corrected_answer"]),
        "top_corrections": [{"predicted": p, "corrected": c, "count": n} for (p, c), n in corrections.most_common(10)],
        "queue": items[:limit],
        **({"next_retrain": next_retrain(rows, task, retrain)} if task else {}),
    }


def next_retrain(rows: list[dict], task: str, retrain=None, n_examples: int = 5) -> dict:
    """What the next `tuneline retrain` would learn from, read the way it reads the store: usable
    corrections, thumbs up and down (about stored inputs; the latest per input and answer), the
    objective it would train by and why, and the latest few rows."""
    from ..tasks import get_task
    from .feedback import chat_feedback, pick_objective

    own = get_task(task)
    configured = retrain.objective if retrain is not None else "auto"
    min_feedback = getattr(retrain, "min_feedback", None)
    if "chat" not in own.serves:
        from .feedback import _norm

        usable = [r for r in rows if r["input"] is not None]
        rated = [r for r in usable if not own.correction(r)]  # a rating beside a correction is the correction's
        counts = {"corrections": len({_norm(queue_item(r)["input"] or "") for r in usable if own.correction(r)}),
                  "thumbs_up": sum(r["rating"] == "up" for r in rated),
                  "thumbs_down": sum(r["rating"] == "down" for r in rated)}
        hidden = sum(1 for r in rows if r["input"] is None and (own.correction(r) or r["rating"]))
        objective, why = "sft", "a classifier learns from corrected labels; ratings alone are not learned from"
        examples = [{"kind": "corrections", "input": q["input"], "model": q["output"], "learns": q["corrected_label"]}
                    for q in (queue_item(r) for r in usable if own.correction(r))][:n_examples]
        n_usable = counts["corrections"]
    else:
        fb = chat_feedback(rows)
        counts, hidden = fb.counts(), sum(fb.hidden.values())
        try:
            objective, why = pick_objective(configured, own, fb)
        except UserError:  # a recipe value this code does not know: say what auto would do
            objective, why = pick_objective("auto", own, fb)
        latest = sorted(fb.corrections + fb.thumbs_up + fb.thumbs_down, key=lambda j: -j.created)[:n_examples]
        last_user = lambda j: next((m["content"] for m in reversed(j.prompt) if m["role"] == "user"), "")
        examples = [{"kind": j.kind, "input": last_user(j), "model": j.answer, "learns": _learns(j, objective)}
                    for j in latest]
        n_usable = fb.usable(objective)
    auto = pick_objective("auto", own, fb if "chat" in own.serves else None)[0]
    summary = _retrain_sentence(objective, counts, n_usable, hidden, min_feedback)
    ready = min_feedback is None or n_usable >= min_feedback
    if objective == "kto" and not counts["thumbs_down"] and not fb.usable("dpo"):
        ready = False  # kto needs undesirable answers too: the original rows are all desirable
        summary += " kto needs a disliked answer too: a thumbs down, or a correction of a stored answer."
    return {"objective": objective, "why": why, "configured": configured, "auto_objective": auto,
            **counts, "without_input": hidden, "usable": n_usable, "min_feedback": min_feedback,
            "ready": ready, "summary": summary, "examples": examples}


def _learns(j, objective: str) -> str:
    """What one chat feedback row teaches under `objective`, in words."""
    if j.kind == "corrections":
        if objective == "sft":
            return f"answer: {j.correction}"
        e = j.example()
        if e.rejected is None:
            return f"preferred: {j.correction}" if objective == "kto" else "nothing (no stored answer to pair with)"
        return f"preferred: {j.correction}; not: the model's answer"
    if objective != "kto":
        return f"nothing ({objective} does not learn from ratings; judged on them)"
    return "a liked answer" if j.kind == "thumbs_up" else "a disliked answer"


def _retrain_sentence(objective: str, counts: dict, usable: int, hidden: int, min_feedback) -> str:
    learns = {"sft": "corrections as supervised rows, with the original rows",
              "kto": "the original rows as liked answers, thumbs up and down, each correction as a liked and a "
                     "disliked answer",
              "dpo": "each correction as a pair (the correction over the model's answer); ratings alone are not pairs"}
    text = (f"Next retrain: {objective}, learning from {learns[objective]}. "
            f"{counts['corrections']} corrections, {counts['thumbs_up']} thumbs up, {counts['thumbs_down']} thumbs "
            f"down usable; {usable} count toward retrain.min_feedback")
    if min_feedback is not None:
        text += f" ({min_feedback} needed{'' if usable >= min_feedback else ', not enough yet'})"
    if hidden:
        text += f"; {hidden} about requests stored without inputs cannot be used"
    return text + ". A share (retrain.feedback_eval_share) is held out to judge the challenger on."


def queue_item(r: dict) -> dict:
    """One feedback row with the input and output it is about, for a person to read."""
    inputs = json.loads(r["input"]) if r["input"] else None
    outputs = json.loads(r["output"]) if r["output"] else None
    item = r["item"]
    text = None
    if isinstance(inputs, list) and inputs:
        x = inputs[item] if item < len(inputs) else inputs[0]
        text = x if isinstance(x, str) else next((m["content"] for m in reversed(inputs) if m.get("role") == "user"), None)
    out = None
    if isinstance(outputs, list) and outputs:
        o = outputs[item] if item < len(outputs) else outputs[0]
        out = o.get("label") if isinstance(o, dict) else o
    return {"id": r["id"], "request_id": r["request_id"], "created": r["created"], "rating": r["rating"],
            "input": text, "output": out, "corrected_label": r["corrected_label"],
            "corrected_answer": r["corrected_answer"], "comment": r["comment"], "model_version": r["model_version"]}


def live_items(store: Store, window: int) -> tuple[list[str], list[str], list[float], int, bool]:
    """The latest `window` inputs (texts), predicted labels and confidences from the store."""
    rows = store.recent_requests(window)
    texts, labels, confs, hidden = [], [], [], 0
    for r in rows:
        if r["status"] != 200:
            continue
        outputs = json.loads(r["output"]) if r["output"] else []
        for o in outputs:
            if isinstance(o, dict) and "label" in o:
                labels.append(o["label"])
                confs.append(o["score"])
        if r["input"] is None:
            hidden += 1
            continue
        inputs = json.loads(r["input"])
        if r["endpoint"] == "/v1/chat/completions":
            texts.append(next(m["content"] for m in reversed(inputs) if m["role"] == "user"))
        else:
            texts.extend(inputs)
    return texts[:window], labels[:window], confs[:window], hidden, bool(rows)


def offline_drift(run, version: str, folder, store: Store) -> dict:
    """Drift of the stored traffic of the current version against its training data."""
    from .drift import compare, load_reference, report_for_texts

    options = run.recipe.drift
    ref = load_reference(run, version, folder)
    texts, labels, confs, hidden, _ = live_items(store, options.window)
    if texts:
        report = report_for_texts(ref, run, texts, labels or None, confs or None)
    else:
        report = compare(ref, options, lengths=None, labels=labels or None, confidences=confs or None)
    if hidden:
        report["note"] = (f"{hidden} requests were stored without inputs (--no-store-inputs): their input drift "
                          "is judged only live by the service")
    return report


def summary(store: Store, since: float | None = None) -> dict:
    return {"time": time.time(), "traffic": traffic_summary(store, since), "feedback": feedback_summary(store)}
