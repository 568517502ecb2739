"""`tuneline retrain RUN`: a challenger from the original data plus the service's feedback, judged
against the serving champion on the same rows, promoted only if it wins.

What the challenger learns from (`retrain.objective`, or `tuneline retrain --objective`):

- `sft` (a classifier always; a chat run by default when nobody rated an answer): corrections (a
  corrected label or answer; the latest per input) as supervised rows, mixed with the original
  rows; an original row whose input a correction names is replaced by it.
- `kto` (chat runs; what `auto` picks once the store holds a thumbs up or down): judged answers,
  trained with `objective: kto`. Every original training row is a desirable judgement (its
  conversation without the last answer, and that answer; a pair's rejected answer and a
  judgement's own label are kept as they are); a thumbs-up answer (the request's conversation and
  the model's output) is desirable, a thumbs-down one undesirable; a correction is two
  judgements: the corrected answer desirable, the model's answer undesirable. Original rows a
  correction names are dropped (the correction is the newer truth), as are original answers a
  thumbs-down names. Unless the recipe sets `kto.desirable_weight` / `kto.undesirable_weight`
  to other than 1, the more numerous side is weighted down so weight x count is level on both sides (the KTO
  paper's advice).
- `dpo` (chat runs): preference pairs, trained with `objective: dpo`: each correction is a pair
  (chosen: the correction, rejected: the model's answer). A thumbs up or down alone is not a pair,
  and neither is an original chat row: dpo retraining learns from corrections only (plus the
  original pairs of a run that was itself trained on pairs). A run trained on chats forgets what
  its supervised data taught if a handful of pairs is all the challenger sees; the original test
  split then refuses it.

Feedback about requests stored without inputs (`serve --no-store-inputs`) is skipped and counted.
A chat run's challenger recipe is the run's with `objective` and `data` replaced.

1. Feedback is split, seeded and by kind, into rows to learn from and rows held out to judge on
   (`retrain.feedback_eval_share`). Thumbs the objective does not learn from (sft, dpo) are all
   held out to judge on.
2. The challenger is trained through `pipeline.train`, so its data is audited like any data.
3. Champion and challenger answer the same rows: the original test set and the held-out
   corrections are scored per row by the task's `row_scores` (a classifier's correct 0/1, a
   generator's sentence chrF / 100); each held-out judged answer by the version's mean log-prob
   per answer token of that answer given its prompt, signed (+ thumbs up, - thumbs down): a
   version that makes liked answers likelier and disliked ones less likely wins the row.
4. Without judged rows (every classifier, chat runs with corrections only) the rule is as it has
   always been: promote only if the challenger's mean over test + held-out corrections is higher by
   `retrain.margin`, a one-sided sign test over those rows gives p <= `retrain.max_p_value`, and
   the original test set alone does not drop by more than `retrain.max_test_drop`.
   With judged rows: not worse on the test set (the same drop limit), and better on held-out
   feedback: a one-sided sign test over every held-out feedback row (corrections and judged
   answers) with p <= `max_p_value`, and a gain of `margin`: over test + held-out corrections when
   there are held-out corrections, else (rows won - rows lost) / judged rows.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data.io import read_rows, write_jsonl
from ..data.preference import Example
from ..errors import UserError
from ..recipe import recipe_from_dict
from ..runs import RunDir, atomic_write_json
from ..tasks.base import Task
from .feedback import KINDS, ChatFeedback, Judged, _norm, chat_feedback, corrections, pick_objective
from .promotion import decide, format_decision, judged_scores
from .registry import Registry
from .store import Store, default_db_url

__all__ = ["chat_feedback", "decide", "format_decision", "pick_objective", "retrain"]


# -- what a run learned from ------------------------------------------------------------------

def _original_data(root: RunDir, recipe) -> tuple:
    """The run's training rows minus the rows it held out, its test file and its validation file
    (None: split from train again)."""
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
    return train.subset(keep), paths["test"], paths.get("validation")


def _original_rows(root: RunDir, recipe, task: Task) -> tuple[list[dict], Path, Path | None]:
    """The run's training rows in the plain format, minus the rows it held out; the test file;
    the validation file (None: split from train again)."""
    train, test, validation = _original_data(root, recipe)
    return task.plain_rows(train, recipe), test, validation


def judgement_rows(exs: list[Example]) -> list[dict]:
    """KTO's rows (data.format judgements): each preferred answer desirable, each other undesirable."""
    out = []
    for e in exs:
        if e.chosen is not None:
            out.append({"prompt": e.prompt, "completion": e.chosen, "label": True})
        if e.rejected is not None:
            out.append({"prompt": e.prompt, "completion": e.rejected, "label": False})
    return out


def pair_rows(exs: list[Example]) -> list[dict]:
    """DPO's rows (data.format pairs): the examples that have both answers."""
    return [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in exs
            if e.chosen is not None and e.rejected is not None]


# -- splitting and judging ----------------------------------------------------------------------

def _split_feedback(rows: list, share: float, seed: int) -> tuple[list, list]:
    rows = list(rows)
    if len(rows) < 2:  # nothing to hold out that would leave something to learn from
        return rows, []
    random.Random(seed).shuffle(rows)
    n_eval = min(max(1, round(len(rows) * share)), len(rows) - 1)
    return rows[n_eval:], rows[:n_eval]


# -- the plan: what the challenger learns from and is judged on -------------------------------------

@dataclass
class Plan:
    objective: str
    why: str
    fb_train: list              # sft: plain rows of the learning corrections; kto / dpo: Judged rows
    fb_eval: list[dict]         # plain rows of the held-out corrections (scored by row_scores)
    judged: list[Judged] = field(default_factory=list)   # held-out rated answers (scored by log-prob)
    everything: ChatFeedback | None = None                # all usable feedback of a chat run
    held_out: dict = field(default_factory=dict)
    learned: dict = field(default_factory=dict)           # filled in by the challenger's training


def retrain(run_dir: str | Path, db_url: str | None = None, overrides: list[str] | None = None,
            promote: bool = True, force: bool = False, objective: str | None = None) -> dict:
    """`objective` (auto, sft, kto, dpo) overrides the recipe's `retrain.objective`."""
    from ..tasks import get_task

    registry = Registry(run_dir)
    recipe, task = _recipe(registry, overrides)
    own = get_task(recipe.task)  # the task's own class: what it serves, what it scores rows by
    metric = recipe.retrain.metric or own.key_metric
    if metric != own.key_metric:
        raise UserError(f"retrain.metric: {metric} does not apply to a {own.name} run; use {own.key_metric} "
                        "(the default)")
    requested = objective or recipe.retrain.objective
    if "chat" in own.serves:
        plan = _chat_plan(registry, db_url, recipe, task, own, requested)
    else:
        chosen, why = pick_objective(requested, own, None)
        fb_train, fb_eval = _split_feedback(_read_corrections(registry, db_url, task, recipe.retrain.min_feedback),
                                            recipe.retrain.feedback_eval_share, recipe.train.seed)
        plan = Plan(chosen, why, fb_train, fb_eval, held_out={"corrections": len(fb_eval)})
    champion_id, vid = registry.champion, registry.next_id()
    out, test_path = _train_challenger(registry, vid, recipe, task, plan, force)
    registry.add(vid, out, parent=champion_id, feedback_train=len(plan.fb_train), feedback_eval=len(plan.fb_eval),
                 objective=plan.objective)

    test_rows = task.plain_rows(read_rows(test_path), recipe)[:task.max_eval_rows(recipe)]  # as in its own eval
    scores = {}
    for name, path in (("champion", registry.path_of(champion_id)), ("challenger", out)):
        scores[name] = _scores(task, path, test_rows, plan.fb_eval, plan.judged)
    d = decide(recipe.retrain, scores["champion"][0], scores["challenger"][0], scores["champion"][1],
               scores["challenger"][1], scores["champion"][2], scores["challenger"][2])
    d.update(metric=metric, champion_id=champion_id, challenger_id=vid, test_rows=len(test_rows),
             feedback_eval_rows=len(plan.fb_eval), feedback_train_rows=len(plan.fb_train), time=time.time(),
             objective=plan.objective, objective_why=plan.why, learned_from=plan.learned, held_out=plan.held_out)
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


def _open_store(registry: Registry, db_url: str | None) -> Store:
    url = db_url or default_db_url(registry.root)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise UserError(f"{registry.root}: no monitoring store at {url}; serve the run and collect feedback first")
    return Store(url)


def _read_corrections(registry: Registry, db_url: str | None, task: Task, min_feedback: int) -> list[dict]:
    store = _open_store(registry, db_url)
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


def _chat_plan(registry: Registry, db_url: str | None, recipe, task: Task, own: Task, requested: str) -> Plan:
    store = _open_store(registry, db_url)
    try:
        fb = chat_feedback(store.feedback_rows())
    finally:
        store.close()
    objective, why = pick_objective(requested, own, fb)
    opts, seed = recipe.retrain, recipe.train.seed
    if fb.hidden:
        parts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in fb.hidden.items())
        print(f"{sum(fb.hidden.values())} feedback rows ({parts}) are about requests stored without inputs "
              "(--no-store-inputs) and cannot be learned from.", flush=True)
    if fb.no_answer:
        print(f"{fb.no_answer} ratings are about requests whose answer was not stored (failed requests): skipped.",
              flush=True)
    if fb.unusable:
        print(f"{fb.unusable} feedback rows are about conversations a training row cannot hold (turns not "
              "alternating user / assistant, or not ending with the user's turn): skipped.", flush=True)
    usable = fb.usable(objective)
    if usable < opts.min_feedback:
        if objective == "sft":
            raise UserError(f"{usable} corrected feedback rows; retraining needs at least {opts.min_feedback} "
                            f"(retrain.min_feedback). Collect corrections with POST /v1/feedback or the dashboard")
        what = {"kto": "corrections and rated answers", "dpo": "corrections that make a pair (the model's answer "
                "stored and different)"}[objective]
        c = fb.counts()
        raise UserError(f"{usable} {what}; retraining with {objective} needs at least {opts.min_feedback} "
                        f"(retrain.min_feedback). Collected: {c['corrections']} corrections, {c['thumbs_up']} thumbs "
                        f"up, {c['thumbs_down']} thumbs down")
    learn_fix, eval_fix = _split_feedback(fb.corrections, opts.feedback_eval_share, seed)
    if objective == "kto":
        learn_up, eval_up = _split_feedback(fb.thumbs_up, opts.feedback_eval_share, seed)
        learn_down, eval_down = _split_feedback(fb.thumbs_down, opts.feedback_eval_share, seed)
    else:  # thumbs it does not learn from are all held out to judge on
        learn_up, eval_up, learn_down, eval_down = [], fb.thumbs_up, [], fb.thumbs_down
    if objective == "sft":
        fb_train = [own.feedback_record(j.prompt, j.correction) for j in learn_fix]
    else:
        fb_train = learn_fix + learn_up + learn_down
    plan = Plan(objective, why, fb_train, [own.feedback_record(j.prompt, j.correction) for j in eval_fix],
                judged=eval_up + eval_down, everything=fb,
                held_out={"corrections": len(eval_fix), "thumbs_up": len(eval_up), "thumbs_down": len(eval_down)})
    print(f"Retrain objective: {objective} ({why}).", flush=True)
    return plan


def _train_challenger(registry: Registry, vid: str, recipe, task: Task, plan: Plan, force: bool) -> tuple[Path, Path]:
    """Writes the challenger's data and trains it; -> its folder, the original test file."""
    from ..training.pipeline import train

    out = registry.versions_dir / vid
    data_dir = registry.versions_dir / f"{vid}-data"
    if out.exists() or data_dir.exists():
        raise UserError(f"{out} already exists; remove it (a retrain that was stopped) and run again")
    root = RunDir(registry.root)
    if plan.objective != "sft":
        data_dir.mkdir(parents=True)
        try:
            keys, test_path = _preference_data(root, recipe, task, plan, data_dir)
        except UserError:  # nothing to learn from: leave no half-made version behind
            shutil.rmtree(data_dir)
            raise
        new = recipe.model_dump(mode="json")
        new["objective"] = plan.objective
        new["data"].update(keys, max_rows=None, text_column=None, label_column=None, streaming=False)
        if new["train"].get("replay"):
            print(f"train.replay is left out: objective {plan.objective} learns from other rows than chats.",
                  flush=True)
            new["train"]["replay"] = None
        if plan.objective == "kto":
            _balance_kto(new, recipe, plan.learned)
        new["output"] = str(out)
        train(recipe_from_dict(new, f"{vid} recipe"), output=out, force=force)
        return out, test_path

    fb_train, fb_eval = plan.fb_train, plan.fb_eval
    original, test_path, validation_path = _original_rows(root, recipe, task)
    fixed = {_norm(task.plain_input(r)) for r in fb_train + fb_eval}
    kept = [r for r in original if _norm(task.plain_input(r)) not in fixed]  # feedback is the newer truth
    data_dir.mkdir(parents=True)
    write_jsonl(data_dir / "train.jsonl", kept + fb_train)
    write_jsonl(data_dir / "feedback_train.jsonl", fb_train)
    write_jsonl(data_dir / "feedback_eval.jsonl", fb_eval)
    plan.learned = {"original": len(kept), "original_replaced": len(original) - len(kept),
                    "corrections": len(fb_train), "rows": len(kept) + len(fb_train)}
    print(f"Challenger {vid}: {len(kept)} original rows ({len(original) - len(kept)} replaced by corrections) "
          f"+ {len(fb_train)} corrections; {len(fb_eval)} corrections held out for judging"
          + "".join(f", {plan.held_out[k]} {k.replace('_', ' ')}" for k in ("thumbs_up", "thumbs_down")
                    if plan.held_out.get(k)), flush=True)
    new = recipe.model_dump(mode="json")
    new["objective"] = "sft"  # a chat run trained on pairs or judgements retrains on plain chats here
    new["data"].update(train=str(data_dir / "train.jsonl"), test=str(test_path),
                       validation=str(validation_path) if validation_path else None, max_rows=None,
                       **task.plain_data_keys())
    new["output"] = str(out)
    train(recipe_from_dict(new, f"{vid} recipe"), output=out, force=force)
    return out, test_path


def _prompt_key(prompt: list[dict], system: str | None) -> str:
    from ..data.chat import with_system

    return _norm(json.dumps(with_system(prompt, system)))


def _preference_data(root: RunDir, recipe, task: Task, plan: Plan, data_dir: Path) -> tuple[dict, Path]:
    """Writes a kto or dpo challenger's train / validation / test files; -> the recipe's data keys,
    the original test file. Fills plan.learned with the rows of each kind."""
    train_rows, test_path, validation_path = _original_data(root, recipe)
    system = recipe.generate.system_prompt
    fb, learning = plan.everything, plan.fb_train
    fixed = {_prompt_key(j.prompt, system) for j in fb.corrections}
    disliked = {(_prompt_key(j.prompt, system), _norm(j.answer)) for j in fb.thumbs_down}
    liked = {(_prompt_key(j.prompt, system), _norm(j.answer)) for j in learning if j.kind == "thumbs_up"}
    rated = disliked | liked

    def kept(exs: list[Example]) -> tuple[list[Example], int]:
        """Original examples minus what feedback replaces: a corrected prompt's rows (the correction is
        the newer truth), an answer rated down, an answer rated up (the feedback row carries it)."""
        out, dropped = [], 0
        for e in exs:
            key = _prompt_key(e.prompt, system)
            chosen = e.chosen if e.chosen is not None and (key, _norm(e.chosen)) not in rated else None
            if key in fixed or (chosen is None and e.rejected is None):
                dropped += 1
                continue
            out.append(Example(e.prompt, chosen, e.rejected))
        return out, dropped

    originals, replaced = kept(task.examples(train_rows, recipe))
    learned_fb = [j.example() for j in learning]
    by_kind = Counter(j.kind for j in learning)
    eval_fix = [j for j in fb.corrections if j not in learning]
    n_orig = sum(e.chosen is not None for e in originals) + sum(e.rejected is not None for e in originals)
    if plan.objective == "kto":
        rows = judgement_rows(originals) + judgement_rows(learned_fb)
        desirable = sum(r["label"] for r in rows)
        if desirable == len(rows):
            raise UserError("kto learns from desirable and undesirable answers, and nothing the challenger would "
                            "learn from is undesirable (no thumbs down, no correction of a stored answer in the "
                            "learning share); collect some, or retrain with --objective sft")
        convert, fmt = judgement_rows, "judgements"
        plan.learned = {"original": len(originals), "original_rows": n_orig, "original_replaced": replaced,
                        **{k: by_kind.get(k, 0) for k in KINDS}, "desirable": desirable,
                        "undesirable": len(rows) - desirable, "rows": len(rows)}
        note = (f"{len(originals)} original rows ({replaced} replaced by feedback) as desirable answers, "
                f"{by_kind['thumbs_up']} thumbs up, {by_kind['thumbs_down']} thumbs down, {by_kind['corrections']} "
                f"corrections (the correction desirable, the model's answer undesirable): {desirable} desirable + "
                f"{len(rows) - desirable} undesirable judgements")
    else:
        orig_pairs, fb_pairs = pair_rows(originals), pair_rows(learned_fb)
        rows = orig_pairs + fb_pairs
        no_pair = sum(1 for e in learned_fb if e.rejected is None)
        skipped = {"corrections_without_model_answer": no_pair,
                   "thumbs_down_without_correction": len(fb.thumbs_down), "thumbs_up": len(fb.thumbs_up),
                   "original_rows_not_pairs": len(originals) - len(orig_pairs)}
        if not rows:
            raise UserError("dpo learns from pairs, and no correction in the learning share has a stored model "
                            "answer that differs from it; collect more corrections, or retrain with --objective sft")
        convert, fmt = pair_rows, "pairs"
        plan.learned = {"original_pairs": len(orig_pairs), "correction_pairs": len(fb_pairs), "rows": len(rows),
                        "skipped": skipped}
        note = (f"{len(fb_pairs)} correction pairs (chosen: the correction, rejected: the model's answer) + "
                f"{len(orig_pairs)} original pairs; not pairs, so not learned from: "
                f"{skipped['thumbs_down_without_correction']} thumbs down and {skipped['thumbs_up']} thumbs up "
                f"without a correction, {no_pair} corrections without a different stored answer, "
                f"{skipped['original_rows_not_pairs']} original rows")
    write_jsonl(data_dir / "train.jsonl", rows)
    write_jsonl(data_dir / "feedback_train.jsonl", [_judged_record(j) for j in learning])
    write_jsonl(data_dir / "feedback_eval.jsonl", plan.fb_eval)
    write_jsonl(data_dir / "judged_eval.jsonl", [_judged_record(j) for j in plan.judged])
    keys = {"train": str(data_dir / "train.jsonl"), "format": fmt, "validation": None}
    # the run's own held-out splits, in the objective's format (feedback stays out of them)
    for name, path in (("validation", validation_path), ("test", test_path)):
        if path is None:
            continue
        split = convert(task.examples(read_rows(path), recipe))
        if not split and name == "test":  # a chat run's test rows make no pairs: the held-out corrections do
            split = pair_rows([j.example() for j in eval_fix]) or rows[:1]
        if split:
            write_jsonl(data_dir / f"{name}.jsonl", split)
            keys[name] = str(data_dir / f"{name}.jsonl")
    plan.learned["note"] = note
    h = plan.held_out
    print(f"Challenger ({plan.objective}): {note}; held out for judging: {h['corrections']} corrections, "
          f"{h['thumbs_up']} thumbs up, {h['thumbs_down']} thumbs down", flush=True)
    return keys, test_path


def _judged_record(j: Judged) -> dict:
    return {"kind": j.kind, "prompt": j.prompt, "answer": j.answer, "correction": j.correction}


def _balance_kto(new: dict, recipe, learned: dict) -> None:
    """Level weight x count on both sides (KTO's advice), unless the recipe sets a weight other than 1
    (a run folder's recipe.yaml names every key, so a weight left at its default cannot be told
    from one set to 1)."""
    if (recipe.kto.desirable_weight, recipe.kto.undesirable_weight) != (1.0, 1.0):
        return
    good, bad = learned["desirable"], learned["undesirable"]
    side = "desirable_weight" if good > bad else "undesirable_weight"
    weight = round(min(good, bad) / max(good, bad), 4)
    if weight < 1:
        new["kto"][side] = weight
        learned["kto_weights"] = {"desirable_weight": new["kto"]["desirable_weight"],
                                  "undesirable_weight": new["kto"]["undesirable_weight"]}
        print(f"kto.{side}: {weight} ({good} desirable, {bad} undesirable rows: weight x count level on both "
              "sides)", flush=True)


def _scores(task: Task, path: Path, test_rows: list[dict], feedback_rows: list[dict],
            judged: list[Judged]) -> tuple[list[float], list[float], list[float]]:
    """One version's per-row scores on the test rows, the held-out corrections and the held-out
    rated answers."""
    from ..inference import load_run

    loaded = load_run(path)
    return (task.row_scores(loaded, test_rows), task.row_scores(loaded, feedback_rows) if feedback_rows else [],
            judged_scores(loaded, judged))


def _record_decision(registry: Registry, vid: str, d: dict) -> None:
    registry.set_decision(vid, d)
    if d["promoted"]:
        registry.set_champion(vid, "promote", "; ".join(d["reasons"]))
    else:
        registry.record(vid, "reject" if not d["wins"] else "hold", "; ".join(d["reasons"]))

