"""The HTTP service around a run: classify, OpenAI-compatible chat and completions, feedback,
health, metrics, and the dashboard, with every request written to the monitoring store.

    app = create_app(ServeSettings(run_dir="runs/reviews"))     # tuneline serve runs it with uvicorn

`create_app` assembles the parts; the routes live in serve/routes/ (one router per concern), each
built from the parts it uses: the served model, the Answerer (model + micro-batcher + limits),
the Ledger (store + metrics + drift window), the registry watcher.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .answers import Answerer
from .background import RegistryWatcher, watch_drift
from .batcher import MicroBatcher
from .drift import DriftMonitor
from .guard import Guard, Metrics
from .handlers import add_error_handlers
from .ledger import Ledger
from .model import ServedModel
from .registry import Registry
from .routes.dashboard import dashboard_router
from .routes.feedback import feedback_router
from .routes.operations import operations_router
from .routes.predictions import predictions_router
from .schemas import Limits, request_models
from .store import Store, default_db_url
from .threads import ModelThreads

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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
    adapt_threads: bool = False              # the model's threads follow the free cores (serve/threads.py)

    def resolved_key(self) -> Optional[str]:
        return self.api_key if self.api_key is not None else (os.environ.get("TUNELINE_API_KEY") or None)


def check_bind(host: str, api_key: Optional[str]) -> None:
    """Off loopback the service must have a key: a model open to a network is open to anyone on it."""
    from ..errors import UserError

    if host not in LOOPBACK and not api_key:
        raise UserError(f"--host {host}: serving beyond this machine needs an API key; set TUNELINE_API_KEY "
                        "(clients send it as 'Authorization: Bearer KEY'), or keep the default 127.0.0.1")


def create_app(settings: ServeSettings) -> FastAPI:
    run_dir = Path(settings.run_dir)
    registry = Registry(run_dir)
    api_key = settings.resolved_key()
    check_bind(settings.host, api_key)
    store = Store(settings.db_url or default_db_url(run_dir), store_inputs=settings.store_inputs)
    champion = registry.champion
    served = ServedModel(champion, registry.path_of(champion))
    metrics = Metrics()
    metrics.model_info.labels(champion).set(1)
    batcher = MicroBatcher(served.run_batch, max_batch=settings.max_batch, max_wait_ms=settings.batch_wait_ms,
                           on_batch=metrics.batch_size.observe)
    drift = DriftMonitor(served, metrics)
    ledger = Ledger(store, metrics, drift)
    watcher = RegistryWatcher(registry, served, metrics, drift, settings.reload_interval)
    started = time.time()
    answerer = Answerer(served, batcher, settings.limits, on_step=metrics.decode_rows.observe)
    background = [watcher.run, lambda: watch_drift(drift, batcher, settings.drift_interval)]
    warm_up = answerer.warm_up
    if settings.adapt_threads and not answerer.chats:  # a run that chats keeps every core (serve/threads.py)
        threads = ModelThreads(batcher.run_on_model_thread, gauge=metrics.model_threads)
        background.append(threads.run)

        async def warm_up():  # the first count before the first request
            await threads.start()
            await answerer.warm_up()
    app = FastAPI(title="tuneline service", version="1",
                  lifespan=_lifespan(store, batcher, background, warm_up),
                  description="A fine-tuned model from a tuneline run: classify, OpenAI-compatible chat and "
                              "completions, feedback, health, metrics, dashboard.")
    app.state.served, app.state.store = served, store
    add_error_handlers(app, served, ledger)
    protected = [Depends(key_check(api_key))]
    routers = [predictions_router(answerer, ledger, request_models(settings.limits), started, protected),
               feedback_router(served, ledger, protected),
               operations_router(served, batcher, drift, watcher, metrics, started, protected),
               dashboard_router(served, registry, store, drift, batcher, settings, protected)]
    for router in routers:
        app.include_router(router)
    # app.routes holds an included router as one entry without a path: its routes are read from it
    known = {r.path for r in app.routes if hasattr(r, "path")} | {r.path for router in routers for r in router.routes}
    app.add_middleware(Guard, metrics=metrics, max_body_bytes=settings.max_body_bytes, known_paths=known)
    return app


def _lifespan(store: Store, batcher: MicroBatcher, background, warm_up):
    """Start the store's writer, the batcher and the background loops, and warm the model up
    before the first request; at shutdown, after uvicorn has stopped taking connections and
    waited for open requests, finish the batches still queued, then write every row before the
    process ends."""
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.start()
        batcher.start()
        await warm_up()
        tasks = [asyncio.create_task(loop()) for loop in background]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await batcher.close()
            store.close()
            print(f"tuneline serve: stopped; {store.written} monitoring rows written this session", flush=True)

    return lifespan


def key_check(api_key: Optional[str]):
    """The dependency of every protected route: the bearer token must be the key (if one is set)."""
    bearer = HTTPBearer(auto_error=False)

    # async: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per request
    async def require_key(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if api_key is None:
            return
        given = creds.credentials if creds else ""
        # constant-time: the comparison must not tell an attacker how much of a guess was right
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_key
