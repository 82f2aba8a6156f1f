"""Loads in flight: each runs in its own daemon thread, off the request path and outside any lock a
deployment change needs; callers that ask for a load already running share its future (and wait on
it with their own timeout). Used for ranker versions (:mod:`.routing`) and policy versions
(:mod:`.policy`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future


class InFlight:
    def __init__(self) -> None:
        self._futures: dict[Hashable, Future] = {}
        self._lock = threading.Lock()

    def start(self, key: Hashable, load: Callable[[], object], name: str) -> Future:
        """The future of ``load()`` run in a thread named ``name``; the one already in flight for ``key`` if any."""
        with self._lock:
            fut = self._futures.get(key)
            if fut is not None:
                return fut
            fut = self._futures[key] = Future()

        def run() -> None:
            try:
                fut.set_result(load())
            except BaseException as exc:  # noqa: BLE001 - handed to the callers that wait
                fut.set_exception(exc)
            finally:
                with self._lock:
                    self._futures.pop(key, None)

        threading.Thread(target=run, name=name, daemon=True).start()
        return fut
