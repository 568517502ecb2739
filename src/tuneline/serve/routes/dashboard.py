"""The dashboard: one static page (serve/static/dashboard.html) and the JSON it reads.

The page itself holds no data, so it is open; everything it shows comes from /api/*,
behind the same API key as the model endpoints (the page asks for the key on a 401).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse

from ..batcher import MicroBatcher
from ..drift import DriftMonitor
from ..model import ServedModel
from ..monitor import feedback_summary, traffic_summary
from ..registry import Registry
from ..store import Store

if TYPE_CHECKING:
    from ..app import ServeSettings

STATIC = Path(__file__).parent.parent / "static"


def _metrics_of(folder: Path) -> dict:
    f = folder / "eval.json"
    if not f.exists():
        return {}
    data = json.loads(f.read_text())
    num = lambda d: {k: v for k, v in (d or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"tuned": num(data.get("tuned")), "baseline": num(data.get("baseline")), "n": data.get("n")}


def list_runs(registry) -> list[dict]:
    """The versions of the served run, then the other finished runs beside it (runs/*)."""
    data = registry.read()
    out, seen = [], set()
    for v in data["versions"]:
        folder = (registry.root / v["path"]).resolve()
        seen.add(folder)
        out.append({"id": v["id"], "name": f"{registry.root.name} {v['id']}", "kind": "version",
                    "champion": v["id"] == data["champion"],
                    "source": v["source"] + (f" ({v['objective']})" if v.get("objective") else ""),
                    "created": v["created"],
                    "metrics": _metrics_of(folder), "has_report": (folder / "report.html").exists(),
                    "decision": v.get("decision")})
    parent = registry.root.resolve().parent
    for folder in sorted(p for p in parent.iterdir() if p.is_dir()):
        if folder.resolve() in seen or not (folder / "tuneline.json").exists():
            continue
        info = json.loads((folder / "tuneline.json").read_text())
        out.append({"id": f"run:{folder.name}", "name": folder.name, "kind": "run", "champion": False,
                    "source": info.get("task"), "created": folder.stat().st_mtime,
                    "metrics": _metrics_of(folder), "has_report": (folder / "report.html").exists()})
    return out


def _report_path(registry, run_id: str) -> Path:
    # Only folders the listing shows: an id never becomes a free path.
    if run_id.startswith("run:"):
        name = run_id[4:]
        folder = registry.root.resolve().parent / name
        if "/" in name or name in ("", ".", "..") or not (folder / "tuneline.json").exists():
            raise HTTPException(404, f"no run {name!r}")
    else:
        try:
            folder = registry.path_of(run_id)
        except Exception:
            raise HTTPException(404, f"no version {run_id!r}") from None
    report = folder / "report.html"
    if not report.exists():
        raise HTTPException(404, f"{run_id}: no report.html")
    return report


def dashboard_router(served: ServedModel, registry: Registry, store: Store, drift_monitor: DriftMonitor,
                     batcher: MicroBatcher, settings: ServeSettings, protected: list) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    @router.get("/api/info", dependencies=protected, tags=["dashboard"])
    async def info():
        v = served.current
        reg = registry.read()
        return {"run": served.name, "task": v.task, "serves": list(v.serves), "labels": v.run.labels,
                "model_version": v.id,
                "base_model": v.run.info.get("base_model"), "method": v.run.info.get("method"),
                "champion": reg["champion"], "events": reg["events"][-20:],
                "limits": settings.limits.model_dump(), "store_inputs": settings.store_inputs}

    @router.get("/api/runs", dependencies=protected, tags=["dashboard"])
    async def runs():
        return await asyncio.to_thread(list_runs, registry)

    @router.get("/api/runs/{run_id}/report", dependencies=protected, tags=["dashboard"], response_class=HTMLResponse)
    async def report(run_id: str):
        return HTMLResponse(_report_path(registry, run_id).read_text(encoding="utf-8"))

    @router.get("/api/traffic", dependencies=protected, tags=["dashboard"])
    async def traffic(minutes: float = Query(60, gt=0, le=10_080)):
        return await asyncio.to_thread(traffic_summary, store, time.time() - minutes * 60)

    @router.get("/api/feedback", dependencies=protected, tags=["dashboard"])
    async def feedback(limit: int = Query(50, ge=1, le=500)):
        await asyncio.to_thread(store.flush)
        v = served.current  # "next_retrain": what `tuneline retrain` would learn from now
        return await asyncio.to_thread(feedback_summary, store, limit, v.task, v.run.recipe.retrain)

    @router.get("/api/drift", dependencies=protected, tags=["dashboard"])
    async def drift(refresh: bool = False):  # the name is the OpenAPI operation's
        if refresh or drift_monitor.last_report is None:
            # on the model thread: the tokenizer is not safe to share between threads
            return await batcher.run_on_model_thread(drift_monitor.update)
        return drift_monitor.last_report

    return router
