"""`tuneline retrain RUN`: a challenger from the original data plus corrected feedback, judged
against the serving champion on the same rows, promoted only if it wins.

1. Corrections from the monitoring store (a corrected label or answer; the latest per input)
   are split, seeded, into rows to learn from and rows held out to judge on.
2. The training set is the run's original training rows (without the rows it held out for
   validation and test) plus the learning share of the corrections; an original row whose
   input a correction names is replaced by it. It is written as plain JSONL and trained with
   the same recipe through `pipeline.train`, so it is audited like any data.
3. Champion and challenger answer the same rows: the original test set plus the held-out
   corrections. Per row a score (classify: correct 0/1; generate: sentence chrF / 100), and:
   promote only if the challenger's mean is higher by `retrain.margin`, a one-sided sign
   test over the rows where they differ gives p <= `retrain.max_p_value` (noise that moves a
   few rows by chance does not pass), and the original test set alone does not drop by more
   than `retrain.max_test_drop`.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from ..data.io import read_rows, write_jsonl
from ..errors import UserError
from ..recipe import recipe_from_dict
from ..runs import RunDir, atomic_write_json
from .registry import Registry
from .store import Store, default_db_url


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def corrections(store: Store, task: str) -> tuple[list[dict], int]:
    """Corrected feedback as training rows ({"text","label"} or {"messages"}), the latest per
    input; and how many corrections could not be used because their input was not stored."""
    latest: dict[str, dict] = {}
    hidden = 0
    for fb in reversed(store.feedback_rows()):  # oldest first: later feedback overwrites
        fix = fb["corrected_label"] if task == "classify" else fb["corrected_answer"]
        if not fix:
            continue
        if fb["input"] is None:
            hidden += 1
            continue
        inputs = json.loads(fb["input"])
        if fb["endpoint"] == "/v1/chat/completions":
            conv = [m for m in inputs if m["role"] != "system"] if task == "classify" else inputs
            text = conv[-1]["content"]
        else:
            conv = None
            text = inputs[fb["item"]] if fb["item"] < len(inputs) else inputs[0]
        if task == "classify":
            latest[_norm(text)] = {"text": text, "label": fix}
        else:
            msgs = conv if conv is not None else [{"role": "user", "content": text}]
            latest[_norm(json.dumps(msgs))] = {"messages": msgs + [{"role": "assistant", "content": fix}]}
    return list(latest.values()), hidden


def _key(row: dict) -> str:
    if "text" in row:
        return _norm(row["text"])
    return _norm(json.dumps(row["messages"][:-1]))


def _original_rows(root: RunDir, recipe, task) -> tuple[list[dict], Path, Path | None]:
    """The run's training rows in the plain format, minus the rows it held out; the test file;
    the validation file (None: split from train again)."""
    manifest = root.read_manifest()
    train = read_rows(manifest["data"]["train"]["path"])
    if recipe.data.max_rows:
        train = train.subset(list(range(min(recipe.data.max_rows, len(train)))))
    held = manifest.get("held_out", {})
    held_records = set()
    paths = {}
    for split in ("validation", "test"):
        if split in held:
            p = root.splits / f"{split}.jsonl"  # written by the run itself
            held_records |= {json.dumps(r, sort_keys=True) for r in read_rows(p).records}
            paths[split] = p
        elif split in manifest["data"]:
            paths[split] = Path(manifest["data"][split]["path"])
    if "test" not in paths or not paths["test"].exists():
        raise UserError(f"{root.path}: the run's test rows are gone ({paths.get('test')}); retrain compares "
                        "champion and challenger on them")
    keep = [i for i, r in enumerate(train.records) if json.dumps(r, sort_keys=True) not in held_records]
    train = train.subset(keep)
    return _plain(train, recipe, task), paths["test"], paths.get("validation")


def _plain(rows, recipe, task) -> list[dict]:
    if task.name == "classify":
        texts, labels = task.extract(rows, recipe)
        return [{"text": t, "label": l} for t, l in zip(texts, labels)]
    return [{"messages": m} for m in task.conversations(rows, recipe)]


def _split_feedback(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = min(max(1, round(len(rows) * share)), len(rows) - 1)
    return rows[n_eval:], rows[:n_eval]


def row_scores(run, rows: list[dict], metric: str) -> list[float]:
    """Per-row score of a loaded run on plain rows: correct 0/1, or sentence chrF / 100."""
    if metric == "accuracy":
        preds = run.predict([r["text"] for r in rows])
        return [float(p["label"] == r["label"]) for p, r in zip(preds, rows)]
    import sacrebleu

    answers = run.generate([r["messages"][:-1] for r in rows])
    return [sacrebleu.sentence_chrf(a, [r["messages"][-1]["content"]]).score / 100 for a, r in zip(answers, rows)]


def sign_test(champion: list[float], challenger: list[float]) -> tuple[int, int, float]:
    """(rows the challenger wins, rows it loses, one-sided p-value that it wins no more than by chance)."""
    from scipy.stats import binomtest

    wins = sum(c > h for h, c in zip(champion, challenger))
    losses = sum(c < h for h, c in zip(champion, challenger))
    if wins + losses == 0:
        return 0, 0, 1.0
    return wins, losses, float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def decide(opts, champ_test, chal_test, champ_fb, chal_fb) -> dict:
    champ_all, chal_all = champ_test + champ_fb, chal_test + chal_fb
    wins, losses, p = sign_test(champ_all, chal_all)
    gain = _mean(chal_all) - _mean(champ_all)
    test_drop = _mean(champ_test) - _mean(chal_test)
    reasons = []
    if gain < opts.margin:
        reasons.append(f"gain {gain:+.4f} is under the margin {opts.margin}")
    if p > opts.max_p_value:
        reasons.append(f"sign test p = {p:.3g} ({wins} rows better, {losses} worse) is over {opts.max_p_value}")
    if test_drop > opts.max_test_drop:
        reasons.append(f"the original test set drops by {test_drop:.4f} (allowed {opts.max_test_drop})")
    return {
        "wins": not reasons, "gain": round(gain, 4), "p_value": p, "rows_better": wins, "rows_worse": losses,
        "test_drop": round(test_drop, 4),
        "champion": {"test": round(_mean(champ_test), 4), "feedback": round(_mean(champ_fb), 4),
                     "all": round(_mean(champ_all), 4)},
        "challenger": {"test": round(_mean(chal_test), 4), "feedback": round(_mean(chal_fb), 4),
                       "all": round(_mean(chal_all), 4)},
        "reasons": reasons or [f"gain {gain:+.4f} >= {opts.margin}, p = {p:.3g} <= {opts.max_p_value}, "
                               f"test drop {test_drop:.4f} <= {opts.max_test_drop}"],
    }


def retrain(run_dir: str | Path, db_url: str | None = None, overrides: list[str] | None = None,
            promote: bool = True, force: bool = False) -> dict:
    import yaml

    from ..inference import load_run
    from ..training.pipeline import train
    from ..recipe import apply_overrides
    from ..tasks import get_task

    registry = Registry(run_dir)
    root = RunDir(registry.root)
    champion_id = registry.champion
    recipe_data = yaml.safe_load(root.recipe.read_text())
    recipe = recipe_from_dict(apply_overrides(recipe_data, overrides or []), str(root.recipe))
    task = get_task(recipe.task)
    opts = recipe.retrain
    metric = opts.metric or ("accuracy" if recipe.task == "classify" else "chrf")

    url = db_url or default_db_url(registry.root)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise UserError(f"{run_dir}: no monitoring store at {url}; serve the run and collect feedback first")
    store = Store(url)
    try:
        fixes, hidden = corrections(store, recipe.task)
    finally:
        store.close()
    if hidden:
        print(f"{hidden} corrections are about requests stored without inputs (--no-store-inputs) and cannot "
              "be learned from.", flush=True)
    if len(fixes) < opts.min_feedback:
        raise UserError(f"{len(fixes)} corrected feedback rows; retraining needs at least {opts.min_feedback} "
                        f"(retrain.min_feedback). Collect corrections with POST /v1/feedback or the dashboard")
    fb_train, fb_eval = _split_feedback(fixes, opts.feedback_eval_share, recipe.train.seed)

    original, test_path, validation_path = _original_rows(root, recipe, task)
    fixed = {_key(r) for r in fb_train + fb_eval}
    kept = [r for r in original if _key(r) not in fixed]  # feedback is the newer truth
    vid = registry.next_id()
    out = registry.versions_dir / vid
    data_dir = registry.versions_dir / f"{vid}-data"
    if out.exists() or data_dir.exists():
        raise UserError(f"{out} already exists; remove it (a retrain that was stopped) and run again")
    data_dir.mkdir(parents=True)
    write_jsonl(data_dir / "train.jsonl", kept + fb_train)
    write_jsonl(data_dir / "feedback_train.jsonl", fb_train)
    write_jsonl(data_dir / "feedback_eval.jsonl", fb_eval)
    print(f"Challenger {vid}: {len(kept)} original rows ({len(original) - len(kept)} replaced by corrections) "
          f"+ {len(fb_train)} corrections; {len(fb_eval)} corrections held out for judging", flush=True)

    new = recipe.model_dump(mode="json")
    plain = {"text_column": "text", "label_column": "label"} if recipe.task == "classify" else \
        {"text_column": None, "label_column": None, "format": "messages"}
    new["data"].update(train=str(data_dir / "train.jsonl"), test=str(test_path),
                       validation=str(validation_path) if validation_path else None, max_rows=None, **plain)
    new["output"] = str(out)
    train(recipe_from_dict(new, f"{vid} recipe"), output=out, force=force)
    registry.add(vid, out, parent=champion_id, feedback_train=len(fb_train), feedback_eval=len(fb_eval))

    test_rows = _plain(read_rows(test_path), recipe, task)
    if recipe.task == "generate":
        test_rows = test_rows[:recipe.eval.max_samples or 200]  # generation is slow; as in the run's own eval
    scores = {}
    for name, path in (("champion", registry.path_of(champion_id)), ("challenger", out)):
        loaded = load_run(path)
        scores[name] = (row_scores(loaded, test_rows, metric), row_scores(loaded, fb_eval, metric))
        del loaded
    d = decide(opts, scores["champion"][0], scores["challenger"][0], scores["champion"][1], scores["challenger"][1])
    d.update(metric=metric, champion_id=champion_id, challenger_id=vid, test_rows=len(test_rows),
             feedback_eval_rows=len(fb_eval), feedback_train_rows=len(fb_train), time=time.time())
    promoted = d["wins"] and promote
    d["promoted"] = promoted
    atomic_write_json(out / "retrain.json", d)
    registry.set_decision(vid, d)
    if promoted:
        registry.set_champion(vid, "promote", "; ".join(d["reasons"]))
    else:
        registry.record(vid, "reject" if not d["wins"] else "hold", "; ".join(d["reasons"]))
    print(format_decision(d))
    return d


def format_decision(d: dict) -> str:
    lines = [f"{d['metric']} on the same rows ({d['test_rows']} test + {d['feedback_eval_rows']} held-out corrections):",
             f"  {'':<22}{'test':>8}{'feedback':>10}{'all':>8}"]
    for who in ("champion", "challenger"):
        s = d[who]
        lines.append(f"  {who + ' ' + d[who + '_id']:<22}{s['test']:>8.4f}{s['feedback']:>10.4f}{s['all']:>8.4f}")
    verdict = ("PROMOTED: " + d["challenger_id"] + " now serves") if d["promoted"] else \
        ("WINS but not promoted (--no-promote)" if d["wins"] else "NOT PROMOTED: " + d["champion_id"] + " keeps serving")
    lines += [f"{verdict}", *("  " + r for r in d["reasons"])]
    return "\n".join(lines)
