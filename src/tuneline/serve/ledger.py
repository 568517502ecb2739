"""What the service keeps of each request: its row in the monitoring store, the token counters
and the drift window. A client is answered only once its row has committed, so a request id a
client holds is always in the store (the commit-before-acknowledge promise).
"""

from __future__ import annotations

import time
import uuid

from fastapi import HTTPException

from .drift import DriftMonitor
from .guard import Metrics
from .store import Store


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class Ledger:
    def __init__(self, store: Store, metrics: Metrics, drift: DriftMonitor):
        self.store = store
        self.metrics = metrics
        self.drift = drift

    async def acknowledged(self, done) -> None:
        """Wait for a row's commit; a row that cannot be written fails its request with a 503."""
        try:
            await self.store.committed(done)
        except Exception as e:
            raise HTTPException(503, f"the monitoring store could not record this request ({type(e).__name__}); "
                                     "nothing was kept, try again") from None

    async def labels(self, rid: str, texts: list[str], preds: list[dict], version: str, t0: float) -> None:
        """A /v1/classify request; takes each prediction's "tokens" count out of it."""
        latency = (time.perf_counter() - t0) * 1000
        tokens = sum(p.pop("tokens") for p in preds)
        self.metrics.tokens.labels("input").inc(tokens)
        await self.acknowledged(self.store.log_request(
            id=rid, endpoint="/v1/classify", model_version=version, inputs=texts, input_tokens=tokens, output=preds,
            label=preds[0]["label"], confidence=preds[0]["score"], latency_ms=latency, n_inputs=len(texts)))
        self.drift.observe(texts, preds)

    async def answers(self, rid: str, endpoint: str, version: str, inputs, results: list[dict], t0: float,
                      n_inputs: int, drift_texts: list[str]) -> None:
        """A chat or completion request (streamed or not); results as the Answerer gives them."""
        latency = (time.perf_counter() - t0) * 1000
        n_in = sum(r["prompt_tokens"] for r in results)
        n_out = sum(r["completion_tokens"] for r in results)
        self.metrics.tokens.labels("input").inc(n_in)
        self.metrics.tokens.labels("output").inc(n_out)
        done = self.store.log_request(id=rid, endpoint=endpoint, model_version=version, inputs=inputs,
                                      input_tokens=n_in, output=[r["text"] for r in results],
                                      output_tokens=n_out, latency_ms=latency, n_inputs=n_inputs)
        self.drift.observe(drift_texts, None)
        await self.acknowledged(done)

    def failure(self, rid: str, endpoint: str, version: str, status: int, message: str, *, inputs=None,
                output=None, latency_ms: float = 0.0, n_inputs: int = 0) -> None:
        """A request that failed. Written in the background: nobody is told it exists, so nothing waits."""
        self.store.log_request(id=rid, endpoint=endpoint, model_version=version, inputs=inputs, input_tokens=None,
                               output=output, latency_ms=latency_ms, status=status, error=message[:2000],
                               n_inputs=n_inputs)
