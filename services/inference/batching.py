"""Dynamic batching across concurrent requests (asyncio side, model execution in a thread).

Each caller submits its own rows (``dense [n, D]``, ``ids [n, K]``) and awaits its own scores.
One worker task per model version gathers waiting requests: it starts a batch when the first
request arrives, waits at most ``max_queue_delay_ms`` for more (or until ``max_batch_size`` rows
are queued), concatenates them, runs ``predict`` once in the compute executor and hands every
caller exactly its slice back. While an execution runs, new requests queue up and form the next
batch, so under load batches grow without any added delay. A request larger than
``max_batch_size`` runs alone. ``max_queue_size`` bounds the waiting requests: beyond it
:class:`QueueFull` is raised at once (the server answers RESOURCE_EXHAUSTED).

With batching disabled each request is one execution (still on the compute executor).

One failing request does not fail its neighbours: when a batch execution raises (or answers the
wrong number of scores), each of its requests is re-run alone, so only the one that fails again
gets the error (``recpilot_inference_batch_retries_total``).

An execution is abandoned once every caller of it has given up (its deadline passed: the caller
answers with its fallback or DEADLINE_EXCEEDED): the batcher stops waiting, counts it
(``recpilot_inference_executions_abandoned_total``) and runs the next batch. The compute thread
stays busy until the model returns; a :class:`ComputePool` then runs later executions on a spare
thread, so a hung execution does not hold up the others (nor another version's, after a rollback).

Without an executor (``compute_threads = 0``) executions run inline on the event loop's thread:
no thread hand-off and no GIL ping-pong between the loop and a compute thread, which on a small
CPU box costs more than a small model's execution itself. While an execution runs the loop does
nothing else, so requests arriving meanwhile wait in gRPC and form the next batch, as before.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from recpilot.errors import ResourceExhausted, Unavailable
from services.inference import metrics as m
from services.inference.settings import BatchingConfig

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray, np.ndarray], np.ndarray]


class ComputePool(Executor):
    """The threads that run model executions. Unlike a ThreadPoolExecutor its threads are daemons
    (a hung model never blocks the process from exiting), and :meth:`lost` starts a spare thread
    in place of one stuck in an abandoned execution (at most ``max_spares`` at a time); when the
    stuck execution returns, one thread retires."""

    def __init__(self, threads: int, name: str = "compute", initializer: Callable[[], object] | None = None,
                 max_spares: int = 8) -> None:
        self.name, self.initializer, self.max_spares = name, initializer, max_spares
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._want = threads  # threads taking tasks
        self._lost: set[Future] = set()  # executions abandoned while running: their threads are stuck
        self._alive = 0
        self._shutdown = False
        for _ in range(threads):
            self._spawn()

    def _spawn(self) -> None:
        self._alive += 1
        threading.Thread(target=self._run, name=f"{self.name}-{self._alive}", daemon=True).start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new executions after shutdown")
        fut: Future = Future()
        self._q.put((fut, fn, args, kwargs))
        return fut

    def lost(self, fut: Future) -> bool:
        """``fut`` runs but nobody waits for it any more: start a spare thread in place of the one it
        holds (False at the cap, or when it is already done)."""
        with self._lock:
            if self._shutdown or fut.done() or len(self._lost) >= self.max_spares:
                return False
            self._lost.add(fut)
            self._spawn()
            return True

    @property
    def threads(self) -> int:
        return self._alive

    def _run(self) -> None:
        if self.initializer is not None:
            self.initializer()
        while True:
            item = self._q.get()
            if item is None:
                return
            fut, fn, args, kwargs = item
            del item
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                    fut.set_exception(exc)
            del fn, args, kwargs
            with self._lock:
                self._lost.discard(fut)  # a stuck execution came back: one thread too many now
                if self._alive > self._want + len(self._lost):
                    self._alive -= 1
                    return
            del fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        for _ in range(self._alive + self.max_spares):
            self._q.put(None)


class _Abandoned(Exception):
    """Every caller of the running execution gave up before it returned."""


class QueueFull(ResourceExhausted, RuntimeError):
    """The model's queue holds max_queue_size requests already."""


class BatcherClosed(Unavailable, RuntimeError):
    """The model version is being unloaded (swapped out, or the server is stopping)."""


@dataclass
class _Pending:
    dense: np.ndarray
    ids: np.ndarray
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    def __init__(self, label: str, predict: Predict, config: BatchingConfig, executor: Executor | None) -> None:
        self.label = label
        self.predict = predict
        self.config = config
        self.executor = executor
        self._queue: deque[_Pending] = deque()
        self._rows = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self._running: list[_Pending] = []  # the callers of the execution the worker waits for
        self._gate: asyncio.Future | None = None  # done when that execution returns or is abandoned
        self.abandoned = 0
        self.inflight = 0
        self.executions = 0
        self.requests = 0
        # Prometheus children bound once (labels() takes a lock and builds a key on every call).
        self._m_rejected = m.QUEUE_REJECTED.labels(label)
        self._m_depth = m.QUEUE_DEPTH.labels(label)
        self._m_compute = m.COMPUTE.labels(label)
        self._m_batch_size = m.BATCH_SIZE.labels(label)
        self._m_batch_requests = m.BATCH_REQUESTS.labels(label)
        self._m_batch_executions = m.BATCH_EXECUTIONS.labels(label)
        self._m_batch_rows = m.BATCH_ROWS.labels(label)
        self._m_queue = m.QUEUE.labels(label)
        self._m_abandoned = m.EXECUTIONS_ABANDONED.labels(label)
        self._m_retries = m.BATCH_RETRIES.labels(label)

    # -- API -----------------------------------------------------------------------------------
    async def infer(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self._closed:
            raise BatcherClosed(f"{self.label} is unloading")
        n = dense.shape[0]
        if n == 0:
            return np.zeros((0,), dtype=np.float32)
        if not self.config.enabled and self.inflight >= self.config.max_queue_size:
            self._m_rejected.inc()
            raise QueueFull(f"{self.label} has {self.inflight} requests in flight (max_queue_size)")
        self.inflight += 1
        try:
            if not self.config.enabled:
                return await self._run_single(dense, ids)
            if len(self._queue) >= self.config.max_queue_size:
                self._m_rejected.inc()
                raise QueueFull(f"queue of {self.label} is full ({self.config.max_queue_size} requests)")
            self._ensure_worker()
            fut = asyncio.get_running_loop().create_future()
            self._queue.append(_Pending(dense, ids, fut, time.perf_counter()))
            self._rows += n
            self._m_depth.set(len(self._queue))
            self._wakeup.set()
            try:
                return await fut
            except asyncio.CancelledError:  # the caller gave up (its deadline)
                self._caller_gone()
                raise
        finally:
            self.inflight -= 1

    async def close(self, timeout: float = 30.0) -> None:
        """Refuse new requests, finish the queued and running ones, stop the worker."""
        self._closed = True
        t0 = time.monotonic()
        while (self.inflight or self._queue) and time.monotonic() - t0 < timeout:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    # -- internals -----------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.label}")

    def _timed_predict(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.predict(dense, ids)
        self._m_compute.observe(time.perf_counter() - t0)
        return out

    async def _execute(self, dense: np.ndarray, ids: np.ndarray, callers: list[_Pending]) -> np.ndarray:
        """One execution; :class:`_Abandoned` once every one of ``callers`` has given up on it."""
        if self.executor is None:  # inline: nothing else runs meanwhile, nothing to abandon
            return self._timed_predict(dense, ids)
        loop = asyncio.get_running_loop()
        cf = self.executor.submit(self._timed_predict, dense, ids)
        run = asyncio.wrap_future(cf, loop=loop)
        gate = self._gate = loop.create_future()
        self._running = callers
        run.add_done_callback(lambda _f: gate.done() or gate.set_result(None))
        try:
            await gate
        finally:
            self._gate, self._running = None, []
        if not run.done():
            run.add_done_callback(_retrieve)
            self._abandon(cf)
            raise _Abandoned()
        return run.result()

    def _caller_gone(self) -> None:
        """A caller's future was cancelled: when no caller of the running execution is left, stop
        waiting for it."""
        gate = self._gate
        if gate is not None and not gate.done() and all(p.future.done() for p in self._running):
            gate.set_result(None)

    def _abandon(self, cf: Future) -> None:
        """Stop waiting for the execution ``cf``: cancelled if it has not started, else its thread is
        lost to the model until it returns (a spare takes its place)."""
        self.abandoned += 1
        self._m_abandoned.inc()
        spare = False
        if not cf.cancel() and isinstance(self.executor, ComputePool):
            spare = self.executor.lost(cf)
        log.warning("model execution abandoned: every caller passed its deadline", extra={
            "model": self.label, "spare_thread": spare, "collapse": True})

    async def _run_single(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.executor is None:
            out = self._timed_predict(dense, ids)
        else:
            cf = self.executor.submit(self._timed_predict, dense, ids)
            try:
                out = await asyncio.wrap_future(cf)
            except asyncio.CancelledError:  # the caller gave up (its deadline) before the model returned
                if not cf.done() or cf.cancelled():
                    self._abandon(cf)
                raise
        self._count(1, dense.shape[0])
        return np.asarray(out, dtype=np.float32).reshape(-1)

    async def _scores(self, dense: np.ndarray, ids: np.ndarray, callers: list[_Pending]) -> np.ndarray:
        out = np.asarray(await self._execute(dense, ids, callers), dtype=np.float32).reshape(-1)
        if out.shape[0] != dense.shape[0]:
            raise RuntimeError(f"{self.label} returned {out.shape[0]} scores for {dense.shape[0]} rows")
        return out

    async def _one_by_one(self, batch: list[_Pending]) -> None:
        """A batch execution failed: run each request alone, so only the one that fails gets an error."""
        self._m_retries.inc()
        for p in batch:
            if p.future.done():
                continue
            try:
                out = await self._scores(p.dense, p.ids, [p])
            except _Abandoned:
                continue
            except Exception as exc:
                if not p.future.done():
                    p.future.set_exception(exc)
                continue
            self._count(1, p.dense.shape[0])
            if not p.future.done():
                p.future.set_result(out)

    def _count(self, requests: int, rows: int) -> None:
        self.executions += 1
        self.requests += requests
        self._m_batch_size.observe(requests)
        self._m_batch_requests.inc(requests)
        self._m_batch_executions.inc()
        self._m_batch_rows.inc(rows)

    def _take(self) -> list[_Pending]:
        """Pop requests up to max_batch_size rows (always at least one); drop cancelled callers."""
        batch, rows = [], 0
        while self._queue:
            p = self._queue[0]
            if p.future.done():  # the caller gave up (deadline); do not compute for it
                self._queue.popleft()
                self._rows -= p.dense.shape[0]
                continue
            n = p.dense.shape[0]
            if batch and rows + n > self.config.max_batch_size:
                break
            self._queue.popleft()
            self._rows -= n
            batch.append(p)
            rows += n
        self._m_depth.set(len(self._queue))
        return batch

    async def _worker(self) -> None:
        delay = self.config.max_queue_delay_ms / 1000.0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.executor is None and delay == 0:
                # Inline executions block the loop: first let the handlers that are ready to run
                # (answers from the feature store that arrived meanwhile) reach the queue too.
                await asyncio.sleep(0)
            # Wait for company: until the batch is full or the oldest request waited `delay`.
            oldest = self._queue[0].enqueued
            while self._rows < self.config.max_batch_size:
                left = oldest + delay - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            now = time.perf_counter()
            for p in batch:
                self._m_queue.observe(now - p.enqueued)
            try:
                if len(batch) == 1:
                    dense, ids = batch[0].dense, batch[0].ids
                else:
                    dense = np.concatenate([p.dense for p in batch])
                    ids = np.concatenate([p.ids for p in batch])
                out = await self._scores(dense, ids, batch)
            except _Abandoned:
                continue
            except Exception as exc:
                if len(batch) > 1:  # one bad request must not fail its neighbours
                    await self._one_by_one(batch)
                else:
                    if not batch[0].future.done():
                        batch[0].future.set_exception(exc)
                continue
            self._count(len(batch), dense.shape[0])
            start = 0
            for p in batch:
                n = p.dense.shape[0]
                if not p.future.done():
                    p.future.set_result(out[start:start + n])  # a view: callers only read it
                start += n


def _retrieve(fut: asyncio.Future) -> None:
    """Mark an abandoned execution's outcome as seen (asyncio would log an unretrieved exception)."""
    if not fut.cancelled():
        fut.exception()
