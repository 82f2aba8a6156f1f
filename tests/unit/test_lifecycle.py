import os
import signal
import threading

import pytest

from recpilot.lifecycle import Lifecycle


def test_stops_in_reverse_order_and_survives_errors():
    calls = []
    lc = Lifecycle()
    lc.add("metrics", lambda: calls.append("metrics"))
    lc.add("producer", lambda: (_ for _ in ()).throw(RuntimeError("flush failed")))
    lc.add("consumer", lambda: calls.append("consumer"))
    order = lc.shutdown()
    assert calls == ["consumer", "metrics"]
    assert order == ["consumer", "metrics"]  # the failing one is logged, not reported as stopped
    assert lc.shutdown() == []  # idempotent


def test_sigterm_sets_stopping():
    lc = Lifecycle()
    old = signal.getsignal(signal.SIGTERM)
    try:
        lc.install_signal_handlers()
        os.kill(os.getpid(), signal.SIGTERM)
        assert lc.stopping.wait(2)
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_wait_returns_when_a_component_dies():
    lc = Lifecycle()
    alive = threading.Event()
    alive.set()
    threading.Timer(0.2, alive.clear).start()
    lc.wait(poll=0.05, check=alive.is_set)
    assert lc.stopping.is_set()


def test_os_thread_names_show_in_per_thread_cpu():
    """name_os_thread makes a thread visible by name in /proc, where the benches' per-thread CPU
    (bench.machine.thread_cpu / busy_cores) reads it."""
    import os
    import threading
    import time

    from bench.machine import busy_cores, thread_cpu
    from recpilot.lifecycle import name_os_thread

    before = thread_cpu(os.getpid())
    started, done = threading.Event(), threading.Event()

    def spin():  # busy until the reading below is taken, however late this thread is scheduled
        name_os_thread()
        started.set()
        t_end = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < t_end:
            pass

    t = threading.Thread(target=spin, name="rp-spinner-thread-long")  # longer than the OS's 15 bytes
    t.start()
    try:
        assert started.wait(10)
        t0 = time.monotonic()
        while True:  # until the spinner has used CPU that /proc counts (10 ms ticks)
            during = thread_cpu(os.getpid())
            if during.get("rp-spinner-thre", 0.0) > 0 or time.monotonic() - t0 > 10:
                break
            time.sleep(0.05)
    finally:
        done.set()
        t.join()
    assert "rp-spinner-thre" in during  # truncated to 15 bytes
    assert during["rp-spinner-thre"] > 0
    assert "rp-spinner-thre" in busy_cores(before, during, time.monotonic() - t0 + 0.001)
    assert thread_cpu(-1) == {}  # a process that does not exist


def test_new_event_loop_kinds():
    import asyncio

    import uvloop  # a dependency (pyproject), so "auto" means uvloop here

    from recpilot.lifecycle import new_event_loop

    for choice, kind, name in (("auto", uvloop.Loop, "uvloop"), ("uvloop", uvloop.Loop, "uvloop"),
                               ("asyncio", asyncio.BaseEventLoop, "asyncio")):
        loop, got = new_event_loop(choice)
        try:
            assert isinstance(loop, kind) and got == name
            assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
        finally:
            loop.close()
    with pytest.raises(ValueError, match="auto, uvloop or asyncio"):
        new_event_loop("trio")
