"""The loop closed: feedback -> challenger -> promotion only if it wins -> hot reload -> rollback."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tuneline.errors import UserError
from tuneline.serve.app import ServeSettings, create_app
from tuneline.serve.registry import Registry
from tuneline.serve.retrain import retrain

from conftest import FILLER, synthetic_rows
from serve_helpers import shared_classify_run, shared_generate_run


def zorp_texts(n: int, seed: int) -> list[str]:
    """A pattern the training data never shows: filler words and the new word 'zorp'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(3, 6)) + ["zorp"]
        rng.shuffle(words)
        out.append(" ".join(words))
    return list(dict.fromkeys(out))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    return shared_classify_run(tmp_path_factory, tiny_bert)


@pytest.fixture
def run(tmp_path, trained):
    """A fresh copy of one trained run per test: each test grows its own registry."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def client(run, tmp_path):
    return TestClient(create_app(ServeSettings(run_dir=str(run), db_url=f"sqlite:///{tmp_path / 'm.db'}",
                                               reload_interval=0.2)))


def wait_for_version(c, version, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if c.get("/health").json()["model_version"] == version:
            return True
        assert c.post("/v1/classify", json={"input": "still answering during the swap"}).status_code == 200
        time.sleep(0.2)
    return False


def test_systematic_correction_is_promoted_hot_reloaded_and_rolled_back(run, tmp_path):
    texts = zorp_texts(40, 3)
    with client(run, tmp_path) as c:
        preds = c.post("/v1/classify", json={"input": texts}).json()["results"]
        said = Counter(p["label"] for p in preds).most_common(1)[0][0]
        truth = next(l for l in ("negative", "neutral", "positive") if l != said)
        # the served model gets the pattern wrong; users correct one request per text
        for t in texts:
            rid = c.post("/v1/classify", json={"input": t}).json()["request_id"]
            assert c.post("/v1/feedback", json={"request_id": rid, "rating": "down",
                                                "corrected_label": truth}).status_code == 200
        d = retrain(run, db_url=f"sqlite:///{tmp_path / 'm.db'}")
        assert d["promoted"] and d["challenger_id"] == "v2", d
        assert d["challenger"]["feedback"] > d["champion"]["feedback"] and d["p_value"] <= 0.05
        assert wait_for_version(c, "v2")  # the running service picked up the promotion
        fresh = zorp_texts(60, 99)
        fresh = [t for t in fresh if t not in texts][:10]
        now = [r["label"] for r in c.post("/v1/classify", json={"input": fresh}).json()["results"]]
        assert Counter(now)[truth] >= 8  # the error is fixed on inputs nobody corrected
        info = c.get("/api/info").json()
        assert info["model_version"] == "v2" and info["events"][-1]["action"] == "promote"

        from tuneline.cli.serve import rollback

        rollback(run, to=None)
        assert Registry(run).champion == "v1"
        assert wait_for_version(c, "v1")
    data = json.loads((run / "registry.json").read_text())
    assert [v["id"] for v in data["versions"]] == ["v1", "v2"] and data["versions"][1]["decision"]["promoted"]
    v2 = run / "versions" / "v2"
    assert (v2 / "eval.json").exists() and (v2 / "audit.json").exists() and (v2 / "retrain.json").exists()
    rows = (run / "versions" / "v2-data" / "train.jsonl").read_text().splitlines()
    assert sum(truth in r and "zorp" in r for r in rows) == d["feedback_train_rows"]


def test_noise_feedback_is_not_promoted(run, tmp_path):
    rng = random.Random(5)
    texts = [r["text"] for r in synthetic_rows(60, 11)]
    texts = list(dict.fromkeys(texts))[:40]
    with client(run, tmp_path) as c:
        for t in texts:
            rid = c.post("/v1/classify", json={"input": t}).json()["request_id"]
            c.post("/v1/feedback", json={"request_id": rid, "corrected_label": rng.choice(["negative", "neutral", "positive"])})
        d = retrain(run, db_url=f"sqlite:///{tmp_path / 'm.db'}")
        assert not d["promoted"] and d["reasons"], d
        assert c.get("/health").json()["model_version"] == "v1"
    reg = Registry(run)
    assert reg.champion == "v1" and reg.read()["events"][-1]["action"] == "reject"


def test_too_little_feedback_is_a_clear_error(run, tmp_path):
    with client(run, tmp_path) as c:
        rid = c.post("/v1/classify", json={"input": "fine"}).json()["request_id"]
        c.post("/v1/feedback", json={"request_id": rid, "corrected_label": "neutral"})
        c.post("/v1/feedback", json={"request_id": rid, "rating": "up"})  # a rating alone is not a correction
    with pytest.raises(UserError, match="1 corrected feedback rows; retraining needs at least 5"):
        retrain(run, db_url=f"sqlite:///{tmp_path / 'm.db'}")
    assert not (run / "versions").exists()


def test_chat_run_learns_corrected_answers(tmp_path_factory, tiny_llama, tmp_path):
    """The same loop for a generate run: corrected answers become chat rows, judged by chrF."""
    run = Path(shutil.copytree(shared_generate_run(tmp_path_factory, tiny_llama), tmp_path / "run"))
    with client(run, tmp_path) as c:
        for w in ("pear", "mint", "fig", "kiwi", "lime", "date"):
            ask = {"messages": [{"role": "user", "content": f"what is the code for {w}"}], "max_tokens": 4}
            rid = c.post("/v1/chat/completions", json=ask).json()["id"]
            assert c.post("/v1/feedback", json={"request_id": rid, "corrected_answer": f"the code for {w} is zorp"}
                          ).status_code == 200
        rid = c.post("/v1/completions", json={"prompt": ["first", "second"], "max_tokens": 4}).json()["id"]
        c.post("/v1/feedback", json={"request_id": rid, "item": 1, "corrected_answer": "zorp"})
    d = retrain(run, db_url=f"sqlite:///{tmp_path / 'm.db'}", promote=False)
    assert d["metric"] == "chrf" and d["challenger_id"] == "v2" and not d["promoted"]
    assert d["feedback_train_rows"] + d["feedback_eval_rows"] == 7 and d["test_rows"] == 6
    data = run / "versions" / "v2-data"
    fixes = [json.loads(line) for f in ("feedback_train.jsonl", "feedback_eval.jsonl")
             for line in (data / f).read_text().splitlines()]
    assert {"messages": [{"role": "user", "content": "second"}, {"role": "assistant", "content": "zorp"}]} in fixes
    assert all(r["messages"][-1]["content"].endswith("zorp") for r in fixes)
    train_rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert all("messages" in r for r in train_rows)
    assert sum(r["messages"][-1]["content"].endswith("zorp") for r in train_rows) == d["feedback_train_rows"]


def test_metric_of_another_task_is_a_clear_error(run, tmp_path):
    with pytest.raises(UserError, match="retrain.metric: chrf does not apply to a classify run; use accuracy"):
        retrain(run, db_url=f"sqlite:///{tmp_path / 'm.db'}", overrides=["retrain.metric=chrf"])
