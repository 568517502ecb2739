"""The served model's torch threads: the physical cores other processes leave free, measured
again every few seconds while the service runs (`tuneline serve` without --threads).

An OpenMP team larger than the free cores waits on a descheduled thread at every parallel
region, and a team smaller than them leaves a core idle. Measured on 2 cores, MiniLM behind the
service, 50 clients: quiet, 2 threads 193.1 requests/s and 1 thread 142.2; beside one other busy
process, 2 threads 49.8 (before length groups) and 1 thread 129.9. The load a service meets
(its clients on the same machine, other jobs) changes while it runs, so the count follows it,
as `hardware.training_threads` does once before training.

A run that chats keeps torch's default (every physical core): 8 streaming clients' network work
reads as other processes' load, and the adapted count (1) generated 31.2 tokens/s where 2
threads made 42.8 (first token p95 592 vs 457 ms). Generation spends nearly all its time in the
model, so it has the most to lose from a thread too few.
"""

from __future__ import annotations

import asyncio

from .. import hardware


def threads_for(others_busy: float, cores: int) -> int:
    """The cores other processes leave free (their use in cores), rounded: at least 1."""
    return max(1, min(cores, int(cores - others_busy + 0.5)))


class ModelThreads:
    """Call points: `start()` once (sets the count from a first sample), then `run()` as a
    background loop; `set_threads(n)` must run on the model thread's side of the service (it is
    given the service's `run_on_model_thread`). A new count is taken only when two samples in a
    row ask for it, so one busy moment does not flip it."""

    def __init__(self, run_on_model_thread, interval: float = 5.0, gauge=None):
        import psutil

        self.run_on_model_thread = run_on_model_thread
        self.interval = interval
        self.gauge = gauge
        self.cores = hardware.physical_cores()
        self._own = psutil.Process()
        self.current: int | None = None
        self._wanted: int | None = None

    def sample(self) -> float:
        """Cores busy with other processes since the last sample (this process's own use excluded)."""
        import psutil

        system = psutil.cpu_percent(interval=None) / 100 * (psutil.cpu_count() or 1)
        own = self._own.cpu_percent(interval=None) / 100
        # logical CPUs to physical cores, as hardware.busy_cores does
        return max(0.0, system - own) * self.cores / (psutil.cpu_count() or 1)

    async def start(self) -> None:
        self.sample()  # psutil measures from this call on
        await asyncio.sleep(0.3)
        await self._set(threads_for(self.sample(), self.cores))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.step(self.sample())

    async def step(self, others_busy: float) -> None:
        wanted = threads_for(others_busy, self.cores)
        if wanted != self.current and wanted == self._wanted:
            await self._set(wanted)
        self._wanted = wanted

    async def _set(self, n: int) -> None:
        import torch

        await self.run_on_model_thread(torch.set_num_threads, n)
        self.current = n
        if self.gauge is not None:
            self.gauge.set(n)
