"""The feedback loop of a chat run: thumbs up / down as KTO judgements, corrections as DPO pairs
(and as a liked and a disliked answer for KTO), judged on held-out feedback by log-probs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from fastapi.testclient import TestClient
from serve_helpers import shared_generate_run

from tuneline.errors import UserError
from tuneline.serve.app import ServeSettings, create_app
from tuneline.serve.monitor import next_retrain
from tuneline.serve.feedback import chat_feedback, pick_objective
from tuneline.serve.promotion import decide
from tuneline.serve.retrain import retrain
from tuneline.tasks import get_task

OPTS = SimpleNamespace(margin=0.02, max_p_value=0.05, max_test_drop=0.02)
UP = ["pear", "mint", "fig"]
DOWN = ["kiwi", "lime", "date"]
FIX = {"plum": "the code for plum is zorp", "sky": "the code for sky is zorp", "snow": "the code for snow is zorp",
       "coal": "the code for coal is zorp"}  # words the run was trained on: their original rows give way


def ask(w: str) -> list[dict]:
    return [{"role": "user", "content": f"what is the code for {w}"}]


# -- the rule ----------------------------------------------------------------------------------
def test_decide_with_judged_feedback():
    test = [0.5] * 20
    better, worse = [-1.0] * 10, [-0.5] * 10   # the challenger's signed log-probs are higher on every row
    d = decide(OPTS, test, test, [], [], better, worse)
    assert d["wins"] and d["judged"] == {"rows": 10, "rows_better": 10, "rows_worse": 0,
                                         "p_value": pytest.approx(0.5 ** 10)}
    assert d["gain"] == 1.0 and d["gain_on"].startswith("judged") and d["sign_test_on"] == "held-out feedback"
    assert d["challenger"]["judged"] == -0.5 and d["champion"]["judged"] == -1.0
    assert {"gain", "p_value", "rows_better", "rows_worse", "test_drop", "champion", "challenger"} <= set(d)

    d = decide(OPTS, test, [0.45] * 20, [], [], better, worse)           # worse on the original test split
    assert not d["wins"] and len(d["reasons"]) == 1 and "test set drops by 0.0500" in d["reasons"][0]

    d = decide(OPTS, test, test, [], [], better[:3], worse[:3])          # 3 of 3 rows: p = 0.125
    assert not d["wins"] and len(d["reasons"]) == 1 and "p = 0.125" in d["reasons"][0]

    # held-out corrections: the margin is on test + corrections (0-1 rows), the sign test on all feedback
    d = decide(OPTS, test, test, [0.5] * 5, [0.52] * 5, better, worse)
    assert d["gain_on"] == "test + held-out corrections" and d["rows_better"] == 15 and d["p_value"] < 0.001
    assert not d["wins"] and len(d["reasons"]) == 1 and "under the margin" in d["reasons"][0]
    assert decide(OPTS, test, test, [0.5] * 5, [0.9] * 5, better, worse)["wins"]

    # judged rows only: (won - lost) / rows must reach the margin
    mixed_h, mixed_c = [0.0] * 100, [1.0] * 60 + [-1.0] * 40            # 60 won, 40 lost: p = 0.028, gain 0.2
    assert decide(OPTS, test, test, [], [], mixed_h, mixed_c)["wins"]
    d = decide(SimpleNamespace(**{**vars(OPTS), "margin": 0.3}), test, test, [], [], mixed_h, mixed_c)
    assert not d["wins"] and "gain +0.2000 on judged" in d["reasons"][0]

    # without judged rows the rule is as before: the sign test over test + corrections
    d = decide(OPTS, [0.0] * 10, [1.0] * 10, [0.0] * 3, [1.0] * 3)
    assert d["wins"] and d["rows_better"] == 13 and d["judged"]["rows"] == 0 and d["champion"]["judged"] is None


# -- reading the store ---------------------------------------------------------------------------
def fb_row(i, w, rating=None, fix=None, answer="an answer", stored=True):
    return {"id": i, "request_id": f"chat-{i}", "created": float(i), "item": 0, "rating": rating,
            "corrected_label": None, "corrected_answer": fix, "comment": None, "endpoint": "/v1/chat/completions",
            "input": json.dumps(ask(w)) if stored else None, "output": json.dumps([answer]) if answer else None,
            "model_version": "v1"}


def test_chat_feedback_objective_and_preview():
    rows = [fb_row(1, "pear", "up"), fb_row(2, "kiwi", "down"), fb_row(3, "kiwi", "up"),  # the later rating wins
            fb_row(4, "plum", "down"), fb_row(5, "plum", fix="zorp"),                     # the correction wins
            fb_row(6, "fig", "down", stored=False), fb_row(7, "lime", "up", answer=None),
            fb_row(8, "sky", fix="the same", answer="the same"), fb_row(9, "mint", None)]
    fb = chat_feedback(list(reversed(rows)))  # the store gives the newest first
    assert fb.counts() == {"corrections": 2, "thumbs_up": 2, "thumbs_down": 0}
    assert fb.hidden == {"thumbs_down": 1} and fb.no_answer == 1
    assert [j.prompt[0]["content"][-4:] for j in fb.thumbs_up] == ["pear", "kiwi"]
    plum = fb.corrections[0].example()
    assert (plum.chosen, plum.rejected) == ("zorp", "an answer")
    assert fb.corrections[1].example().rejected is None  # a correction equal to the answer is no pair
    assert fb.usable("kto") == 4 and fb.usable("dpo") == 1 and fb.usable("sft") == 2

    generate, classify = get_task("generate"), get_task("classify")
    assert pick_objective("auto", generate, fb)[0] == "kto"
    assert pick_objective("auto", generate, chat_feedback([fb_row(1, "plum", fix="zorp")]))[0] == "sft"
    assert pick_objective("dpo", generate, fb) == ("dpo", "retrain.objective")
    assert pick_objective("auto", classify, None)[0] == "sft"
    with pytest.raises(UserError, match="a classify run retrains with sft"):
        pick_objective("kto", classify, None)
    with pytest.raises(UserError, match="allowed: auto, sft, kto, dpo"):
        pick_objective("ppo", generate, fb)

    n = next_retrain(list(reversed(rows)), "generate", SimpleNamespace(objective="auto", min_feedback=5))
    assert n["objective"] == n["auto_objective"] == "kto" and n["usable"] == 4 and not n["ready"]
    assert (n["corrections"], n["thumbs_up"], n["thumbs_down"], n["without_input"]) == (2, 2, 0, 1)
    assert "4 count toward retrain.min_feedback (5 needed, not enough yet)" in n["summary"]
    assert n["examples"][0] == {"kind": "corrections", "input": "what is the code for sky", "model": "the same",
                                "learns": "preferred: the same"}
    n = next_retrain(list(reversed(rows)), "generate", SimpleNamespace(objective="dpo", min_feedback=1))
    assert n["objective"] == "dpo" and n["auto_objective"] == "kto" and n["usable"] == 1 and n["ready"]
    n = next_retrain([fb_row(1, "pear", "up")], "generate", SimpleNamespace(objective="auto", min_feedback=1))
    assert n["objective"] == "kto" and not n["ready"] and "needs a disliked answer" in n["summary"]


# -- whole retrains on a tiny served chat run ------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llama):
    """The shared chat run, served once: 3 answers rated up, 3 down, 4 corrected (2 with a rating)."""
    run = shared_generate_run(tmp_path_factory, tiny_llama)
    db = tmp_path_factory.mktemp("pref_store") / "m.db"
    answers = {}
    with TestClient(create_app(ServeSettings(run_dir=str(run), db_url=f"sqlite:///{db}"))) as c:
        for w in UP + DOWN + list(FIX):
            r = c.post("/v1/chat/completions", json={"messages": ask(w), "max_tokens": 4}).json()
            answers[w] = r["choices"][0]["message"]["content"]
            body = {"request_id": r["id"]}
            if w in FIX:
                body.update(corrected_answer=FIX[w], rating="down" if w in ("plum", "sky") else None)
            else:
                body["rating"] = "up" if w in UP else "down"
            assert c.post("/v1/feedback", json=body).status_code == 200
        n = c.get("/api/feedback").json()["next_retrain"]  # what the dashboard shows
        got = (n["objective"], n["corrections"], n["thumbs_up"], n["thumbs_down"], n["ready"])
        assert got == ("kto", 4, 3, 3, True)
    assert all(a.strip() for a in answers.values())
    return run, db, answers


def copy_served(served, tmp_path):
    run, db, answers = served
    for f in db.parent.glob("m.db*"):
        shutil.copy(f, tmp_path / f.name)
    return Path(shutil.copytree(run, tmp_path / "run")), f"sqlite:///{tmp_path / 'm.db'}", answers


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_auto_retrain_learns_judgements_by_kto(served, tmp_path):
    run, db, answers = copy_served(served, tmp_path)
    d = retrain(run, db_url=db, promote=False)  # auto: answers were rated, so kto
    assert d["objective"] == "kto" and d["objective_why"].startswith("auto") and not d["promoted"]
    recipe = yaml.safe_load((run / "versions" / "v2" / "recipe.yaml").read_text())
    assert recipe["objective"] == "kto" and recipe["data"]["format"] == "judgements"
    assert recipe["data"]["text_column"] is None and recipe["data"]["label_column"] is None

    data = run / "versions" / "v2-data"
    rows = read_jsonl(data / "train.jsonl")
    learned = {j["prompt"][-1]["content"].rsplit(" ", 1)[1]: j for j in read_jsonl(data / "feedback_train.jsonl")}
    held = d["held_out"]
    assert held == {"corrections": 1, "thumbs_up": 1, "thumbs_down": 1}  # round(share x 4, 3, 3), one at least
    lf = d["learned_from"]
    assert (lf["corrections"], lf["thumbs_up"], lf["thumbs_down"]) == (3, 2, 2) and len(learned) == 7
    judged = {(r["prompt"][-1]["content"], r["completion"], r["label"]) for r in rows}
    for w, j in learned.items():
        q = f"what is the code for {w}"
        if j["kind"] == "corrections":  # two judgements: the correction liked, the model's answer not
            assert (q, FIX[w], True) in judged and (q, answers[w], False) in judged
        else:
            assert (q, answers[w], j["kind"] == "thumbs_up") in judged
    # original rows are desirable judgements; those of a corrected question give way to the correction
    originals = [r for r in rows if r["completion"].startswith("the code for") and not r["completion"].endswith("zorp")]
    assert originals and all(r["label"] for r in originals) and len(originals) == lf["original"]
    assert not any(r["prompt"][-1]["content"].endswith(tuple(FIX)) for r in originals)
    assert lf["desirable"] + lf["undesirable"] == len(rows) == lf["rows"] and lf["undesirable"] == 5
    assert lf["kto_weights"] == {"desirable_weight": round(5 / lf["desirable"], 4), "undesirable_weight": 1.0}
    assert recipe["kto"]["desirable_weight"] == lf["kto_weights"]["desirable_weight"]

    # judged on held-out feedback: the held-out correction by chrF, the rated answers by log-prob
    assert d["feedback_eval_rows"] == 1 and d["judged"]["rows"] == 2
    assert d["judged"]["rows_better"] + d["judged"]["rows_worse"] <= 2
    assert d["challenger"]["judged"] is not None and d["champion"]["judged"] is not None
    assert d["sign_test_on"] == "held-out feedback" and d["reasons"]
    saved = json.loads((run / "versions" / "v2" / "retrain.json").read_text())
    assert saved["objective"] == "kto" and saved["judged"] == d["judged"] and saved["learned_from"]["rows"] == len(rows)
    assert {r["kind"] for r in read_jsonl(data / "judged_eval.jsonl")} == {"thumbs_up", "thumbs_down"}
    entry = json.loads((run / "registry.json").read_text())["versions"][1]
    assert entry["objective"] == "kto" and entry["decision"]["promoted"] is False


def test_dpo_retrain_learns_pairs_from_corrections_only(served, tmp_path):
    run, db, answers = copy_served(served, tmp_path)
    with pytest.raises(UserError, match="retraining with dpo needs at least 5"):  # 4 corrections make 4 pairs
        retrain(run, db_url=db, objective="dpo")
    d = retrain(run, db_url=db, objective="dpo", promote=False, overrides=["retrain.min_feedback=4"])
    assert d["objective"] == "dpo" and d["objective_why"] == "retrain.objective"
    recipe = yaml.safe_load((run / "versions" / "v2" / "recipe.yaml").read_text())
    assert recipe["objective"] == "dpo" and recipe["data"]["format"] == "pairs"
    rows = read_jsonl(run / "versions" / "v2-data" / "train.jsonl")
    assert len(rows) == 3 == d["learned_from"]["correction_pairs"] and d["learned_from"]["original_pairs"] == 0
    for r in rows:  # the correction chosen, the model's answer rejected; no original row, no rating
        w = r["prompt"][-1]["content"].rsplit(" ", 1)[1]
        assert r["chosen"] == FIX[w] and r["rejected"] == answers[w]
    skipped = d["learned_from"]["skipped"]
    assert skipped["thumbs_down_without_correction"] == 3 and skipped["thumbs_up"] == 3
    # ratings it cannot learn from are all judged
    assert d["held_out"] == {"corrections": 1, "thumbs_up": 3, "thumbs_down": 3} and d["judged"]["rows"] == 6


def test_kto_without_a_disliked_answer_is_a_clear_error(served, tmp_path):
    run = Path(shutil.copytree(served[0], tmp_path / "run"))
    db = f"sqlite:///{tmp_path / 'liked.db'}"
    with TestClient(create_app(ServeSettings(run_dir=str(run), db_url=db))) as c:
        for w in UP + DOWN:
            r = c.post("/v1/chat/completions", json={"messages": ask(w), "max_tokens": 4}).json()
            assert c.post("/v1/feedback", json={"request_id": r["id"], "rating": "up"}).status_code == 200
    with pytest.raises(UserError, match="nothing the challenger would learn from is undesirable"):
        retrain(run, db_url=db)
    assert not any((run / "versions").iterdir())  # no half-made version left to block the next retrain


def test_feedback_on_conversations_a_training_row_cannot_hold_is_skipped():
    from tuneline.serve.feedback import chat_feedback

    two_users = [{"role": "user", "content": "hi"}, {"role": "user", "content": "anyone?"}]
    ok = [{"role": "user", "content": "hi"}]
    rows = [{"input": json.dumps(c), "output": json.dumps(["hello"]), "endpoint": "/v1/chat/completions", "item": 0,
             "rating": "up", "corrected_answer": None, "created": float(i)} for i, c in enumerate([two_users, ok])]
    fb = chat_feedback(rows)
    assert fb.unusable == 1 and len(fb.thumbs_up) == 1 and fb.thumbs_up[0].prompt == ok
