"""The service's background work: hot reload when the registry's champion changes, and drift checks."""

from __future__ import annotations

import asyncio

from .batcher import MicroBatcher
from .drift import DriftMonitor
from .guard import Metrics
from .model import ServedModel
from .registry import Registry


class RegistryWatcher:
    """Serves the registry's champion: a new one is loaded whole, then swapped in."""

    def __init__(self, registry: Registry, served: ServedModel, metrics: Metrics, drift: DriftMonitor,
                 interval: float):
        self.registry, self.served, self.metrics, self.drift = registry, served, metrics, drift
        self.interval = interval
        self.reloading = False
        self.last_error: str | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
                self.last_error = None
            except Exception as e:  # a half-copied version must not stop the service; it keeps the old one
                self.last_error = f"{type(e).__name__}: {e}"
            finally:
                self.reloading = False

    async def check(self) -> None:
        wanted = self.registry.champion
        if wanted == self.served.current.id:
            return
        self.reloading = True
        path = self.registry.path_of(wanted)
        old = await asyncio.to_thread(self.served.swap, wanted, path)
        self.metrics.model_info.labels(old.id).set(0)
        self.metrics.model_info.labels(wanted).set(1)
        self.drift.reset()
        print(f"tuneline serve: now serving {wanted} ({path}), was {old.id}", flush=True)


async def watch_drift(drift: DriftMonitor, batcher: MicroBatcher, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await batcher.run_on_model_thread(drift.update)  # the tokenizer is not thread-safe
        except Exception as e:
            drift.last_error = f"{type(e).__name__}: {e}"
