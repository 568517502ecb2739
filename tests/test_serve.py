"""The service: classify, OpenAI-compatible endpoints (with the real `openai` client), feedback,
limits and validation, API key, metrics, micro-batching, the store, draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from tuneline.errors import UserError
from tuneline.serve.app import ServeSettings, create_app
from tuneline.serve.batcher import MicroBatcher
from tuneline.serve.schemas import Limits
from tuneline.serve.store import Store

from serve_helpers import LiveServer, free_port, shared_classify_run, shared_generate_run


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_bert):
    return shared_classify_run(tmp_path_factory, tiny_bert)


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, tiny_llama):
    return shared_generate_run(tmp_path_factory, tiny_llama)


def make_client(run, tmp_path, **kw):
    settings = ServeSettings(run_dir=str(run), db_url=f"sqlite:///{tmp_path / 'monitor.db'}", **kw)
    return TestClient(create_app(settings))


def rows(tmp_path, table="requests"):
    import sqlite3

    con = sqlite3.connect(tmp_path / "monitor.db")
    con.row_factory = sqlite3.Row
    out = [dict(r) for r in con.execute(f"select * from {table}")]
    con.close()
    return out


def test_classify_one_and_many_logged(cls_run, tmp_path):
    with make_client(cls_run, tmp_path) as c:
        one = c.post("/v1/classify", json={"input": "great product"})
        assert one.status_code == 200, one.text
        body = one.json()
        labels = json.loads((cls_run / "tuneline.json").read_text())["labels"]
        assert body["label"] in labels and 0 <= body["score"] <= 1 and set(body["scores"]) == set(labels)
        assert body["model_version"] == "v1" and body["request_id"] == one.headers["x-request-id"]
        many = c.post("/v1/classify", json={"input": ["awful thing", "okay item", "love it"]}).json()
        assert len(many["results"]) == 3 and "label" not in many
    stored = {r["id"]: r for r in rows(tmp_path)}
    assert set(stored) == {body["request_id"], many["request_id"]}
    r = stored[many["request_id"]]
    assert json.loads(r["input"]) == ["awful thing", "okay item", "love it"]
    assert r["n_inputs"] == 3 and r["model_version"] == "v1" and r["latency_ms"] > 0 and r["status"] == 200
    assert r["label"] == many["results"][0]["label"] and r["input_tokens"] > 3


@pytest.mark.parametrize("path,payload,needle", [
    ("/v1/classify", {"input": []}, "input is an empty list"),
    ("/v1/classify", {"input": ["ok"] * 9}, "limit is 8"),
    ("/v1/classify", {"input": "   "}, "input is empty"),
    ("/v1/classify", {"input": 5}, "input"),
    ("/v1/classify", {"text": "hi"}, "input: Field required"),
    ("/v1/chat/completions", {"messages": []}, "messages is empty"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000},
     "over the service's limit"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, "last message must be the user"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ("/v1/completions", {"prompt": "hi", "temperature": 7}, "temperature"),
    ("/v1/feedback", {"request_id": "x"}, "at least one of rating"),
])
def test_bad_input_is_422_with_a_message(cls_run, tmp_path, path, payload, needle):
    with make_client(cls_run, tmp_path, limits=Limits(max_inputs=8)) as c:
        r = c.post(path, json=payload)
        assert r.status_code == 422, r.text
        assert needle in r.json()["error"]["message"]
        assert c.post("/v1/classify", json={"input": "still alive"}).status_code == 200


def test_each_service_keeps_its_own_limits(cls_run, tmp_path):
    def service(name, limits):
        return TestClient(create_app(ServeSettings(run_dir=str(cls_run), db_url=f"sqlite:///{tmp_path / name}",
                                                   limits=limits)))

    texts = ["fine", "good", "bad"]
    with service("a.db", Limits(max_inputs=2)) as small, service("b.db", Limits(max_inputs=8)) as big:
        r = small.post("/v1/classify", json={"input": texts})
        assert r.status_code == 422 and "3 texts in one request; the limit is 2" in r.json()["error"]["message"]
        assert big.post("/v1/classify", json={"input": texts}).status_code == 200


def test_a_task_that_serves_nothing_is_refused(cls_run, tmp_path, monkeypatch):
    from tuneline.tasks.classify import ClassifyTask

    monkeypatch.setattr(ClassifyTask, "serves", ())
    with pytest.raises(UserError, match="a classify run has nothing to serve"):
        create_app(ServeSettings(run_dir=str(cls_run), db_url=f"sqlite:///{tmp_path / 'x.db'}"))


def test_bad_json_big_body_and_form_posts(cls_run, tmp_path):
    with make_client(cls_run, tmp_path, max_body_bytes=2048) as c:
        r = c.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and "not valid JSON" in r.json()["error"]["message"]
        r = c.post("/v1/classify", json={"input": "x" * 5000})
        assert r.status_code == 413 and "2048" in r.json()["error"]["message"]
        # `curl -d` sends a form content type; the body is JSON and is read as such
        r = c.post("/v1/classify", content=b'{"input": "fine"}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 200, r.text
    failed = [r for r in rows(tmp_path) if r["status"] != 200]
    assert [r["status"] for r in failed] == [422] and "not valid JSON" in failed[0]["error"]


def test_feedback_linked_and_checked(cls_run, tmp_path):
    with make_client(cls_run, tmp_path) as c:
        answer = c.post("/v1/classify", json={"input": ["meh", "great"]}).json()
        rid = answer["request_id"]
        ok = c.post("/v1/feedback", json={"request_id": rid, "rating": "down", "corrected_label": "neutral",
                                          "comment": "it is average", "item": 1})
        assert ok.status_code == 200, ok.text
        assert c.post("/v1/feedback", json={"request_id": "cls-nope", "rating": "up"}).status_code == 404
        bad = c.post("/v1/feedback", json={"request_id": rid, "corrected_label": "sideways"})
        assert bad.status_code == 422 and "not a label" in bad.json()["error"]["message"]
        assert c.post("/v1/feedback", json={"request_id": rid, "rating": "up", "item": 2}).status_code == 422
        assert c.post("/v1/feedback", json={"request_id": rid, "rating": "meh"}).status_code == 422
    fb = rows(tmp_path, "feedback")
    assert len(fb) == 1 and fb[0]["request_id"] == rid and fb[0]["corrected_label"] == "neutral"
    assert fb[0]["item"] == 1 and fb[0]["rating"] == "down" and fb[0]["comment"] == "it is average"
    # the summary pairs the correction with what the model said about item 1, not item 0
    from tuneline.serve.monitor import feedback_summary

    store = Store(f"sqlite:///{tmp_path / 'monitor.db'}")
    try:
        said = answer["results"][1]["label"]
        assert feedback_summary(store)["top_corrections"] == [{"predicted": said, "corrected": "neutral", "count": 1}]
    finally:
        store.close()


def test_health_metrics_openapi(cls_run, tmp_path):
    with make_client(cls_run, tmp_path) as c:
        for _ in range(3):
            c.post("/v1/classify", json={"input": "nice"})
        c.post("/v1/classify", json={"input": ""})
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["model_version"] == "v1" and h["task"] == "classify"
        m = c.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        text = m.text
        assert 'tuneline_requests_total{endpoint="/v1/classify",status="200"} 3.0' in text
        assert 'tuneline_request_errors_total{endpoint="/v1/classify",status="422"} 1.0' in text
        assert 'tuneline_request_latency_seconds_count{endpoint="/v1/classify"} 4.0' in text
        assert 'tuneline_tokens_total{kind="input"}' in text and 'tuneline_model_info{version="v1"} 1.0' in text
        schema = c.get("/openapi.json").json()
        assert {"/v1/classify", "/v1/chat/completions", "/v1/completions", "/v1/feedback"} <= set(schema["paths"])


def test_api_key_required_off_loopback(cls_run, tmp_path, monkeypatch):
    monkeypatch.delenv("TUNELINE_API_KEY", raising=False)
    with pytest.raises(UserError, match="TUNELINE_API_KEY"):
        create_app(ServeSettings(run_dir=str(cls_run), host="0.0.0.0", db_url=f"sqlite:///{tmp_path / 'x.db'}"))
    monkeypatch.setenv("TUNELINE_API_KEY", "s3cret-key")
    with make_client(cls_run, tmp_path, host="0.0.0.0") as c:
        assert c.get("/health").status_code == 200  # open: load balancers probe it
        assert c.post("/v1/classify", json={"input": "hi"}).status_code == 401
        assert c.post("/v1/classify", json={"input": "hi"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics").status_code == 401
        good = c.post("/v1/classify", json={"input": "hi"}, headers={"Authorization": "Bearer s3cret-key"})
        assert good.status_code == 200


def test_no_store_inputs_keeps_hash_only(cls_run, tmp_path):
    with make_client(cls_run, tmp_path, store_inputs=False) as c:
        rid = c.post("/v1/classify", json={"input": "private words"}).json()["request_id"]
    (r,) = rows(tmp_path)
    assert r["id"] == rid and r["input"] is None and len(r["input_hash"]) == 64 and r["output"]


def test_micro_batcher_groups_by_key_and_splits_results():
    calls = []

    def run_batch(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{x}" for x in items], "v9"

    async def main():
        b = MicroBatcher(run_batch, max_batch=6, max_wait_ms=50)
        b.start()
        jobs = [b.submit("a", [1, 2]), b.submit("b", [3]), b.submit("a", [4]), b.submit("a", [5, 6, 7])]
        out = await asyncio.gather(*jobs)
        await b.close()
        return out

    out = asyncio.run(main())
    assert out == [(["a:1", "a:2"], "v9"), (["b:3"], "v9"), (["a:4"], "v9"), (["a:5", "a:6", "a:7"], "v9")]
    assert calls[0] == ("a", [1, 2, 4, 5, 6, 7])  # three requests, one forward pass
    assert ("b", [3]) in calls and len(calls) == 2


def test_concurrent_requests_share_batches(cls_run, tmp_path):
    app = create_app(ServeSettings(run_dir=str(cls_run), db_url=f"sqlite:///{tmp_path / 'monitor.db'}",
                                   batch_wait_ms=20))
    with LiveServer(app) as server:
        def one(i):
            return httpx.post(f"{server.url}/v1/classify", json={"input": f"item {i} was great"}, timeout=30)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        text = httpx.get(f"{server.url}/metrics").text
    count = next(float(l.split()[-1]) for l in text.splitlines() if l.startswith("tuneline_batch_size_count"))
    assert count < 24  # fewer forward passes than requests
    assert len(rows(tmp_path)) == 24


def test_openai_client_against_live_service(gen_run, tmp_path):
    openai = pytest.importorskip("openai")
    app = create_app(ServeSettings(run_dir=str(gen_run), db_url=f"sqlite:///{tmp_path / 'monitor.db'}"))
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        name = gen_run.name  # what GET /v1/models lists
        with pytest.raises(openai.NotFoundError, match="this service serves"):  # as OpenAI answers an unknown model
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "what is the code for sky"}],
                                              max_tokens=5)
        assert chat.object == "chat.completion" and isinstance(chat.choices[0].message.content, str)
        assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens <= 5
        pieces = []
        stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "what is the code for coal"}],
                                                max_tokens=6, stream=True)
        finish = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert finish in ("stop", "length")
        again = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "what is the code for coal"}],
                                               max_tokens=6)
        assert "".join(pieces).strip() == again.choices[0].message.content  # greedy: stream == non-stream
        comp = client.completions.create(model=name, prompt=["what is the code for snow", "hi"], max_tokens=4)
        assert len(comp.choices) == 2 and comp.usage.prompt_tokens > 0
        streamed = list(client.completions.create(model=name, prompt="hello", max_tokens=3, stream=True))
        assert streamed[-1].choices[0].finish_reason in ("stop", "length")
        assert [m.id for m in client.models.list()] == [gen_run.name]
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model=name, messages=[], max_tokens=3)
        fb = httpx.post(f"{server.url}/v1/feedback", json={"request_id": chat.id, "rating": "down",
                                                            "corrected_answer": "the code for sky is blue"})
        assert fb.status_code == 200, fb.text
    stored = rows(tmp_path)
    ok = [r for r in stored if r["status"] == 200]
    assert len(ok) == 5 and {r["endpoint"] for r in ok} == {"/v1/chat/completions", "/v1/completions"}
    assert all(r["output_tokens"] is not None for r in ok)
    assert rows(tmp_path, "feedback")[0]["corrected_answer"] == "the code for sky is blue"


def test_sigterm_drains_every_request_into_the_store(cls_run, tmp_path):
    port = free_port()
    db = tmp_path / "drain.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "tuneline", "serve", str(cls_run), "--port", str(port),
                             "--db", f"sqlite:///{db}", "--batch-wait-ms", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "slow"
            time.sleep(0.3)
        answered, lock, stop = [], threading.Lock(), threading.Event()

        def client():
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.post(f"{url}/v1/classify", json={"input": "drain me please"})
                    except httpx.HTTPError:
                        return  # the server has stopped taking connections
                    if r.status_code == 200:
                        with lock:
                            answered.append(r.json()["request_id"])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        while len(answered) < 40:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown: exit status -SIGTERM
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "monitoring rows written this session" in log, log
        stop.set()
        for t in threads:
            t.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    store = Store(f"sqlite:///{db}")
    ids = {r["id"] for r in store.recent_requests(100_000) if r["status"] == 200}
    store.close()
    assert set(answered) <= ids and len(ids) == len(answered)


def test_a_classifier_says_it_cannot_chat(cls_run, tmp_path):
    with make_client(cls_run, tmp_path) as c:
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "great blender"}]})
        assert r.status_code == 400 and "cannot chat" in r.json()["error"]["message"]
        assert "POST /v1/classify" in r.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "great"}).status_code == 400
