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


def test_restart_retries_with_a_doubling_delay_until_a_component_starts():
    from recpilot.lifecycle import Lifecycle

    attempts, built = [], []

    class Component:
        def __init__(self, fails: bool) -> None:
            self.fails = fails

        def start(self) -> None:
            if self.fails:
                raise ConnectionError("broker down")

    def build():
        c = Component(fails=len(built) < 2)   # the first two fail to start
        built.append(c)
        return c

    life = Lifecycle()
    current = ["failed"]
    delay = life.restart(current, build, name="thing", delay=0.001, backoff_max_s=0.004,
                         on_attempt=lambda: attempts.append(1))
    assert current[0] is built[2] and len(built) == 3 and len(attempts) == 3
    assert delay == 0.004                       # 0.001 -> 0.002 -> 0.004 (capped)
    life.stopping.set()                         # stopping: no attempt at all
    assert life.restart(current, build, name="thing", delay=0.001, backoff_max_s=1.0) == 0.001
    assert len(built) == 3 and current[0] is built[2]


class _Part:
    def __init__(self, name, order, fail=False):
        self.name, self.order, self.fail = name, order, fail

    def start(self, *args):
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        self.order.append(f"start {self.name}")

    def stop(self):
        self.order.append(f"stop {self.name}")

    def close(self, timeout):
        self.order.append(f"stop {self.name}")


def test_start_service_starts_health_first_and_stops_the_service_before_metrics_before_health():
    order = []
    life = Lifecycle()
    current = [_Part("svc", order)]
    assert life.start_service("svc", current, _Part("http", order), _Part("metrics", order), 5.0, list)
    life.shutdown()
    assert order == ["start http", "start svc", "start metrics", "stop svc", "stop metrics", "stop http"]


def test_start_service_that_fails_stops_what_started_and_says_so(caplog):
    order = []
    life = Lifecycle()
    assert not life.start_service("svc", [_Part("svc", order, fail=True)], _Part("http", order),
                                  _Part("metrics", order), 5.0, list)
    assert order == ["start http", "stop http"] and life.stopping.is_set()
    assert "svc failed to start" in caplog.text


def test_the_asyncio_choice_is_the_stdlib_loop_even_under_uvloops_policy():
    """A process that installed uvloop's policy (use_event_loop, e.g. the features worker) still
    gets the stdlib loop when it asks for "asyncio"."""
    import asyncio

    import uvloop

    from recpilot.lifecycle import new_event_loop

    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        loop, name = new_event_loop("asyncio")
        assert not isinstance(loop, uvloop.Loop) and isinstance(loop, asyncio.BaseEventLoop) and name == "asyncio"
        loop.close()
    finally:
        asyncio.set_event_loop_policy(before)


def test_reexec_replaces_the_process_with_the_same_command_line():
    """``reexec`` keeps the pid, the arguments and the environment (here: a counter it carries)."""
    import subprocess
    import sys

    code = ("import os\nfrom recpilot.lifecycle import reexec\nn = int(os.environ.get('RUN', '0'))\n"
            "print('run', n, os.getpid(), flush=True)\nif n < 2:\n    os.environ['RUN'] = str(n + 1)\n    reexec()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    runs = [ln.split() for ln in out.stdout.splitlines()]
    assert [r[1] for r in runs] == ["0", "1", "2"] and len({r[2] for r in runs}) == 1


def test_thread_stack_says_where_a_blocked_thread_waits(caplog):
    """``thread_stack`` for a diagnosis; rl_feedback's stalled-loop restart logs it, then re-executes."""
    import logging

    from recpilot.lifecycle import thread_stack
    from services.rl_feedback import __main__ as rl_main

    release = threading.Event()

    def blocked_in_a_kafka_call():
        release.wait(30)

    t = threading.Thread(target=blocked_in_a_kafka_call, daemon=True)
    t.start()
    try:
        assert "blocked_in_a_kafka_call" in thread_stack(t)

        class Stuck:
            _thread, transactions = t, 7

            def stalled_for(self):
                return 250.0

        restarted = []
        rl_main.reexec, saved = (lambda: restarted.append(True)), rl_main.reexec
        try:
            with caplog.at_level(logging.ERROR):
                rl_main.restart_stalled(Stuck())
        finally:
            rl_main.reexec = saved
        rec = next(r for r in caplog.records if "loop stalled" in r.getMessage())
        assert restarted == [True] and rec.stalled_for_s == 250.0 and "blocked_in_a_kafka_call" in rec.stack
    finally:
        release.set()
    assert thread_stack(None) == ""


def test_await_chain_follows_a_tasks_awaits_down_to_what_it_waits_for():
    import asyncio

    from recpilot.lifecycle import await_chain

    async def inner():
        await asyncio.sleep(10)

    async def outer():
        await inner()

    async def main():
        task = asyncio.create_task(outer())
        await asyncio.sleep(0.01)
        text = await_chain(task)
        task.cancel()
        return text

    text = asyncio.run(main())
    assert text.index("in outer") < text.index("in inner") < text.index("in sleep") and "awaiting" in text
