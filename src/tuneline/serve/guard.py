"""What wraps every HTTP request: the body-size limit and the Prometheus metrics.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streamed
responses): it times each request to its last byte, so a streamed answer counts whole.
"""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The service's Prometheus series, in a registry of its own (one per app)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneline_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.errors = Counter("tuneline_request_errors", "HTTP requests answered with status >= 400",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram("tuneline_request_latency_seconds", "time to the last byte of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("tuneline_tokens", "tokens read (input) and generated (output)", ["kind"], registry=r)
        self.batch_size = Histogram("tuneline_batch_size", "inputs per model batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.decode_rows = Histogram("tuneline_decode_rows", "answers advanced by one decoding step (continuous batching)",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.model_threads = Gauge("tuneline_model_threads", "torch threads of the model (adapted to the free cores)",
                                   registry=r)
        self.in_flight = Gauge("tuneline_in_flight_requests", "requests being answered", registry=r)
        self.model_info = Gauge("tuneline_model_info", "1 for the version being served", ["version"], registry=r)
        self.drift_alert = Gauge("tuneline_drift_alert", "1 while a drift check is over its alert threshold",
                                 ["check"], registry=r)


class Guard:
    def __init__(self, app, metrics: Metrics, max_body_bytes: int, known_paths: set[str]):
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.known = known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.known else "other"  # bounded label values
        start = time.perf_counter()
        status = {"code": 500}
        m = self.metrics
        m.in_flight.inc()

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done()

        finished = {"done": False}

        def done():
            if finished["done"]:
                return
            finished["done"] = True
            code = str(status["code"])
            m.requests.labels(endpoint, code).inc()
            if status["code"] >= 400:
                m.errors.labels(endpoint, code).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - start)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                if _declared_length(scope) > self.max_body:
                    # Refused on the header alone: nothing of the body is read (and a client that
                    # sent `Expect: 100-continue` is never asked to send it).
                    await self._reject(send_wrapper)
                    return
                body, too_big = await self._read_body(receive)
                if too_big:
                    await self._reject(send_wrapper)
                    return
                receive = _replay(body, receive)
                scope = _as_json(scope)
            await self.app(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            done()

    async def _read_body(self, receive) -> tuple[bytes, bool]:
        # The body is read here once, up to the limit, so a chunked upload without a
        # Content-Length cannot grow past it either.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"", False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _reject(self, send) -> None:
        body = json.dumps({"error": {"message": f"request body over {self.max_body} bytes",
                                     "type": "invalid_request_error"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _declared_length(scope) -> int:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:  # the server's HTTP parser refuses these before we see them
                return 0
    return 0


def _replay(body: bytes, receive):
    sent = {"done": False}

    async def replay():
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _as_json(scope):
    """The API takes JSON only: a body sent as a form (`curl -d`, the default) or with no type is
    read as JSON too, instead of being refused."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    ctype = dict(scope["headers"]).get(b"content-type", b"")
    if ctype.startswith(b"application/json") or ctype.startswith(b"multipart/"):
        return scope
    return {**scope, "headers": headers + [(b"content-type", b"application/json")]}
