"""The HTTP service around a run: classify, OpenAI-compatible chat and completions, feedback,
health, metrics, and the dashboard, with every request written to the monitoring store.

    app = create_app(ServeSettings(run_dir="runs/reviews"))     # tuneline serve runs it with uvicorn
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import schemas
from .batcher import MicroBatcher
from .guard import Guard, Metrics
from .model import GenOptions, ServedModel
from .registry import Registry
from .schemas import ChatRequest, ClassifyRequest, CompletionRequest, FeedbackRequest, Limits
from .store import Store, default_db_url

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MODEL_ENDPOINTS = ("/v1/classify", "/v1/chat/completions", "/v1/completions")


@dataclass
class ServeSettings:
    run_dir: str
    host: str = "127.0.0.1"
    api_key: Optional[str] = None            # default: $TUNELINE_API_KEY
    db_url: Optional[str] = None             # default: sqlite in the run folder
    store_inputs: bool = True
    max_body_bytes: int = 1_000_000
    max_batch: int = 64                      # inputs per model batch (micro-batching)
    batch_wait_ms: float = 5.0               # how long a batch waits for company
    limits: Limits = field(default_factory=Limits)
    reload_interval: float = 2.0             # seconds between registry checks (hot reload)
    drift_interval: float = 15.0             # seconds between drift checks

    def resolved_key(self) -> Optional[str]:
        return self.api_key if self.api_key is not None else (os.environ.get("TUNELINE_API_KEY") or None)


def check_bind(host: str, api_key: Optional[str]) -> None:
    """Off loopback the service must have a key: a model open to a network is open to anyone on it."""
    from ..errors import UserError

    if host not in LOOPBACK and not api_key:
        raise UserError(f"--host {host}: serving beyond this machine needs an API key; set TUNELINE_API_KEY "
                        "(clients send it as 'Authorization: Bearer KEY'), or keep the default 127.0.0.1")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _error(status: int, message: str, kind: str = "invalid_request_error", **extra) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, **extra}}, status_code=status)


def create_app(settings: ServeSettings) -> FastAPI:
    run_dir = Path(settings.run_dir)
    registry = Registry(run_dir)
    api_key = settings.resolved_key()
    check_bind(settings.host, api_key)
    schemas.LIMITS = settings.limits
    store = Store(settings.db_url or default_db_url(run_dir), store_inputs=settings.store_inputs)
    champion = registry.champion
    served = ServedModel(champion, registry.path_of(champion))
    metrics = Metrics()
    metrics.model_info.labels(champion).set(1)
    batcher = MicroBatcher(_run_batch(served), max_batch=settings.max_batch, max_wait_ms=settings.batch_wait_ms,
                           on_batch=metrics.batch_size.observe)
    from .drift import DriftMonitor

    drift = DriftMonitor(served, metrics)
    state = {"started": time.time(), "reloading": False, "last_reload_error": None}

    async def lifespan(app: FastAPI):
        store.start()
        batcher.start()
        tasks = [asyncio.create_task(_watch_registry()), asyncio.create_task(_watch_drift())]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            # uvicorn has stopped taking connections and waited for open requests: finish the
            # batches still queued, then write every row before the process ends.
            await batcher.close()
            store.close()
            print(f"tuneline serve: stopped; {store.written} monitoring rows written this session", flush=True)

    async def _watch_registry():
        while True:
            await asyncio.sleep(settings.reload_interval)
            try:
                wanted = registry.champion
                if wanted != served.current.id:
                    state["reloading"] = True
                    path = registry.path_of(wanted)
                    old = await asyncio.to_thread(served.swap, wanted, path)
                    metrics.model_info.labels(old.id).set(0)
                    metrics.model_info.labels(wanted).set(1)
                    drift.reset()
                    print(f"tuneline serve: now serving {wanted} ({path}), was {old.id}", flush=True)
                state["last_reload_error"] = None
            except Exception as e:  # a half-copied version must not stop the service; it keeps the old one
                state["last_reload_error"] = f"{type(e).__name__}: {e}"
            finally:
                state["reloading"] = False

    async def _watch_drift():
        while True:
            await asyncio.sleep(settings.drift_interval)
            try:
                await batcher.run_on_model_thread(drift.update)  # the tokenizer is not thread-safe
            except Exception as e:
                drift.last_error = f"{type(e).__name__}: {e}"

    app = FastAPI(title="tuneline service", version="1", lifespan=lifespan,
                  description="A fine-tuned model from a tuneline run: classify, OpenAI-compatible chat and "
                              "completions, feedback, health, metrics, dashboard.")
    app.state.store, app.state.served, app.state.registry, app.state.batcher = store, served, registry, batcher
    app.state.drift, app.state.metrics, app.state.settings = drift, metrics, settings

    bearer = HTTPBearer(auto_error=False)

    def require_key(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if api_key is None:
            return
        given = creds.credentials if creds else ""
        # constant-time: the comparison must not tell an attacker how much of a guess was right
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    protected = [Depends(require_key)]

    # -- errors: always JSON, never a crash --------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            if e["type"] == "json_invalid":
                parts.append(f"body: not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
                continue
            loc = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
            parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
        message = "; ".join(parts)
        _log_failure(request, 422, message)
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"},
                             "detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}  # no echo of the input
                                        for e in exc.errors()]},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException is a subclass
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code >= 500 or exc.status_code == 400:
            _log_failure(request, exc.status_code, str(exc.detail))
        return JSONResponse({"error": {"message": exc.detail, "type": "invalid_request_error"}},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        message = f"internal error: {type(exc).__name__}: {exc}"
        _log_failure(request, 500, message)
        return _error(500, message, "server_error")

    def _log_failure(request: Request, status: int, message: str):
        # Failure rows are written in the background: nobody is told they exist, so nothing waits.
        if request.url.path in MODEL_ENDPOINTS:
            store.log_request(id=_new_id("err"), endpoint=request.url.path, model_version=served.current.id,
                              inputs=None, input_tokens=None, output=None, latency_ms=0.0, status=status,
                              error=message[:2000], n_inputs=0)

    # -- model endpoints -----------------------------------------------------------------------
    @app.post("/v1/classify", dependencies=protected, tags=["model"])
    async def classify(body: ClassifyRequest):
        """Label one text or many: label, score and all scores per text, model version, request id."""
        if served.current.task != "classify":
            raise HTTPException(400, "this service serves a generate run; use /v1/chat/completions")
        texts = [body.input] if isinstance(body.input, str) else body.input
        rid, t0 = _new_id("cls"), time.perf_counter()
        preds, version = await batcher.submit("classify", texts)
        latency = (time.perf_counter() - t0) * 1000
        tokens = sum(p.pop("tokens") for p in preds)
        metrics.tokens.labels("input").inc(tokens)
        await _acknowledged(store.log_request(id=rid, endpoint="/v1/classify", model_version=version, inputs=texts,
                                              input_tokens=tokens, output=preds, label=preds[0]["label"],
                                              confidence=preds[0]["score"], latency_ms=latency, n_inputs=len(texts)))
        drift.observe(texts, preds)
        out = {"id": rid, "request_id": rid, "object": "classification", "model": served.name,
               "model_version": version, "results": preds}
        if isinstance(body.input, str):
            out.update(label=preds[0]["label"], score=preds[0]["score"], scores=preds[0]["scores"])
        return JSONResponse(out, headers={"X-Request-ID": rid})

    async def _answers(conversations: list[list[dict]], opts: GenOptions) -> tuple[list[dict], str]:
        """Generate (generate runs) or label the last user turn (classify runs)."""
        if served.current.task == "generate":
            return await batcher.submit(opts, conversations)
        texts = [c[-1]["content"] for c in conversations]
        preds, version = await batcher.submit("classify", texts)
        return [{"text": p["label"], "finish_reason": "stop", "prompt_tokens": p.pop("tokens"),
                 "completion_tokens": 1, "label": p["label"], "score": p["score"]} for p in preds], version

    def _options(body) -> GenOptions:
        g = served.current.run.recipe.generate
        max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens or g.max_new_tokens
        return GenOptions(min(max_tokens, settings.limits.max_tokens),
                          g.temperature if body.temperature is None else body.temperature,
                          g.top_p if body.top_p is None else body.top_p, body.stops())

    async def _acknowledged(done) -> None:
        """Answer only once the row is committed: a request id a client holds is in the store."""
        try:
            await store.committed(done)
        except Exception as e:
            raise HTTPException(503, f"the monitoring store could not record this request ({type(e).__name__}); "
                                     "nothing was kept, try again") from None

    async def _record(rid, endpoint, version, inputs, results, t0, n_inputs, texts_for_drift):
        latency = (time.perf_counter() - t0) * 1000
        n_in = sum(r["prompt_tokens"] for r in results)
        n_out = sum(r["completion_tokens"] for r in results)
        metrics.tokens.labels("input").inc(n_in)
        metrics.tokens.labels("output").inc(n_out)
        first = results[0]
        done = store.log_request(id=rid, endpoint=endpoint, model_version=version, inputs=inputs, input_tokens=n_in,
                                 output=[r["text"] for r in results], label=first.get("label"),
                                 confidence=first.get("score"), output_tokens=n_out, latency_ms=latency,
                                 n_inputs=n_inputs)
        drift.observe(texts_for_drift, [r for r in results if "label" in r] or None)
        await _acknowledged(done)

    @app.post("/v1/chat/completions", dependencies=protected, tags=["openai"])
    async def chat_completions(body: ChatRequest):
        """OpenAI chat completions (stream: server-sent events). A classifier answers with the label."""
        conv, opts = body.conversation(), _options(body)
        rid, t0, created = _new_id("chatcmpl"), time.perf_counter(), int(time.time())
        user_text = conv[-1]["content"]
        if body.stream:
            return _stream(rid, created, "chat.completion.chunk", conv, opts, t0, "/v1/chat/completions",
                           conv, user_text)
        results, version = await _answers([conv], opts)
        await _record(rid, "/v1/chat/completions", version, conv, results, t0, 1, [user_text])
        r = results[0]
        return JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": served.name,
            "system_fingerprint": version,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r["text"]},
                         "logprobs": None, "finish_reason": r["finish_reason"]}],
            "usage": _usage(results),
        }, headers={"X-Request-ID": rid})

    @app.post("/v1/completions", dependencies=protected, tags=["openai"])
    async def completions(body: CompletionRequest):
        """OpenAI completions: each prompt is answered as one user turn (the run's chat template)."""
        prompts, opts = body.prompts(), _options(body)
        rid, t0, created = _new_id("cmpl"), time.perf_counter(), int(time.time())
        convs = [[{"role": "user", "content": p}] for p in prompts]
        if body.stream:
            if len(prompts) > 1:
                raise HTTPException(400, "stream: one prompt per streamed request")
            return _stream(rid, created, "text_completion", convs[0], opts, t0, "/v1/completions", prompts,
                           prompts[0])
        results, version = await _answers(convs, opts)
        await _record(rid, "/v1/completions", version, prompts, results, t0, len(prompts), prompts)
        return JSONResponse({
            "id": rid, "object": "text_completion", "created": created, "model": served.name,
            "system_fingerprint": version,
            "choices": [{"index": i, "text": r["text"], "logprobs": None, "finish_reason": r["finish_reason"]}
                        for i, r in enumerate(results)],
            "usage": _usage(results),
        }, headers={"X-Request-ID": rid})

    def _usage(results):
        p = sum(r["prompt_tokens"] for r in results)
        c = sum(r["completion_tokens"] for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _chunk(rid, created, obj, piece: Optional[str], finish: Optional[str], version: str, first=False):
        if obj == "chat.completion.chunk":
            delta = {} if piece is None else {"content": piece}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
        data = {"id": rid, "object": obj, "created": created, "model": served.name,
                "system_fingerprint": version, "choices": [choice]}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _stream(rid, created, obj, conv, opts: GenOptions, t0, endpoint, inputs, drift_text):
        """Server-sent events. The `[DONE]` event is the acknowledgement of a stream: it is sent only
        after the request's row has committed. A client that leaves before the answer is complete
        gets one row with status 499 and the text sent so far, and its generation stops."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        version = served.current.id
        cancel = threading.Event()

        async def events():
            if served.current.task == "generate":
                job = asyncio.ensure_future(batcher.run_on_model_thread(
                    served.generate_stream, conv, opts, lambda t: loop.call_soon_threadsafe(pieces.put_nowait, t),
                    cancel))
            else:
                job = asyncio.ensure_future(_answers([conv], opts))
            job.add_done_callback(lambda _: pieces.put_nowait(None))
            failure, recording, emitted = None, False, ""
            try:
                yield _chunk(rid, created, obj, "", None, version, first=True)
                held, stopped = "", False
                longest_stop = max((len(s) for s in opts.stop), default=0)
                while True:
                    piece = await pieces.get()
                    if piece is None:
                        break
                    if stopped:
                        continue
                    held += piece
                    if not emitted:
                        held = held.lstrip()
                    cut, stopped = _split_for_stop(held, opts.stop, longest_stop)
                    if cut:
                        emitted += cut
                        held = held[len(cut):]
                        yield _chunk(rid, created, obj, cut, None, version)
                results, version_done = await job
                r = results[0]
                # what the streamer held back (a possible stop-string start, the last word)
                rest = r["text"][len(emitted):] if r["text"].startswith(emitted) else ""
                if rest and not stopped:
                    emitted += rest
                    yield _chunk(rid, created, obj, rest, None, version_done)
                finish = "stop" if stopped else r["finish_reason"]
                yield _chunk(rid, created, obj, None, finish, version_done)
                # From here the answer is complete: its 200 row stands even if the client leaves now.
                recording = True
                await _record(rid, endpoint, version_done, inputs, results, t0, 1, [drift_text])
                yield "data: [DONE]\n\n"
            except (asyncio.CancelledError, GeneratorExit):  # the client closed the connection
                if not recording:
                    failure = (499, f"client closed the stream after {len(emitted)} characters")
                raise
            except Exception as e:
                message = e.detail if isinstance(e, HTTPException) else f"{type(e).__name__}: {e}"
                if not recording:
                    failure = (500, message)
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            finally:
                cancel.set()  # a generation still running for a client that left stops at its next token
                if not job.done():  # its outcome is no one's now; retrieve it so asyncio does not warn
                    job.add_done_callback(lambda j: j.cancelled() or j.exception())
                if failure:
                    store.log_request(id=rid, endpoint=endpoint, model_version=version, inputs=inputs,
                                      input_tokens=None, output=[emitted], latency_ms=(time.perf_counter() - t0) * 1000,
                                      status=failure[0], error=failure[1])

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"X-Request-ID": rid, "Cache-Control": "no-cache"})

    @app.get("/v1/models", dependencies=protected, tags=["openai"])
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": int(state["started"]),
                                            "owned_by": "tuneline"}]}

    # -- feedback ------------------------------------------------------------------------------
    @app.post("/v1/feedback", dependencies=protected, tags=["feedback"])
    async def feedback(body: FeedbackRequest):
        """Thumbs up / down, a corrected label or answer, a comment, for one earlier request."""
        # no flush needed: a request id reaches a client only after its row has committed
        req = await asyncio.to_thread(store.get_request, body.request_id)
        if req is None or req["status"] != 200:
            raise HTTPException(404, f"request_id {body.request_id!r}: no answered request with this id")
        if body.item >= max(req["n_inputs"], 1):
            return _error(422, f"item: {body.item} is out of range; the request had {req['n_inputs']} input(s)")
        labels = served.current.run.labels
        if body.corrected_label is not None:
            if not labels:
                return _error(422, "corrected_label: this model generates answers; send corrected_answer")
            if body.corrected_label not in labels:
                return _error(422, f"corrected_label: {body.corrected_label!r} is not a label of this model "
                                   f"(labels: {', '.join(labels)})")
        await _acknowledged(store.log_feedback(request_id=body.request_id, item=body.item, rating=body.rating,
                                               corrected_label=body.corrected_label,
                                               corrected_answer=body.corrected_answer, comment=body.comment))
        return {"ok": True, "request_id": body.request_id}

    # -- operations ----------------------------------------------------------------------------
    @app.get("/health", tags=["operations"])
    async def health():
        report = drift.last_report or {}
        return {"status": "ok", "model_version": served.current.id, "task": served.current.task,
                "run": served.name, "uptime_s": round(time.time() - state["started"], 1),
                "queued": batcher.in_flight, "reloading": state["reloading"],
                "reload_error": state["last_reload_error"], "alerts": report.get("alerts", [])}

    @app.get("/metrics", dependencies=protected, tags=["operations"])
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from .dashboard import add_dashboard

    add_dashboard(app, protected)
    known = {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(Guard, metrics=metrics, max_body_bytes=settings.max_body_bytes, known_paths=known)
    return app


def _split_for_stop(text: str, stops: tuple[str, ...], longest: int) -> tuple[str, bool]:
    """What can be sent now: up to a stop string (then stopped), else all but a tail that might
    still become the start of one."""
    if not stops:
        return text, False
    hits = [text.find(s) for s in stops if s in text]
    if hits:
        return text[:min(hits)], True
    keep = 0
    for k in range(1, min(longest, len(text)) + 1):
        if any(s.startswith(text[-k:]) for s in stops):
            keep = k
    return text[:len(text) - keep], False


def _run_batch(served: ServedModel):
    def run(key, items):
        if key == "classify":
            return served.classify(items)
        return served.generate(key, items)

    return run
