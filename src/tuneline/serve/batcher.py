"""Micro-batching: requests that arrive close together share one forward pass.

Each request submits its items under a key (jobs run together only when their keys match:
the same generation options, say). One worker takes the oldest job, adds later jobs of the
same key until `max_batch` items or `max_wait_ms`, runs the batch function on the single
model thread, and hands each job its slice of the results. The model thread is shared with
streaming generation (`run_on_model_thread`), so the model is never used by two threads.

Written here rather than taken from a library: the serving libraries that batch (Ray Serve,
BentoML, Triton) each bring a whole runtime; this is one small asyncio loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass
class _Job:
    key: Hashable
    items: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    def __init__(self, run_batch: Callable[[Hashable, list], tuple[list, Any]], max_batch: int = 32,
                 max_wait_ms: float = 5.0, on_batch: Callable[[int], None] | None = None):
        """run_batch(key, items) -> (results, extra): one result per item; extra goes to every job."""
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneline-model")
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.in_flight = 0

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, key: Hashable, items: list) -> tuple[list, Any]:
        if self._closing:
            raise RuntimeError("the service is shutting down")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(key, list(items), fut))
        self.in_flight += 1
        self._wakeup.set()
        try:
            return await fut
        finally:
            self.in_flight -= 1

    async def run_on_model_thread(self, fn: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _take_batch(self) -> list[_Job]:
        first = self._pending.popleft()
        jobs, n = [first], len(first.items)
        rest: deque[_Job] = deque()
        while self._pending:
            job = self._pending.popleft()
            if job.key == first.key and n + len(job.items) <= self.max_batch:
                jobs.append(job)
                n += len(job.items)
            else:
                rest.append(job)
        self._pending.extendleft(reversed(rest))
        return jobs

    def _ready_count(self, key) -> int:
        return sum(len(j.items) for j in self._pending if j.key == key)

    async def _loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait a little for company, unless the batch is already full.
            first = self._pending[0]
            deadline = first.enqueued + self.max_wait
            while self._ready_count(first.key) < self.max_batch and time.monotonic() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
            jobs = self._take_batch()
            items = [x for j in jobs for x in j.items]
            if self.on_batch:
                self.on_batch(len(items))
            try:
                results, extra = await self.run_on_model_thread(self.run_batch, jobs[0].key, items)
            except Exception as e:  # one bad batch fails its own requests, never the loop
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result((results[start:start + len(j.items)], extra))
                start += len(j.items)

    async def close(self) -> None:
        """Finish every job already submitted, then stop."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)
