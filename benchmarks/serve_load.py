"""Load test of `tuneline serve`: N concurrent clients for T seconds from another process.

    python benchmarks/serve_load.py runs/reviews                               # 50 clients, 30 s, /v1/classify
    python benchmarks/serve_load.py runs/reviews --data held_out.jsonl --client threads
    python benchmarks/serve_load.py runs/support --endpoint chat --clients 8 --stream --max-tokens 64 --compare-generate
    python benchmarks/serve_load.py runs/reviews --profile /tmp/serve.txt     # py-spy of the service under load

Starts the service as a subprocess (its own SQLite store in a temporary folder), waits for
/health, runs the clients (every client sends its next request when the last is answered, over
one keep-alive connection: asyncio tasks with httpx, or threads with httpx to see what a
client's own threads cost), stops the service with SIGTERM, and checks that the store holds
exactly one row per request sent. Prints requests/s, p50 / p95 / p99 latency, errors, rows in
the store; chat adds the first token's latency (streamed) and generated tokens/s (from the
store's token counts), and --compare-generate the rate of `load_run(run).generate` at batch
--clients on the same prompts in this process afterwards. --json writes the figures to a file.

Texts come from --data (JSONL rows with text, prompt or messages), else the run's test rows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def texts_of(path: Path) -> list[str]:
    texts = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "messages" in row:
            texts.append(next(m["content"] for m in row["messages"] if m["role"] == "user"))
        else:
            texts.append(row.get("text") or row.get("prompt") or next(v for v in row.values() if isinstance(v, str)))
    return texts


def run_test_rows(run: Path) -> Path:
    manifest = json.loads((run / "run.json").read_text())
    return run / "data" / "test.jsonl" if "test" in manifest.get("held_out", {}) else Path(manifest["data"]["test"]["path"])


class Tally:
    """What the clients saw; appended to from asyncio tasks or threads (list.append is atomic)."""

    def __init__(self):
        self.latencies, self.first_token, self.errors, self.sent, self.feedback = [], [], [], [], []


def request_of(args, texts):
    if args.endpoint == "classify":
        return "/v1/classify", lambda n: {"input": texts[n % len(texts)]}
    return "/v1/chat/completions", lambda n: {"messages": [{"role": "user", "content": texts[n % len(texts)]}],
                                               "max_tokens": args.max_tokens, "stream": args.stream}


def first_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    choice = json.loads(line[6:])["choices"][0]
    return bool(choice.get("delta", {}).get("content") or choice.get("text"))


FEEDBACK_EVERY = 0  # --feedback-every: rate every k-th answer (its row must reach the store too)


def feedback_of(n: int, rid: str | None) -> dict | None:
    if not FEEDBACK_EVERY or n % FEEDBACK_EVERY or not rid:
        return None
    return {"request_id": rid, "rating": "up" if n % (2 * FEEDBACK_EVERY) else "down"}


def count_feedback(r, tally: Tally) -> None:
    if r.status_code == 200:
        tally.feedback.append(1)
    else:
        tally.errors.append(f"feedback {r.status_code}: {r.text[:200]}")


async def async_client(url, path, body_of, deadline, tally: Tally, i: int, stream: bool):
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        n = i
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            tally.sent.append(1)
            try:
                if stream:
                    first, done = None, False
                    async with c.stream("POST", path, json=body_of(n)) as r:
                        async for line in r.aiter_lines():
                            if first is None and first_content(line):
                                first = time.perf_counter() - t0
                            done = done or line == "data: [DONE]"
                        ok = r.status_code == 200 and done
                    if first is not None:
                        tally.first_token.append(first)
                else:
                    r = await c.post(path, json=body_of(n))
                    ok = r.status_code == 200
                if ok:
                    tally.latencies.append(time.perf_counter() - t0)
                    if fb := feedback_of(n, r.headers.get("x-request-id")):
                        count_feedback(await c.post("/v1/feedback", json=fb), tally)
                else:
                    tally.errors.append(f"{r.status_code}: {r.text[:200] if not stream else ''}")
            except httpx.HTTPError as e:
                tally.errors.append(f"{type(e).__name__}: {e}")
            n += 1


def thread_client(url, path, body_of, deadline, tally: Tally, i: int):
    with httpx.Client(base_url=url, timeout=300) as c:
        n = i
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            tally.sent.append(1)
            try:
                r = c.post(path, json=body_of(n))
                if r.status_code == 200:
                    tally.latencies.append(time.perf_counter() - t0)
                    if fb := feedback_of(n, r.headers.get("x-request-id")):
                        count_feedback(c.post("/v1/feedback", json=fb), tally)
                else:
                    tally.errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                tally.errors.append(f"{type(e).__name__}: {e}")
            n += 1


def load(args, url, path, body_of) -> tuple[Tally, float]:
    tally = Tally()
    deadline = time.monotonic() + args.seconds
    t0 = time.perf_counter()
    if args.client == "threads":
        threads = [threading.Thread(target=thread_client, args=(url, path, body_of, deadline, tally, i))
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        async def all_clients():
            await asyncio.gather(*(async_client(url, path, body_of, deadline, tally, i, args.stream)
                                   for i in range(args.clients)))
        asyncio.run(all_clients())
    return tally, time.perf_counter() - t0


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {}
    ms = np.asarray(seconds) * 1000
    return {k: round(float(np.percentile(ms, q)), 1) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))} | \
        {"max": round(float(ms.max()), 1)}


def start_profile(pid: int, seconds: float, out: Path):
    """py-spy (pip install py-spy) on the service: which thread and function the samples fell in."""
    local = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen([str(local) if local.exists() else "py-spy", "record", "-p", str(pid), "-o", str(out), "--format", "raw",
                             "-d", str(int(seconds)), "-r", "200", "--threads", "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def summarise_profile(raw: Path, top: int = 25) -> str:
    """Share of samples per thread, and the functions they were in (self time)."""
    threads, own = Counter(), Counter()
    for line in raw.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        thread = frames[0].split(":")[-1].strip() or frames[0]
        threads[thread] += int(n)
        own[(thread, frames[-1])] += int(n)
    total = sum(threads.values()) or 1
    lines = ["samples per thread:"] + [f"  {v / total:6.1%}  {k}" for k, v in threads.most_common(8)]
    lines += ["functions (self):"] + [f"  {v / total:6.1%}  {t}: {f}" for (t, f), v in own.most_common(top)]
    return "\n".join(lines)


def generate_rate(run: Path, texts: list[str], batch: int, max_tokens: int) -> dict:
    """The model alone: load_run(run).generate at batch `batch` on the first `batch` prompts."""
    import tuneline

    loaded = tuneline.load_run(run)
    convs = [[{"role": "user", "content": t}] for t in texts[:batch]]
    loaded.generate(convs[:1], max_new_tokens=2)  # warm-up
    t0 = time.perf_counter()
    answers = loaded.generate(convs, batch_size=batch, max_new_tokens=max_tokens)
    wall = time.perf_counter() - t0
    tokens = sum(len(loaded.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"batch": batch, "tokens": tokens, "seconds": round(wall, 2), "tokens_per_s": round(tokens / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", type=Path, help="JSONL of inputs (text, prompt or messages); default: the run's test rows")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--endpoint", choices=["classify", "chat"], default="classify")
    ap.add_argument("--client", choices=["asyncio", "threads"], default="asyncio")
    ap.add_argument("--stream", action="store_true", help="chat: stream the answers (first-token latency)")
    ap.add_argument("--max-tokens", type=int, default=64, help="chat: tokens per answer")
    ap.add_argument("--feedback-every", type=int, default=0, metavar="K", help="rate every K-th answer (0: none)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=5)
    ap.add_argument("--threads", type=int, help="torch threads of the service (tuneline serve --threads)")
    ap.add_argument("--profile", type=Path, help="py-spy the service for the whole load; raw stacks here, summary printed")
    ap.add_argument("--compare-generate", action="store_true", help="chat: also time load_run(run).generate")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    if args.stream and (args.endpoint != "chat" or args.client != "asyncio"):
        ap.error("--stream is for --endpoint chat with the asyncio client")

    global FEEDBACK_EVERY
    FEEDBACK_EVERY = args.feedback_every
    texts = texts_of(args.data or run_test_rows(args.run)) or ["This is a test."]
    path, body_of = request_of(args, texts)
    tmp = Path(tempfile.mkdtemp(prefix="tuneline-load-"))
    db = tmp / "monitor.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "tuneline", "serve", str(args.run), "--port", str(port),
                               "--db", f"sqlite:///{db}", "--max-batch", str(args.max_batch),
                               "--batch-wait-ms", str(args.batch_wait_ms)]
                              + (["--threads", str(args.threads)] if args.threads else []),
                              stdout=log, stderr=subprocess.STDOUT)
    profiler = None
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the service did not start; see {tmp / 'serve.log'}")
            time.sleep(0.5)
        health = httpx.get(f"{url}/health").json()
        print(f"Serving {args.run} ({health['task']}, {health['model_version']}); {args.clients} {args.client} "
              f"clients for {args.seconds:.0f} s on {path}{' (streamed)' if args.stream else ''} ...", flush=True)
        if args.profile:
            profiler = start_profile(server.pid, args.seconds, args.profile)
        tally, wall = load(args, url, path, body_of)
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: drains and writes every row
        code = server.wait(timeout=120)
        log.close()
    con = sqlite3.connect(db)
    stored, stored_ok, out_tokens = con.execute(
        "select count(*), sum(status = 200), coalesce(sum(output_tokens), 0) from requests").fetchone()
    feedback_rows = con.execute("select count(*) from feedback").fetchone()[0]
    con.close()
    sent = len(tally.sent)
    batches = next((float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("tuneline_batch_size_count")), 0)
    out = {
        "run": str(args.run), "endpoint": path, "stream": args.stream, "client": args.client, "clients": args.clients,
        "texts": len(texts), "seconds": round(wall, 1), "requests_sent": sent, "answered_ok": len(tally.latencies),
        "errors": len(tally.errors), "requests_per_s": round(len(tally.latencies) / wall, 1),
        "latency_ms": percentiles(tally.latencies), "rows_in_store": stored, "ok_rows_in_store": stored_ok,
        "store_matches_sent": stored == sent, "feedback_sent": len(tally.feedback), "feedback_rows_in_store": feedback_rows,
        "server_exit": code, "cpu_count": os.cpu_count(),
        "threads": args.threads, "load_average_1m": round(os.getloadavg()[0], 1),
    }
    if args.endpoint == "classify":
        out["mean_batch_size"] = round(len(tally.latencies) / batches, 1) if batches else None
    else:
        out["generated_tokens"] = out_tokens
        out["generated_tokens_per_s"] = round(out_tokens / wall, 1)
        if args.stream:
            out["first_token_ms"] = percentiles(tally.first_token)
    if args.compare_generate and args.endpoint == "chat":
        out["generate_alone"] = generate_rate(args.run, texts, args.clients, args.max_tokens)
    print(json.dumps(out, indent=2))
    if tally.errors:
        print("first errors:", *tally.errors[:5], sep="\n  ")
    if profiler is not None:
        profiler.wait(timeout=60)
        if args.profile.exists():
            print(summarise_profile(args.profile))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if tally.errors or stored != sent or feedback_rows != len(tally.feedback):
        sys.exit(1)


if __name__ == "__main__":
    main()
