"""/v1/feedback: thumbs up or down, a corrected label or answer, a comment, for an earlier request."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse

from ..ledger import Ledger
from ..model import ServedModel
from ..schemas import FeedbackRequest


def feedback_router(served: ServedModel, ledger: Ledger, protected: list) -> APIRouter:
    router = APIRouter(dependencies=protected)

    @router.post("/v1/feedback", tags=["feedback"])
    async def feedback(body: FeedbackRequest):
        """Thumbs up / down, a corrected label or answer, a comment, for one earlier request."""
        store = ledger.store
        # no flush needed: a request id reaches a client only after its row has committed
        req = await asyncio.to_thread(store.get_request, body.request_id)
        if req is None or req["status"] != 200:
            raise HTTPException(404, f"request_id {body.request_id!r}: no answered request with this id")
        if body.item >= max(req["n_inputs"], 1):
            return _invalid(f"item: {body.item} is out of range; the request had {req['n_inputs']} input(s)")
        problem = _label_problem(body.corrected_label, served.current.run.labels)
        if problem:
            return _invalid(problem)
        await ledger.acknowledged(store.log_feedback(
            request_id=body.request_id, item=body.item, rating=body.rating, corrected_label=body.corrected_label,
            corrected_answer=body.corrected_answer, comment=body.comment))
        return {"ok": True, "request_id": body.request_id}

    return router


def _label_problem(label: str | None, labels: list[str] | None) -> str | None:
    """Why a corrected label cannot be kept (the model has no labels, or not this one), or None."""
    if label is None:
        return None
    if not labels:
        return "corrected_label: this model generates answers; send corrected_answer"
    if label not in labels:
        return f"corrected_label: {label!r} is not a label of this model (labels: {', '.join(labels)})"
    return None


def _invalid(message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=422)
