"""Commands of the deploy-monitor-retrain loop: serve, monitor, retrain, rollback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .app import app


@app.command(epilog="Example:  tuneline serve runs/reviews --port 8000   (then open http://127.0.0.1:8000/)")
def serve(
    run: Path = typer.Argument(..., help="run folder (its registry's champion version is served)"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback needs TUNELINE_API_KEY"),
    port: int = typer.Option(8000, help="TCP port"),
    db: Optional[str] = typer.Option(None, "--db", metavar="URL", help="monitoring store: SQLAlchemy URL (default: sqlite RUN/monitor.db)"),
    no_store_inputs: bool = typer.Option(False, "--no-store-inputs", help="store only a hash of each input"),
    max_batch: int = typer.Option(64, min=1, help="inputs per model batch (micro-batching)"),
    batch_wait_ms: float = typer.Option(5.0, min=0, help="how long a batch waits for more requests"),
    max_tokens: int = typer.Option(512, min=1, help="cap on generated tokens per answer"),
    max_inputs: int = typer.Option(64, min=1, help="cap on texts per classify request / prompts per completion"),
    max_body_bytes: int = typer.Option(1_000_000, min=1024, help="cap on a request body"),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads for the model (default: a classifier's "
                                          "follow the cores other processes leave free, measured every 5 s; "
                                          "a chat model's are every core)"),
    log_level: str = typer.Option("warning", help="uvicorn log level (info logs every request)"),
):
    """Serve a run: /v1/classify, OpenAI-compatible /v1/chat/completions and /v1/completions, /v1/feedback,
    /health, /metrics, and the dashboard at /."""
    import uvicorn

    from ..serve.app import ServeSettings, check_bind, create_app
    from ..serve.schemas import Limits

    settings = ServeSettings(run_dir=str(run), host=host, db_url=db, store_inputs=not no_store_inputs,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_body_bytes=max_body_bytes,
                             limits=Limits(max_tokens=max_tokens, max_inputs=max_inputs), adapt_threads=not threads)
    check_bind(host, settings.resolved_key())  # before the model loads: a refusal should be instant
    if threads:
        import torch

        torch.set_num_threads(threads)
    app = create_app(settings)
    served = app.state.served
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(f"Serving {run} version {served.current.id} ({served.current.task}) at {url}\n"
          f"  dashboard {url}/   API docs {url}/docs   store {app.state.store.url}"
          + ("   (API key required)" if settings.resolved_key() else ""), flush=True)
    # SIGTERM / Ctrl-C: uvicorn stops accepting, lets open requests finish (up to 30 s), then the
    # app's shutdown drains the batcher and writes every queued row.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30)


@app.command()
def monitor(
    run: Path = typer.Argument(..., help="run folder"),
    db: Optional[str] = typer.Option(None, "--db", metavar="URL", help="monitoring store URL (default: sqlite RUN/monitor.db)"),
    hours: Optional[float] = typer.Option(None, help="traffic of the last N hours only"),
    no_drift: bool = typer.Option(False, "--no-drift", help="skip the drift check (it loads the model)"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Traffic, drift and feedback summary from the monitoring store."""
    from ..serve.monitor import offline_drift, summary
    from ..serve.registry import Registry
    from ..serve.store import Store, default_db_url

    registry = Registry(run)
    url = db or default_db_url(run)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        raise UserError(f"{run}: no monitoring store at {url}; serve the run first (tuneline serve {run})")
    store = Store(url)
    try:
        out = summary(store, time.time() - hours * 3600 if hours else None)
        out["champion"] = registry.champion
        out["versions"] = [{"id": v["id"], "source": v["source"], "test_metrics": v["test_metrics"],
                            "decision": v.get("decision")} for v in registry.read()["versions"]]
        if not no_drift:
            from ..inference import load_run

            loaded = load_run(registry.champion_path())
            out["drift"] = offline_drift(loaded, registry.champion, registry.champion_path(), store)
    finally:
        store.close()
    if as_json:
        print(json.dumps(out, indent=2, ensure_ascii=False, default=str))
    else:
        print(format_monitor(out))


def format_monitor(s: dict) -> str:
    t, f = s["traffic"], s["feedback"]
    lat = t["latency_ms"]
    lines = [f"Serving version {s['champion']}  (versions: {', '.join(v['id'] for v in s['versions'])})", "",
             "Traffic",
             f"  requests {t['requests']}   errors {t['errors']}   latency p50 {lat['p50']} ms  p95 {lat['p95']} ms  "
             f"p99 {lat['p99']} ms" + (f"   {t['requests_per_s']} req/s" if t["requests_per_s"] else "")]
    for row in t["by_endpoint_version"]:
        lines.append(f"    {row['key']:<34} {row['requests']:>8} requests  {row['errors']:>5} errors")
    lines += ["", "Feedback",
              f"  {f['total']} rows: {f['up']} up, {f['down']} down, {f['corrected_labels']} corrected labels, "
              f"{f['corrected_answers']} corrected answers"]
    for c in f["top_corrections"]:
        lines.append(f"    model said {c['predicted']!r:<14} -> corrected to {c['corrected']!r}: {c['count']}")
    d = s.get("drift")
    if d:
        lines += ["", f"Drift (latest {d['n']} inputs vs {d['reference_rows']} training rows): {d['verdict'].upper()}"]
        if d["verdict"] == "insufficient":
            lines.append(f"  {d['message']}")
        for c in d["checks"]:
            lines.append(f"  {c['name']:<30} {c['value']:>8.4f}   warn {c['warn']}  alert {c['alert']}   {c['status']}")
        for a in d["alerts"]:
            lines.append(f"  ALERT: {a}")
        if d.get("note"):
            lines.append(f"  note: {d['note']}")
    return "\n".join(lines)


@app.command()
def retrain(
    run: Path = typer.Argument(..., help="run folder being served"),
    db: Optional[str] = typer.Option(None, "--db", metavar="URL", help="monitoring store URL (default: sqlite RUN/monitor.db)"),
    set_: List[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="override a recipe key of the challenger (repeatable)"),
    objective: Optional[str] = typer.Option(
        None, "--objective", metavar="auto|sft|kto|dpo",
        help="what a chat run's challenger learns by (default: retrain.objective, auto: kto once answers were "
             "rated up or down, else sft on the corrections)"),
    no_promote: bool = typer.Option(False, "--no-promote", help="train and compare, but leave the champion"),
    force: bool = typer.Option(False, "--force", help="train even when the data audit finds errors"),
    as_json: bool = typer.Option(False, "--json", help="print the decision as JSON"),
):
    """Train a challenger on the original data plus the service's feedback; promote it only if it wins."""
    from ..serve.retrain import retrain as run_retrain

    result = run_retrain(run, db_url=db, overrides=set_, promote=not no_promote, force=force, objective=objective)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))


@app.command()
def rollback(
    run: Path = typer.Argument(..., help="run folder"),
    to: Optional[str] = typer.Option(None, "--to", metavar="VERSION", help="version id (default: the champion before the current one)"),
):
    """Serve an earlier version again (a running `tuneline serve` switches within seconds)."""
    from ..serve.registry import Registry

    registry = Registry(run)
    current = registry.champion
    target = to or registry.previous_champion()
    if target is None:
        versions = ", ".join(v["id"] for v in registry.read()["versions"])
        raise UserError(f"{run}: no earlier champion to return to; name one with --to (versions: {versions})")
    if target == current:
        print(f"{target} is already the champion.")
        return
    registry.path_of(target)  # must exist
    registry.set_champion(target, "rollback", f"tuneline rollback from {current}")
    print(f"Champion is now {target} (was {current}).")
