"""The served model's threads follow the cores other processes leave free (serve/threads.py)."""

from __future__ import annotations

import asyncio

from tuneline.serve.threads import ModelThreads, threads_for


def test_threads_are_the_free_cores_rounded():
    assert threads_for(0.0, 2) == 2
    assert threads_for(0.16, 2) == 2      # a light client beside the service
    assert threads_for(0.6, 2) == 1       # a busy one
    assert threads_for(1.3, 2) == 1       # another job: never fewer than one
    assert threads_for(3.0, 2) == 1
    assert threads_for(2.4, 16) == 14


def test_a_new_count_needs_two_samples_in_a_row():
    calls = []

    async def on_model_thread(fn, n):
        calls.append(n)

    threads = ModelThreads(on_model_thread)
    threads.cores = 2

    async def main():
        for busy in (0.1, 0.9, 0.1, 0.9, 0.9, 0.95, 0.2, 0.1):
            await threads.step(busy)

    asyncio.run(main())
    # quiet / busy moments that alternate change nothing; two busy samples give 1, two quiet ones 2
    assert calls == [1, 2]
    assert threads.current == 2


def test_the_service_sets_and_reports_its_threads(tmp_path, monkeypatch, tiny_bert, tmp_path_factory):
    """With adapt_threads the service takes a first count before its first request and exports it."""
    import torch
    from fastapi.testclient import TestClient

    from tuneline.serve import threads as module
    from tuneline.serve.app import ServeSettings, create_app

    from serve_helpers import shared_classify_run

    before = torch.get_num_threads()
    monkeypatch.setattr(module.ModelThreads, "sample", lambda self: 0.0)
    monkeypatch.setattr(module.hardware, "physical_cores", lambda: 1)  # keep the test process's own count sane
    app = create_app(ServeSettings(run_dir=str(shared_classify_run(tmp_path_factory, tiny_bert)),
                                   db_url=f"sqlite:///{tmp_path / 'm.db'}", adapt_threads=True, drift_interval=3600))
    try:
        with TestClient(app) as client:
            assert "tuneline_model_threads 1.0" in client.get("/metrics").text
            assert client.post("/v1/classify", json={"input": "great product"}).status_code == 200
    finally:
        torch.set_num_threads(before)
