"""Errors are always answered as JSON, never as a crash; a failed model request gets its store row."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .ledger import Ledger, new_id
from .model import ServedModel

MODEL_ENDPOINTS = ("/v1/classify", "/v1/chat/completions", "/v1/completions")


def add_error_handlers(app: FastAPI, served: ServedModel, ledger: Ledger) -> None:
    def log_failure(request: Request, status: int, message: str) -> None:
        if request.url.path in MODEL_ENDPOINTS:
            ledger.failure(new_id("err"), request.url.path, served.current.id, status, message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message = validation_message(exc.errors())
        log_failure(request, 422, message)
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"},
                             "detail": [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}  # no echo of the input
                                        for e in exc.errors()]},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException is a subclass
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code >= 500 or exc.status_code == 400:
            log_failure(request, exc.status_code, str(exc.detail))
        return JSONResponse({"error": {"message": exc.detail, "type": "invalid_request_error"}},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        message = f"internal error: {type(exc).__name__}: {exc}"
        log_failure(request, 500, message)
        return JSONResponse({"error": {"message": message, "type": "server_error"}}, status_code=500)


def validation_message(errors: list[dict]) -> str:
    """One line naming each bad field: `input[2]: is empty; max_tokens: ...`."""
    parts = []
    for e in errors:
        if e["type"] == "json_invalid":
            parts.append(f"body: not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
            continue
        loc = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
