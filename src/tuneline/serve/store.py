"""The monitoring store: every request and every feedback row, in SQLite (WAL) or any SQLAlchemy URL.

Writes go through one background thread that inserts whatever has queued up in a single
transaction (group commit): SQLite sees one writer, and `close()` drains the queue, so a clean
shutdown loses no row. Each write returns a future that resolves once its transaction has
committed; the service answers a request only after that (`await store.committed(fut)`), so a
row the client was told about survives a kill -9 of the process. WAL with synchronous=NORMAL
makes a commit durable against a process crash (the WAL is written before the commit returns);
a power cut may lose the last commits, which only synchronous=FULL (an fsync per commit) would keep.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlalchemy import (Column, Float, ForeignKey, Integer, MetaData, String, Table, Text, create_engine, event,
                        func, insert, select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from ..errors import UserError

metadata = MetaData()

requests_table = Table(
    "requests", metadata,
    Column("id", String(64), primary_key=True),
    Column("created", Float, nullable=False, index=True),
    Column("endpoint", String(32), nullable=False),
    Column("model_version", String(32), nullable=False),
    Column("n_inputs", Integer, nullable=False),
    Column("input", Text),                     # JSON; NULL with --no-store-inputs
    Column("input_hash", String(64), nullable=False),
    Column("input_tokens", Integer),           # kept without inputs too: length drift still works
    Column("output", Text),                    # JSON
    Column("label", String(200)),              # classify: first (or only) input's label
    Column("confidence", Float),
    Column("output_tokens", Integer),
    Column("latency_ms", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("error", Text),
)

feedback_table = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("requests.id"), nullable=False, index=True),
    Column("created", Float, nullable=False),
    Column("item", Integer, nullable=False, default=0),   # which input of a multi-input request
    Column("rating", String(8)),                          # up | down
    Column("corrected_label", String(200)),
    Column("corrected_answer", Text),
    Column("comment", Text),
)


def default_db_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'monitor.db'}"


def hash_input(obj: Any) -> str:
    # surrogatepass: a lone surrogate that slipped through must not turn logging into a crash
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):
                # WAL: readers (monitor, dashboard) never block the writer, and commits are cheap.
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        else:
            engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(engine)
    except Exception as e:  # a bad URL or an unreachable server is the user's to fix
        raise UserError(f"--db {url!r}: cannot open the monitoring store: {type(e).__name__}: {e}") from None
    return engine


class Store:
    """Queued writes from the service; plain reads for monitor, dashboard and retrain."""

    def __init__(self, url: str, store_inputs: bool = True):
        self.url = url
        self.store_inputs = store_inputs
        self.engine = make_engine(url)
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._closed = False
        self.written = 0

    # -- writing (service) -------------------------------------------------
    def start(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="tuneline-store", daemon=True)
            self._writer.start()

    def log_request(self, *, id: str, endpoint: str, model_version: str, inputs: Any, input_tokens: int | None,
                    output: Any, label: str | None = None, confidence: float | None = None,
                    output_tokens: int | None = None, latency_ms: float, status: int = 200,
                    error: str | None = None, n_inputs: int = 1) -> Future:
        row = {
            "id": id, "created": time.time(), "endpoint": endpoint, "model_version": model_version,
            "n_inputs": n_inputs, "input": json.dumps(inputs, ensure_ascii=False) if self.store_inputs else None,
            "input_hash": hash_input(inputs), "input_tokens": input_tokens,
            "output": json.dumps(output, ensure_ascii=False) if output is not None else None,
            "label": label, "confidence": confidence, "output_tokens": output_tokens,
            "latency_ms": latency_ms, "status": status, "error": error,
        }
        return self._put("request", row)

    def log_feedback(self, *, request_id: str, item: int, rating: str | None, corrected_label: str | None,
                     corrected_answer: str | None, comment: str | None) -> Future:
        return self._put("feedback", {"request_id": request_id, "created": time.time(), "item": item,
                                      "rating": rating, "corrected_label": corrected_label,
                                      "corrected_answer": corrected_answer, "comment": comment})

    def _put(self, kind: str, row: dict) -> Future:
        """Queue one row; the future is done when its transaction has committed (or failed)."""
        if self._closed:
            raise RuntimeError("the store is closed")
        done: Future = Future()
        if self._writer is None:
            self._insert([(kind, row, done)])  # no writer thread (tests, CLI): write through
            done.set_result(None)
        else:
            self._queue.put((kind, row, done))
        return done

    @staticmethod
    async def committed(done: Future) -> None:
        """Wait (without blocking the event loop) until a logged row is in the database."""
        await asyncio.wrap_future(done)

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < 500:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()
            if stop:
                self._queue.task_done()
                return

    def _write(self, batch) -> None:
        """Commit a batch and resolve its futures. If the batch fails, rows go in one by one, so
        one bad row fails only its own request, not the others that shared its transaction."""
        try:
            self._insert_retrying(batch)
        except Exception:
            for item in batch:
                try:
                    self._insert_retrying([item])
                except Exception as e:
                    item[2].set_exception(e)
                    print(f"tuneline serve: could not write a monitoring row ({item[0]} "
                          f"{item[1].get('id') or item[1].get('request_id')}): {type(e).__name__}: {e}", flush=True)
                else:
                    item[2].set_result(None)
            return
        for item in batch:
            item[2].set_result(None)

    def _insert_retrying(self, batch, attempts: int = 4) -> None:
        for attempt in range(attempts):
            try:
                self._insert(batch)
                return
            except OperationalError:  # a locked database or a dropped connection: try again, then give up
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def _insert(self, batch) -> None:
        # Requests before feedback: feedback rows point at requests, possibly in this batch.
        reqs = [row for kind, row, _ in batch if kind == "request"]
        fbs = [row for kind, row, _ in batch if kind == "feedback"]
        with self.engine.begin() as conn:
            if reqs:
                conn.execute(insert(requests_table), reqs)
            if fbs:
                conn.execute(insert(feedback_table), fbs)
        self.written += len(batch)

    def flush(self) -> None:
        """Wait until everything queued so far is in the database."""
        if self._writer is not None:
            self._queue.join()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # first: a write arriving now is refused, not queued behind the end marker
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self.engine.dispose()

    # -- reading -------------------------------------------------------------
    def request_exists(self, request_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(requests_table.c.id).where(requests_table.c.id == request_id)).first() is not None

    def get_request(self, request_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(requests_table).where(requests_table.c.id == request_id)).mappings().first()
        return dict(row) if row else None

    def count_requests(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(requests_table)).scalar_one()

    def recent_requests(self, limit: int, since: float | None = None) -> list[dict]:
        q = select(requests_table).order_by(requests_table.c.created.desc()).limit(limit)
        if since is not None:
            q = q.where(requests_table.c.created >= since)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def request_stats(self, since: float | None = None) -> list[dict]:
        """Per endpoint and model version: count, errors, latencies (for percentiles)."""
        q = select(requests_table.c.endpoint, requests_table.c.model_version, requests_table.c.status,
                   requests_table.c.latency_ms, requests_table.c.created)
        if since is not None:
            q = q.where(requests_table.c.created >= since)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def feedback_rows(self, limit: int | None = None) -> list[dict]:
        """Feedback joined with its request (input, output, label), newest first."""
        r, f = requests_table, feedback_table
        q = (select(f, r.c.input, r.c.output, r.c.endpoint, r.c.model_version, r.c.label.label("predicted_label"),
                    r.c.confidence, r.c.n_inputs)
             .join(r, r.c.id == f.c.request_id).order_by(f.c.id.desc()))
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [dict(x) for x in conn.execute(q).mappings()]
