"""The service under faults: schemathesis against the live OpenAPI schema (no 5xx), a client that
leaves mid-stream, a flood of oversized bodies, kill -9 under load (no acknowledged row lost),
and the API key (required off loopback, never written to a log or the store).

Figures are printed (run with -s to see them): cases generated, faults injected, rows checked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tuneline.serve.app import ServeSettings, create_app
from tuneline.serve.schemas import Limits

from corpus_helpers import run_cli
from serve_helpers import LiveServer, free_port, shared_classify_run, shared_generate_run

MB = 1 << 20
KEY = "tl-test-key-" + uuid.uuid4().hex  # unique: a hit in a log can only be a leak


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory, tiny_bert):
    return shared_classify_run(tmp_path_factory, tiny_bert)


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, tiny_llama):
    return shared_generate_run(tmp_path_factory, tiny_llama)


def db_rows(db: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(db)  # a fresh connection: recovers the WAL like any reader after a crash
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# 1. schemathesis: every operation, valid and invalid inputs, never a 5xx


def _fuzz(url: str, examples_for, seed: int) -> dict:
    """Every operation of the live schema, positive then negative cases; returns the figures."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    session = requests.Session()
    figures = {"operations": 0, "cases": 0, "statuses": {}}
    for result in schema.get_all_operations():
        op = result.ok()
        figures["operations"] += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # a fixed seed: CI sees the same cases every run (a failure is reproducible, never flaky)
            @fixed_seed(seed)
            @given(case=op.as_strategy(mode))
            @settings(max_examples=examples_for(op), deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
            def check(case):
                response = case.call_and_validate(base_url=url, session=session, timeout=60,
                                                  checks=[not_a_server_error])
                figures["cases"] += 1
                key = f"{op.label} {response.status_code}"
                figures["statuses"][key] = figures["statuses"].get(key, 0) + 1

            try:
                check()
            except Unsatisfiable:  # no invalid request exists for an operation without inputs (GET /health)
                assert mode == GenerationMode.NEGATIVE
    return figures


@pytest.mark.parametrize("which", ["classify", "generate"])
def test_schemathesis_finds_no_server_error(which, cls_run, gen_run, tmp_path):
    run = cls_run if which == "classify" else gen_run
    # Few generated tokens: the fuzzing is about inputs, not answers.
    app = create_app(ServeSettings(run_dir=str(run), db_url=f"sqlite:///{tmp_path / 'monitor.db'}",
                                   limits=Limits(max_tokens=8), drift_interval=3600))
    model_ops = ("/v1/classify", "/v1/chat/completions", "/v1/completions", "/v1/feedback")
    with LiveServer(app) as server:
        figures = _fuzz(server.url, lambda op: 20 if op.path in model_ops else 5,
                        seed={"classify": 1, "generate": 2}[which])
        assert httpx.get(f"{server.url}/health").json()["queued"] == 0
    print(f"\nschemathesis {which}: {figures['cases']} cases over {figures['operations']} operations, "
          f"statuses {json.dumps(figures['statuses'], sort_keys=True)}")
    assert figures["operations"] >= 12 and figures["cases"] >= 150
    ok = sum(n for k, n in figures["statuses"].items() if k.endswith(" 200") and "POST /v1/" in k)
    assert ok > 0  # some generated bodies were valid and answered, not only refused


def test_the_5xx_schemathesis_found_stay_fixed(gen_run, tmp_path):
    """Found by fuzzing the generate service before the fixes (each was a 500, or a broken stream)."""
    from fastapi.testclient import TestClient

    app = create_app(ServeSettings(run_dir=str(gen_run), db_url=f"sqlite:///{tmp_path / 'm.db'}",
                                   limits=Limits(max_tokens=4)))
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    with TestClient(app) as c:
        # a temperature of 3e-50 overflowed the logits to inf (torch.multinomial failed): now greedy
        assert c.post("/v1/completions", json={"prompt": "events", "temperature": 3.35e-50}).status_code == 200
        # a stop string no token can spell made transformers' StopStringCriteria raise
        odd_stop = "\u00bf\u00a6\u00ad\U00025b93\x01<"
        assert c.post("/v1/completions", json={"prompt": "hi", "stop": odd_stop}).status_code == 200
        # lone surrogates (JSON \ud800) broke the tokenizer, and a stream's row (cut off mid-answer)
        for body in ({"prompt": "\ud83d"}, {**chat, "stream": True, "stop": "\ud800"},
                     {"messages": [{"role": "user", "content": "a \ud800 b"}], "stream": True}):
            r = c.post("/v1/completions" if "prompt" in body else "/v1/chat/completions",
                       content=json.dumps(body), headers={"content-type": "application/json"})  # ASCII escapes
            assert r.status_code == 422 and "unpaired surrogate" in r.json()["error"]["message"], r.text
        # an unparseable body now has the service's error shape, not FastAPI's bare {"detail"}
        r = c.post("/v1/completions", content=b'{"prompt": "\xff\xfe"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "error" in r.json()


def test_one_unwritable_row_fails_only_its_own_request(tmp_path):
    """The writer commits queued rows together; a row the database refuses (here a duplicate id)
    must not take the rows that shared its transaction down with it."""
    from concurrent.futures import Future

    from tuneline.serve.store import Store

    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    row = dict(endpoint="/v1/classify", model_version="v1", inputs=["x"], input_tokens=1, output=["a"], latency_ms=1.0)
    store.log_request(id="dup", **row)  # no writer thread: written through
    batch = []  # what the writer thread would take from its queue in one go
    store._put = lambda kind, r: batch.append((kind, r, Future()))
    for rid in ("ok-0", "dup", "ok-1", "ok-2"):
        store.log_request(id=rid, **row)
    store._write(batch)
    with pytest.raises(Exception, match="UNIQUE"):
        batch[1][2].result(timeout=0)
    assert [item[2].result(timeout=0) for i, item in enumerate(batch) if i != 1] == [None, None, None]
    store.close()
    stored = sorted(r[0] for r in db_rows(tmp_path / "m.db", "select id from requests"))
    assert stored == ["dup", "ok-0", "ok-1", "ok-2"]


# ---------------------------------------------------------------------------------------------
# 2. a client that disconnects mid-stream


def _cut_stream(url: str, payload: dict) -> str:
    """POST a streamed chat completion, read up to the first content chunk, close the socket."""
    body = json.dumps(payload).encode()
    s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    seen = b""
    while seen.count(b"data: ") < 2:  # the role chunk, then the first piece of the answer
        chunk = s.recv(4096)
        assert chunk, seen
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200")
    s.close()
    return seen.decode(errors="replace")


@pytest.mark.parametrize("continuous", [True, False], ids=["continuous-batching", "generate-per-stream"])
def test_client_leaving_mid_stream(gen_run, tmp_path, monkeypatch, continuous):
    """Each cut stream leaves one 499 row with the text sent so far; its generation stops early, the
    model thread is free again, and the requests around it are answered and recorded as usual.
    Both ways of generating: continuous batching, and one `generate` per stream (models whose
    cache continuous batching cannot handle)."""
    from tuneline.serve import continuous as batching

    db = tmp_path / "monitor.db"
    max_tokens = 200
    app = create_app(ServeSettings(run_dir=str(gen_run), db_url=f"sqlite:///{db}",
                                   limits=Limits(max_tokens=max_tokens), drift_interval=3600))
    served = app.state.served
    assert served.current.continuous
    served.current.continuous = continuous
    produced = []
    if continuous:
        original = batching.Ask.result

        def counting(self):
            out = original(self)
            if self.opts.max_new_tokens == max_tokens:  # the cut streams, not the short requests around them
                produced.append(out["completion_tokens"])
            return out

        monkeypatch.setattr(batching.Ask, "result", counting)
    else:
        original = served.generate_stream

        def counting(*args, **kwargs):
            results, version = original(*args, **kwargs)
            produced.append(results[0]["completion_tokens"])
            return results, version

        served.generate_stream = counting
    cuts, answered = 5, []
    ask = {"messages": [{"role": "user", "content": "what is the code for sky"}], "max_tokens": max_tokens,
           "stream": True}
    with LiveServer(app) as server:
        def steady():
            with httpx.Client(base_url=server.url, timeout=60) as c:
                for i in range(6):
                    r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": f"hi {i}"}],
                                                             "max_tokens": 4})
                    assert r.status_code == 200, r.text
                    answered.append(r.json()["id"])

        other = threading.Thread(target=steady)
        other.start()
        for _ in range(cuts):
            _cut_stream(server.url, ask)
        other.join()
        deadline = time.time() + 30
        while len(produced) < cuts:  # every cut generation has returned from the model thread
            assert time.time() < deadline, produced
            time.sleep(0.05)
        health = httpx.get(f"{server.url}/health").json()
        assert health["status"] == "ok" and health["queued"] == 0
        # a full stream still works afterwards, ends with [DONE], and its row is there
        with httpx.stream("POST", f"{server.url}/v1/chat/completions",
                          json={**ask, "max_tokens": 5}, timeout=60) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        full_id = json.loads(events[0][6:])["id"]
    print(f"\nmid-stream disconnects: {cuts} cut, tokens generated before stopping {produced}")
    assert all(n < max_tokens for n in produced), produced  # cancelled, not run to max_tokens
    rows = db_rows(db, "select id, status, output, error from requests")
    by_status: dict[int, list] = {}
    for r in rows:
        by_status.setdefault(r[1], []).append(r)
    assert len(by_status[499]) == cuts and len(rows) == cuts + len(answered) + 1
    for _, _, output, error in by_status[499]:
        assert "client closed the stream" in error and isinstance(json.loads(output)[0], str)
    assert {r[0] for r in by_status[200]} == set(answered) | {full_id}


# ---------------------------------------------------------------------------------------------
# A real server process (flood, kill -9, API key): off loopback, key required, access log on.


class ServerProcess:
    def __init__(self, run: Path, db: Path, log: Path):
        self.run, self.db, self.log = run, db, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TUNELINE_API_KEY": KEY}
        out = open(self.log, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneline", "serve", str(self.run), "--host", "0.0.0.0", "--port", str(self.port),
             "--db", f"sqlite:///{self.db}", "--log-level", "info", "--max-body-bytes", str(MB)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            assert time.time() < deadline, "server did not start"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def server(cls_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    s = ServerProcess(cls_run, folder / "monitor.db", folder / "server.log")
    s.start()
    yield s
    s.stop()


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


# ---------------------------------------------------------------------------------------------
# 3. a flood of oversized bodies


def _raw_post(port: int, head: bytes, body_parts) -> tuple[bytes, float]:
    """Send headers, stream the body from a thread (the server may stop reading), read the status line."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head)

    def pump():
        try:
            for part in body_parts:
                s.sendall(part)
        except OSError:  # the server answered and closed: the rest is not wanted
            pass

    sender = threading.Thread(target=pump, daemon=True)
    t0 = time.perf_counter()
    sender.start()
    s.settimeout(30)
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    elapsed = time.perf_counter() - t0
    s.close()
    sender.join(10)
    return data.split(b"\r\n")[0], elapsed


def test_flood_of_oversized_bodies(server):
    import psutil

    proc = psutil.Process(server.proc.pid)
    rss_before = proc.memory_info().rss
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\n")
    block = b"x" * MB
    statuses, times = [], []

    # 200 bodies of 4 MB (limit 1 MB) from 8 clients at once, through an ordinary HTTP client
    def client(n):
        with httpx.Client(timeout=30, headers=auth()) as c:
            for _ in range(n):
                t0 = time.perf_counter()
                r = c.post(f"{server.url}/v1/classify", content=block * 4)
                statuses.append(r.status_code)
                times.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 120 MB with no Content-Length (chunked), a lying small one, a lying large one, and a
    # client that asks first (Expect: 100-continue) and is never asked for its 150 MB
    chunked = [*(b"%x\r\n%s\r\n" % (MB, block) for _ in range(120)), b"0\r\n\r\n"]
    big = [
        _raw_post(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n", chunked),
        _raw_post(server.port, head + b"Content-Length: 100\r\n\r\n", (block for _ in range(8))),
        _raw_post(server.port, head + b"Content-Length: %d\r\n\r\n" % (150 * MB), [b'{"input": "']),
        _raw_post(server.port, head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (150 * MB), []),
    ]
    rss_after = proc.memory_info().rss
    print(f"\nflood: {len(statuses)} x 4 MB -> {sorted(set(statuses))} (slowest {max(times):.2f} s); "
          f"chunked 120 MB / lying 100 B / lying 150 MB / expect-continue -> "
          f"{[(b[0].decode(), round(b[1], 3)) for b in big]}; "
          f"server RSS {rss_before / MB:.0f} -> {rss_after / MB:.0f} MB")
    assert statuses == [413] * 200
    assert [b[0].split(b" ")[1] for b in big] == [b"413", b"422", b"413", b"413"]  # 100 B of JSON: invalid
    assert all(b[1] < 5 for b in big)
    assert rss_after - rss_before < 100 * MB  # nothing near the 1.3 GB sent was held
    r = httpx.post(f"{server.url}/v1/classify", json={"input": "still healthy"}, headers=auth(), timeout=30)
    assert r.status_code == 200


# ---------------------------------------------------------------------------------------------
# 4. kill -9 under load: every acknowledged request and feedback row is in the store


def test_kill9_loses_no_acknowledged_row(server):
    acked_requests, acked_feedback, failures = set(), set(), []
    lock, stop = threading.Lock(), threading.Event()

    def client(k):
        with httpx.Client(base_url=server.url, timeout=30, headers=auth()) as c:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    r = c.post("/v1/classify", json={"input": [f"client {k} item {i} was great", "okay thing"]})
                    if r.status_code != 200:
                        continue
                    rid = r.json()["request_id"]
                    with lock:
                        acked_requests.add(rid)
                    if i % 2:  # feedback on every other answer
                        note = f"fb-{uuid.uuid4().hex}"
                        f = c.post("/v1/feedback", json={"request_id": rid, "rating": "down", "comment": note,
                                                         "corrected_label": "neutral", "item": 1})
                        if f.status_code == 200:
                            with lock:
                                acked_feedback.add(note)
                except httpx.HTTPError as e:  # the server is gone: requests in flight fail
                    failures.append(type(e).__name__)
                    if stop.is_set() or server.proc.poll() is not None:
                        return

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while len(acked_requests) < 120 or len(acked_feedback) < 40:
        assert time.time() < deadline, (len(acked_requests), len(acked_feedback))
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGKILL)  # mid-traffic: 8 clients are posting right now
    assert server.proc.wait(30) == -signal.SIGKILL
    stop.set()
    for t in threads:
        t.join()
    with lock:
        requests_, feedback_ = set(acked_requests), set(acked_feedback)
    # after restart: the server opens the same store, and every acknowledged row is there
    server.start()
    assert httpx.post(f"{server.url}/v1/classify", json={"input": "after the crash"}, headers=auth(),
                      timeout=30).status_code == 200
    stored = {r[0] for r in db_rows(server.db, "select id from requests where status = 200")}
    notes = {r[0] for r in db_rows(server.db, "select comment from feedback")}
    integrity = db_rows(server.db, "pragma integrity_check")
    print(f"\nkill -9: {len(requests_)} acknowledged requests and {len(feedback_)} acknowledged feedback rows, "
          f"{len(failures)} requests cut by the kill; store after restart: {len(stored)} answered requests, "
          f"{len(notes)} feedback rows, integrity {integrity[0][0]}")
    assert integrity == [("ok",)]
    assert requests_ <= stored, f"{len(requests_ - stored)} acknowledged requests lost"
    assert feedback_ <= notes, f"{len(feedback_ - notes)} acknowledged feedback rows lost"


# ---------------------------------------------------------------------------------------------
# 5. the API key: required off loopback, never logged


def test_off_loopback_refuses_to_start_without_a_key(cls_run, capsys, monkeypatch):
    monkeypatch.delenv("TUNELINE_API_KEY", raising=False)
    t0 = time.perf_counter()
    code, _, err = run_cli(["serve", cls_run, "--host", "0.0.0.0"], capsys, monkeypatch)
    assert code == 2 and "TUNELINE_API_KEY" in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 5  # refused before the model loads


def test_api_key_required_and_never_logged(server):
    """Authorised and unauthorised calls to every kind of endpoint; afterwards the key is in no
    log line, no store row, no file the service wrote."""
    wrong = "Bearer " + KEY[:-4] + "xxxx"  # almost the key: must not be echoed either
    for path in ("/v1/classify", "/v1/feedback", "/v1/chat/completions"):
        assert httpx.post(f"{server.url}{path}", json={"input": "x"}).status_code == 401
        assert httpx.post(f"{server.url}{path}", json={"input": "x"},
                          headers={"Authorization": wrong}).status_code == 401
    for path in ("/metrics", "/api/info", "/api/traffic", "/v1/models"):
        assert httpx.get(f"{server.url}{path}").status_code == 401
        assert httpx.get(f"{server.url}{path}", headers=auth()).status_code == 200
    assert httpx.get(f"{server.url}/health").status_code == 200  # open: load balancers probe it
    ok = httpx.post(f"{server.url}/v1/classify", json={"input": f"my key is not {KEY[:8]}"}, headers=auth())
    assert ok.status_code == 200
    bad = httpx.post(f"{server.url}/v1/classify", content=b"{broken", headers=auth())
    assert bad.status_code == 422 and KEY not in bad.text
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}, headers={**auth(), "X-Debug": KEY})
    assert r.status_code == 400 and KEY not in r.text  # a classifier cannot complete text; the failure row is kept
    httpx.get(f"{server.url}/metrics", headers=auth())
    time.sleep(0.5)  # the access log is written after the response
    written = [server.log, *server.db.parent.glob("monitor.db*"), *server.run.rglob("*.log"),
               *server.run.rglob("*.json*")]
    assert server.log.read_text().count("POST /v1/classify") > 2  # the access log was on
    for path in written:
        assert KEY.encode() not in path.read_bytes() and wrong.split()[1].encode() not in path.read_bytes(), path


def test_report_ids_cannot_name_a_path(cls_run, tmp_path):
    """The only request field naming a file: a dashboard report id. Traversal gets 404, never a file."""
    (cls_run.parent / "secret.txt").write_text("top secret")
    app = create_app(ServeSettings(run_dir=str(cls_run), db_url=f"sqlite:///{tmp_path / 'm.db'}"))
    with LiveServer(app) as s:
        for run_id in ("run:..", "run:.", "run:", "run:..%2F..%2Fetc", "run:%2Fetc", "..%2Fsecret.txt",
                       "run:..%2Fsecret.txt", "v1%2F..%2F..", "v1%00", "run:%00", "%2E%2E", "run:~"):
            r = httpx.get(f"{s.url}/api/runs/{run_id}/report")
            assert r.status_code == 404 and "top secret" not in r.text, (run_id, r.status_code)
        assert httpx.get(f"{s.url}/api/runs/v1/report").status_code == 200
