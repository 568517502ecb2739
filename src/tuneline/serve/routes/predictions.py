"""The model's endpoints: /v1/classify and the OpenAI-compatible chat, completions and models.

This module does not use `from __future__ import annotations`: the request bodies are classes
made per service (they carry its limits), and FastAPI reads each endpoint's annotations as objects.
"""

import time

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse

from ..answers import Answerer
from ..ledger import Ledger, new_id
from ..schemas import ChatRequest, CompletionRequest, RequestModels
from .streaming import StreamedCall, stream_response


def predictions_router(answerer: Answerer, ledger: Ledger, bodies: RequestModels, started: float,
                       protected: list) -> APIRouter:
    router = APIRouter(dependencies=protected)

    @router.post("/v1/classify", tags=["model"])
    async def classify(body: bodies.classify):
        """Label one text or many: label, score and all scores per text, model version, request id."""
        return await _classify(answerer, ledger, body.input)

    @router.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: bodies.chat):
        """OpenAI chat completions (stream: server-sent events); `model` must be the served one (GET /v1/models)."""
        return await _chat(answerer, ledger, body)

    @router.post("/v1/completions", tags=["openai"])
    async def completions(body: bodies.completion):
        """OpenAI completions: each prompt is answered as one user turn (the run's chat template)."""
        return await _complete(answerer, ledger, body)

    @router.get("/v1/models", tags=["openai"])
    async def models():
        return {"object": "list", "data": [{"id": answerer.served.name, "object": "model", "created": int(started),
                                            "owned_by": "tuneline"}]}

    return router


async def _classify(answerer: Answerer, ledger: Ledger, given) -> JSONResponse:
    if not answerer.classifies:
        raise HTTPException(400, f"this service serves a {answerer.served.current.task} run; "
                                 "use /v1/chat/completions")
    texts = [given] if isinstance(given, str) else given
    rid, t0 = new_id("cls"), time.perf_counter()
    preds, version = await answerer.classify(texts)
    await ledger.labels(rid, texts, preds, version, t0)
    out = {"id": rid, "request_id": rid, "object": "classification", "model": answerer.served.name,
           "model_version": version, "results": preds}
    if isinstance(given, str):
        out.update(label=preds[0]["label"], score=preds[0]["score"], scores=preds[0]["scores"])
    return JSONResponse(out, headers={"X-Request-ID": rid})


def _check_chat(answerer: Answerer, asked: str | None) -> None:
    """As the OpenAI API does: a model this service does not serve is a 404 naming the one it does,
    and a run that cannot chat (a classifier) says so instead of answering with a label."""
    name = answerer.served.name
    if asked is not None and asked != name:
        raise HTTPException(404, f"model {asked!r} is not served here; this service serves {name!r} (GET /v1/models)")
    if not answerer.chats:
        raise HTTPException(400, f"this service serves a {answerer.served.current.task} run: it labels text "
                                 "(POST /v1/classify) and cannot chat or complete text")


async def _chat(answerer: Answerer, ledger: Ledger, body: ChatRequest):
    _check_chat(answerer, body.model)
    conv, opts = body.conversation(), answerer.options(body)
    rid, t0, created = new_id("chatcmpl"), time.perf_counter(), int(time.time())
    user_text = conv[-1]["content"]
    if body.stream:
        call = StreamedCall(rid, created, "chat.completion.chunk", "/v1/chat/completions", answerer.served.name,
                            conv, user_text, t0)
        return stream_response(answerer, ledger, call, conv, opts)
    results, version = await answerer.answer([conv], opts)
    await ledger.answers(rid, "/v1/chat/completions", version, conv, results, t0, 1, [user_text])
    r = results[0]
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": answerer.served.name,
        "system_fingerprint": version,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": r["text"]},
                     "logprobs": None, "finish_reason": r["finish_reason"]}],
        "usage": _usage(results),
    }, headers={"X-Request-ID": rid})


async def _complete(answerer: Answerer, ledger: Ledger, body: CompletionRequest):
    _check_chat(answerer, body.model)
    prompts, opts = body.prompts(), answerer.options(body)
    rid, t0, created = new_id("cmpl"), time.perf_counter(), int(time.time())
    convs = [[{"role": "user", "content": p}] for p in prompts]
    if body.stream:
        if len(prompts) > 1:
            raise HTTPException(400, "stream: one prompt per streamed request")
        call = StreamedCall(rid, created, "text_completion", "/v1/completions", answerer.served.name, prompts,
                            prompts[0], t0)
        return stream_response(answerer, ledger, call, convs[0], opts)
    results, version = await answerer.answer(convs, opts)
    await ledger.answers(rid, "/v1/completions", version, prompts, results, t0, len(prompts), prompts)
    return JSONResponse({
        "id": rid, "object": "text_completion", "created": created, "model": answerer.served.name,
        "system_fingerprint": version,
        "choices": [{"index": i, "text": r["text"], "logprobs": None, "finish_reason": r["finish_reason"]}
                    for i, r in enumerate(results)],
        "usage": _usage(results),
    }, headers={"X-Request-ID": rid})


def _usage(results: list[dict]) -> dict:
    p = sum(r["prompt_tokens"] for r in results)
    c = sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
