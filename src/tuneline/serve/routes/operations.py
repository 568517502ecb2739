"""/health (open: load balancers probe it) and /metrics (Prometheus, behind the key)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..background import RegistryWatcher
from ..batcher import MicroBatcher
from ..drift import DriftMonitor
from ..guard import Metrics
from ..model import ServedModel


def operations_router(served: ServedModel, batcher: MicroBatcher, drift: DriftMonitor, watcher: RegistryWatcher,
                      metrics: Metrics, started: float, protected: list) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def health():
        report = drift.last_report or {}
        return {"status": "ok", "model_version": served.current.id, "task": served.current.task,
                "run": served.name, "uptime_s": round(time.time() - started, 1),
                "queued": batcher.in_flight, "reloading": watcher.reloading,
                "reload_error": watcher.last_error, "alerts": report.get("alerts", [])}

    @router.get("/metrics", dependencies=protected)
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
