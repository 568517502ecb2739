"""Load test of `tuneline serve`: N concurrent clients for T seconds from another process.

    python benchmarks/serve_load.py runs/reviews                      # 50 clients, 60 s, /v1/classify
    python benchmarks/serve_load.py runs/support --endpoint chat --max-tokens 16

Starts the service as a subprocess (its own SQLite store in a temporary folder), waits for
/health, runs the clients (asyncio + httpx, one keep-alive connection each, every client
sends its next request when the last is answered), stops the service with SIGTERM, and
checks that the store holds exactly one row per request sent. Prints p50 / p90 / p99
latency, requests/s and errors; --json writes them to a file.
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
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def inputs_of(run: Path) -> list[str]:
    """Texts from the run's own test rows (any column named like a text), else a fixed few."""
    manifest = json.loads((run / "run.json").read_text())
    path = run / "data" / "test.jsonl" if "test" in manifest.get("held_out", {}) else Path(manifest["data"]["test"]["path"])
    texts = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if "messages" in row:
            texts.append(next(m["content"] for m in row["messages"] if m["role"] == "user"))
        else:
            texts.append(row.get("text") or row.get("prompt") or next(v for v in row.values() if isinstance(v, str)))
    return texts or ["This is a test."]


async def client(url: str, body_of, deadline: float, latencies: list, errors: list, sent: list, i: int):
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        n = i
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            sent.append(1)
            try:
                r = await c.post(path_of_endpoint, json=body_of(n))
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            n += 1


path_of_endpoint = "/v1/classify"


async def load(url: str, clients: int, seconds: float, body_of):
    latencies, errors, sent = [], [], []
    deadline = time.monotonic() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(client(url, body_of, deadline, latencies, errors, sent, i) for i in range(clients)))
    return latencies, errors, len(sent), time.perf_counter() - t0


def main() -> None:
    global path_of_endpoint
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--endpoint", choices=["classify", "chat"], default="classify")
    ap.add_argument("--max-tokens", type=int, default=16, help="chat: tokens per answer")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--batch-wait-ms", type=float, default=5)
    ap.add_argument("--threads", type=int, help="torch threads of the service (tuneline serve --threads)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    texts = inputs_of(args.run)
    if args.endpoint == "classify":
        path_of_endpoint = "/v1/classify"
        body_of = lambda n: {"input": texts[n % len(texts)]}
    else:
        path_of_endpoint = "/v1/chat/completions"
        body_of = lambda n: {"messages": [{"role": "user", "content": texts[n % len(texts)]}],
                             "max_tokens": args.max_tokens}

    tmp = Path(tempfile.mkdtemp(prefix="tuneline-load-"))
    db = tmp / "monitor.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "tuneline", "serve", str(args.run), "--port", str(port),
                               "--db", f"sqlite:///{db}", "--max-batch", str(args.max_batch),
                               "--batch-wait-ms", str(args.batch_wait_ms)]
                              + (["--threads", str(args.threads)] if args.threads else []), stdout=log, stderr=subprocess.STDOUT)
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
        print(f"Serving {args.run} ({health['task']}, {health['model_version']}); {args.clients} clients for "
              f"{args.seconds:.0f} s on {path_of_endpoint} ...", flush=True)
        latencies, errors, sent, wall = asyncio.run(load(url, args.clients, args.seconds, body_of))
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: drains and writes every row
        code = server.wait(timeout=120)
        log.close()
    con = sqlite3.connect(db)
    stored = con.execute("select count(*) from requests").fetchone()[0]
    stored_ok = con.execute("select count(*) from requests where status = 200").fetchone()[0]
    con.close()
    batches = next((float(l.split()[-1]) for l in metrics.splitlines() if l.startswith("tuneline_batch_size_count")), 0)
    lat = np.asarray(latencies) * 1000
    out = {
        "run": str(args.run), "endpoint": path_of_endpoint, "clients": args.clients, "seconds": round(wall, 1),
        "requests_sent": sent, "answered_ok": len(latencies), "errors": len(errors),
        "requests_per_s": round(len(latencies) / wall, 1),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p90": round(float(np.percentile(lat, 90)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(lat.max()), 1)} if len(lat) else {},
        "rows_in_store": stored, "ok_rows_in_store": stored_ok, "store_matches_sent": stored == sent,
        "mean_batch_size": round(len(latencies) / batches, 1) if batches else None,
        "server_exit": code, "cpu_count": os.cpu_count(), "threads": args.threads,
        "load_average_1m": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(out, indent=2))
    if errors:
        print("first errors:", *errors[:5], sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if errors or stored != sent:
        sys.exit(1)


if __name__ == "__main__":
    main()
