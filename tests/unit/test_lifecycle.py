import os
import signal
import threading

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
