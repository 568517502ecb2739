"""`tuneline retrain RUN`: a challenger from the original data plus corrected feedback, judged
against the serving champion on the same rows, promoted only if it wins.

1. Corrections from the monitoring store (a corrected label or answer; the latest per input)
   are split, seeded, into rows to learn from and rows held out to judge on.
2. The training set is the run's original training rows (without the rows it held out for
   validation and test) plus the learning share of the corrections; an original row whose
   input a correction names is replaced by it. It is written as plain JSONL and trained with
   the same recipe through `pipeline.train`, so it is audited like any data.
3. Champion and challenger answer the same rows: the original test set plus the held-out
   corrections. Per row a score (the task's `row_scores`: a classifier's correct 0/1, a
   generator's sentence chrF / 100), and:
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
from ..tasks.base import Task
from .registry import Registry
from .store import Store, default_db_url


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def corrections(store: Store, task: Task) -> tuple[list[dict], int]:
    """Corrected feedback as the task's plain rows, the latest per input; and how many corrections
    could not be used because their input was not stored."""
    latest: dict[str, dict] = {}
    hidden = 0
    for fb in reversed(store.feedback_rows()):  # oldest first: later feedback overwrites
        fix = task.correction(fb)
        if not fix:
            continue
        if fb["input"] is None:
            hidden += 1
            continue
        record = task.feedback_record(_conversation(fb), fix)
        latest[_norm(task.plain_input(record))] = record
    return list(latest.values()), hidden


def _conversation(fb: dict) -> list[dict]:
    """The conversation a feedback row's request carried: a chat's messages, else its text (the
    input the feedback names) as one user turn."""
    inputs = json.loads(fb["input"])
    if fb["endpoint"] == "/v1/chat/completions":
        return inputs
    return [{"role": "user", "content": inputs[fb["item"]] if fb["item"] < len(inputs) else inputs[0]}]


def _original_rows(root: RunDir, recipe, task: Task) -> tuple[list[dict], Path, Path | None]:
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
    return task.plain_rows(train, recipe), paths["test"], paths.get("validation")


def _split_feedback(rows: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = min(max(1, round(len(rows) * share)), len(rows) - 1)
    return rows[n_eval:], rows[:n_eval]


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
    registry = Registry(run_dir)
    recipe, task = _recipe(registry, overrides)
    metric = recipe.retrain.metric or task.key_metric
    if metric != task.key_metric:
        raise UserError(f"retrain.metric: {metric} does not apply to a {task.name} run; use {task.key_metric} "
                        "(the default)")
    fb_train, fb_eval = _split_feedback(_read_corrections(registry, db_url, task, recipe.retrain.min_feedback),
                                        recipe.retrain.feedback_eval_share, recipe.train.seed)
    champion_id, vid = registry.champion, registry.next_id()
    out, test_path = _train_challenger(registry, vid, recipe, task, fb_train, fb_eval, force)
    registry.add(vid, out, parent=champion_id, feedback_train=len(fb_train), feedback_eval=len(fb_eval))

    test_rows = task.plain_rows(read_rows(test_path), recipe)[:task.max_eval_rows(recipe)]  # as in its own eval
    scores = {}
    for name, path in (("champion", registry.path_of(champion_id)), ("challenger", out)):
        scores[name] = _scores(task, path, test_rows, fb_eval)
    d = decide(recipe.retrain, scores["champion"][0], scores["challenger"][0], scores["champion"][1],
               scores["challenger"][1])
    d.update(metric=metric, champion_id=champion_id, challenger_id=vid, test_rows=len(test_rows),
             feedback_eval_rows=len(fb_eval), feedback_train_rows=len(fb_train), time=time.time())
    d["promoted"] = d["wins"] and promote
    atomic_write_json(out / "retrain.json", d)
    _record_decision(registry, vid, d)
    print(format_decision(d))
    return d


def _recipe(registry: Registry, overrides: list[str] | None):
    """The run's recipe with the challenger's --set overrides, and its task."""
    import yaml

    from ..recipe import apply_overrides
    from ..tasks import task_of

    path = RunDir(registry.root).recipe
    recipe = recipe_from_dict(apply_overrides(yaml.safe_load(path.read_text()), overrides or []), str(path))
    return recipe, task_of(recipe)


def _read_corrections(registry: Registry, db_url: str | None, task: Task, min_feedback: int) -> list[dict]:
    url = db_url or default_db_url(registry.root)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise UserError(f"{registry.root}: no monitoring store at {url}; serve the run and collect feedback first")
    store = Store(url)
    try:
        fixes, hidden = corrections(store, task)
    finally:
        store.close()
    if hidden:
        print(f"{hidden} corrections are about requests stored without inputs (--no-store-inputs) and cannot "
              "be learned from.", flush=True)
    if len(fixes) < min_feedback:
        raise UserError(f"{len(fixes)} corrected feedback rows; retraining needs at least {min_feedback} "
                        f"(retrain.min_feedback). Collect corrections with POST /v1/feedback or the dashboard")
    return fixes


def _train_challenger(registry: Registry, vid: str, recipe, task: Task, fb_train: list[dict], fb_eval: list[dict],
                      force: bool) -> tuple[Path, Path]:
    """Writes the challenger's data (original rows a correction does not replace, plus the learning
    corrections) and trains it with the run's recipe; -> its folder, the test file."""
    from ..training.pipeline import train

    original, test_path, validation_path = _original_rows(RunDir(registry.root), recipe, task)
    fixed = {_norm(task.plain_input(r)) for r in fb_train + fb_eval}
    kept = [r for r in original if _norm(task.plain_input(r)) not in fixed]  # feedback is the newer truth
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
    new["data"].update(train=str(data_dir / "train.jsonl"), test=str(test_path),
                       validation=str(validation_path) if validation_path else None, max_rows=None,
                       **task.plain_data_keys())
    new["output"] = str(out)
    train(recipe_from_dict(new, f"{vid} recipe"), output=out, force=force)
    return out, test_path


def _scores(task: Task, path: Path, test_rows: list[dict], feedback_rows: list[dict]) -> tuple[list[float], list[float]]:
    """One version's per-row scores on the test rows and on the held-out corrections."""
    from ..inference import load_run

    loaded = load_run(path)
    return task.row_scores(loaded, test_rows), task.row_scores(loaded, feedback_rows)


def _record_decision(registry: Registry, vid: str, d: dict) -> None:
    registry.set_decision(vid, d)
    if d["promoted"]:
        registry.set_champion(vid, "promote", "; ".join(d["reasons"]))
    else:
        registry.record(vid, "reject" if not d["wins"] else "hold", "; ".join(d["reasons"]))


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
