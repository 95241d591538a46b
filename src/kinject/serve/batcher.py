"""An asyncio micro-batcher: concurrent requests for one model become one model call.

The first queued request opens a batch; it closes when `max_batch_size` requests are in it or
`max_wait_ms` have passed, then `fn(rows)` runs in the model worker thread (the event loop
keeps accepting requests meanwhile). The queue is bounded: `submit` raises `Overloaded` when
it is full (the server answers 503 + Retry-After) and `Draining` once shutdown began. A
request whose caller gave up (timeout) before its batch started is dropped from the batch.

Written by hand (about 100 lines) because the server needs exactly this contract (bounded
queue with immediate refusal, per-request cancellation, drain on shutdown) on asyncio and a
single model thread; the libraries offering dynamic batching bring their own server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: try again later."""


class Draining(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass
class _Item:
    row: dict
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    dropped: int = 0  # timed out before their batch ran
    max_batch: int = 0

    def to_dict(self) -> dict:
        mean = self.requests / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.requests, "dropped": self.dropped,
                "max_batch": self.max_batch, "mean_batch": round(mean, 3)}


class MicroBatcher:
    def __init__(self, name: str, fn: Callable[[list[dict]], list[dict]], executor: Executor,
                 max_batch_size: int = 16, max_wait_ms: float = 10.0, max_queue: int = 256):
        self.name, self.fn, self.executor = name, fn, executor
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self.draining = False
        self.busy = False
        self.in_flight = 0  # submitted, not answered yet (queued, held or running)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    @property
    def pending(self) -> int:
        return self.queue.qsize()

    async def submit(self, row: dict) -> tuple[dict, dict]:
        """-> (the method's result for `row`, timings). Cancel the awaiting task to give up."""
        if self.draining:
            raise Draining(f"model {self.name!r} is shutting down")
        self.start()
        item = _Item(row, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Overloaded(f"model {self.name!r} has {self.queue.maxsize} requests queued") from None
        self.in_flight += 1
        try:
            return await item.future
        finally:
            self.in_flight -= 1

    async def _collect(self) -> list[_Item]:
        first = await self.queue.get()
        self.busy = True  # from here until its results are set: drain() waits for it
        batch = [first]
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                while len(batch) < self.max_batch_size and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [it for it in batch if not it.future.done()]  # callers that gave up are dropped
            self.stats.dropped += len(batch) - len(live)
            if not live:
                self.busy = False
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [it.row for it in live])
                if len(results) != len(live):
                    raise RuntimeError(f"model {self.name!r} returned {len(results)} results for {len(live)} rows")
                error = None
            except Exception as e:  # the batch fails, the batcher keeps serving
                log.exception("model %s: batch of %d failed", self.name, len(live))
                results, error = [None] * len(live), e
            end = time.perf_counter()
            self.stats.batches += 1
            self.stats.requests += len(live)
            self.stats.max_batch = max(self.stats.max_batch, len(live))
            for it, res in zip(live, results):
                if it.future.done():
                    continue
                if error is not None:
                    it.future.set_exception(error)
                else:
                    timings = {"queue_ms": (start - it.enqueued) * 1000, "batch_ms": (end - start) * 1000,
                               "batch_size": len(live)}
                    it.future.set_result((res, timings))
            self.busy = False

    async def drain(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let the queued and running ones finish, then stop."""
        self.draining = True
        end = time.perf_counter() + timeout
        while (self.pending or self.busy) and time.perf_counter() < end:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
