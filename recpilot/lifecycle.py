"""Ordered graceful shutdown.

Components are registered in start order and stopped in reverse: a service that starts the
metrics server first, then its producer, then its consume loop stops the loop (stop taking
work, finish the batch, commit), then flushes the producer, then stops metrics.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class LoopThread:
    """A loop on a daemon thread of its own. ``start()`` runs :meth:`run` there; ``stop(timeout)``
    sets ``_stop`` (which ``run`` watches) and joins; ``running`` says whether the thread lives;
    ``error`` is the exception that ended ``run`` (logged with :attr:`failure`), for the owner to
    exit non-zero or restart; :meth:`finished` runs on the thread after ``run``, however it ended."""

    failure = "loop failed"

    def __init__(self, name: str) -> None:
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        raise NotImplementedError

    def finished(self) -> None:
        """After :meth:`run` (close clients here)."""

    def _run_guarded(self) -> None:
        name_os_thread()
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - recorded for the owner
            self.error = exc
            log.exception(self.failure, extra={"loop": self.name})
        finally:
            self.finished()


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread its Python name (or ``name``) at the OS level too (Linux
    ``prctl(PR_SET_NAME)``, 15 bytes), so ``top -H``, ``/proc/<pid>/task/*/comm`` and the benches'
    per-thread CPU tell the serving threads apart (Python 3.11 leaves them all "python").
    Does nothing where that is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, (name or threading.current_thread().name).encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def await_chain(task: asyncio.Task) -> str:
    """A waiting task's stack down its chain of awaits (``Task.get_stack`` stops at the task's own
    coroutine), innermost last, as a traceback would print it."""
    import traceback

    frames, coro = [], task.get_coro()
    while coro is not None and len(frames) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    if coro is not None:  # the awaitable at the bottom: a future, a lock's waiter ...
        frames_text = "".join(traceback.format_list(traceback.StackSummary.extract(frames)))
        return f"{frames_text}  awaiting {coro!r}"[:4000]
    return "".join(traceback.format_list(traceback.StackSummary.extract(frames)))


def thread_stack(thread: threading.Thread | None) -> str:
    """Where ``thread`` is now, as a traceback prints it (a diagnosis for a log line)."""
    import sys
    import traceback

    frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
    return "".join(traceback.format_stack(frame))[-4000:] if frame is not None else ""


def reexec() -> None:
    """Replace this process with a fresh run of the same command line (same pid, arguments,
    environment and working directory): a worker's way to restart itself when it finds itself
    stuck in a way only a restart cures. Python's own descriptors are not inherited (PEP 446): the
    new process binds its ports again."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _uvloop(choice: str):
    """uvloop's module when ``choice`` is "uvloop", or "auto" and it is installed; else None."""
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ValueError(f"event loop must be auto, uvloop or asyncio, not {choice!r}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop


def use_event_loop(choice: str) -> str:
    """Install uvloop's event loop policy process-wide (before a framework such as faust creates its
    loop) when ``choice`` asks for it or, for "auto", when it is installed; returns the loop's name."""
    uv = _uvloop(choice)
    if uv is None:
        return "asyncio"
    asyncio.set_event_loop_policy(uv.EventLoopPolicy())
    return "uvloop"


def new_event_loop(choice: str) -> tuple[asyncio.AbstractEventLoop, str]:
    """A new event loop of the kind ``choice`` names ("auto" = uvloop when installed), and its name,
    without touching the process-wide policy (for a loop that runs in its own thread)."""
    uv = _uvloop(choice)
    if uv is not None:
        return uv.new_event_loop(), "uvloop"
    # the stdlib's own loop even where uvloop's policy was installed process-wide (use_event_loop)
    return asyncio.DefaultEventLoopPolicy().new_event_loop(), "asyncio"


class Lifecycle:
    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], object]]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._done = False

    def add(self, name: str, stop: Callable[[], object]) -> None:
        self._stops.append((name, stop))

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT set :attr:`stopping` (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        log.info("signal received, shutting down", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def wait(self, poll: float = 0.5, check: Callable[[], bool] | None = None, on_stop: bool = True) -> None:
        """Block until a signal arrives or ``check()`` returns False (a component died). With
        ``on_stop=False`` a dead component only ends the wait (the caller may restart it);
        otherwise it also sets :attr:`stopping`."""
        while not self.stopping.wait(poll):
            if check is not None and not check():
                if not on_stop:
                    return
                log.error("a component stopped unexpectedly; shutting down")
                self.stopping.set()

    def start_service(self, name: str, current: list, http, metric_events, interval_s: float,
                      collect: Callable[[], list]) -> bool:
        """The start-up every consumer service's entry point runs: signal handlers; the health server
        (``http``, up first so ``/healthz`` answers while the service starts); ``current[0].start()``
        (on failure: logged, everything started so far stopped, False: the entry point exits 1); then
        the metric-event publisher (``metric_events.start(interval_s, collect)``) and the service's
        stop, registered so that :meth:`shutdown` stops the service before the publisher before the
        health server. ``current`` is the one-element list the health checks and :meth:`restart`
        share."""
        self.install_signal_handlers()
        http.start()
        self.add("http", http.stop)
        try:
            current[0].start()
        except Exception:
            log.exception(f"{name} failed to start")
            self.shutdown()
            return False
        self.add("metric-events", lambda: metric_events.close(5))
        metric_events.start(interval_s, collect)
        self.add(name, lambda: current[0].stop())
        return True

    def restart(self, current: list, build: Callable[[], object], *, name: str, delay: float,
                backoff_max_s: float, on_attempt: Callable[[], object] | None = None) -> float:
        """Replace the failed component in ``current[0]`` (a one-element list the health checks and
        stop callbacks read): after ``delay`` s, ``build()`` a new one and ``start()`` it, doubling
        the delay (up to ``backoff_max_s``) after each attempt, until one starts or :attr:`stopping`
        is set. Returns the delay for the next failure (the caller resets it to its minimum after a
        run that made progress)."""
        while not self.stopping.wait(delay):
            delay = min(delay * 2, backoff_max_s)
            if on_attempt is not None:
                on_attempt()
            try:
                nxt = build()
                nxt.start()
            except Exception as exc:
                log.error(f"{name} restart failed", extra={"error": repr(exc), "next_in_s": delay})
                continue
            current[0] = nxt
            log.info(f"{name} restarted")
            break
        return delay

    def shutdown(self) -> list[str]:
        """Run every stop callback in reverse order; errors are logged, not raised. Idempotent."""
        with self._lock:
            if self._done:
                return []
            self._done = True
        self.stopping.set()
        order = []
        for name, stop in reversed(self._stops):
            try:
                stop()
                order.append(name)
                log.info("stopped", extra={"component": name})
            except Exception:
                log.exception("error while stopping", extra={"component": name})
        return order
