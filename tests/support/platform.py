"""The whole platform on a private home and private ports, driven by steady load, for fault tests.

:class:`Platform` runs Kafka, Redis and the five services with the project's own stack manager
(:class:`recpilot.stack.manager.Stack`: what `recpilot up --replicas features=2` runs) and gives a
test the faults an operator meets: ``kill9(name)`` (SIGKILL to a service's process group, as the
kernel's OOM killer or a node loss would), ``restart(name)`` (`recpilot up` again: it starts what
is not running, as a supervisor would), ``restart_broker()`` and ``restart_redis()``, and
``wait_ready()`` (every service's /readyz answers 200). Nothing in the stack restarts a dead
process on its own: the test restarts it, the way an operator or Kubernetes would.

:class:`Load` is a shop at a steady rate (the simulator's :func:`recpilot.simulator.drive.simulate`:
raw events into ``events.raw``, and Recommend calls whose shown items the shoppers click with the
response's request id), recording every delivered event id and every Recommend call's outcome
(answered by the model, a flagged fallback, or an error) under the phase the test is in.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from recpilot.stack.process import _reap, http_get, wait_group_gone

# Ports of the platform under test: its own block, so neither the shared test stack nor another
# platform test (tests/e2e/test_story.py uses 283xx) is touched.
PORTS = {
    "RECPILOT_KAFKA_PORT": "29492", "RECPILOT_KAFKA_CONTROLLER_PORT": "29493", "RECPILOT_REDIS_PORT": "29479",
    "RECPILOT_ALERTMANAGER_PORT": "29495", "RECPILOT_INGEST_HTTP_PORT": "29401",
    "RECPILOT_FEATURES_HTTP_PORT": "29402", "RECPILOT_INFERENCE_HTTP_PORT": "29403",
    "RECPILOT_INFERENCE_GRPC_PORT": "29451", "RECPILOT_RL_FEEDBACK_HTTP_PORT": "29404",
    "RECPILOT_MONITOR_HTTP_PORT": "29405",
}


@dataclass
class Call:
    """One Recommend call of :class:`Load`: when (monotonic), in which phase, whether the test had
    the inference process down at the time, and how it ended."""

    t: float
    phase: str
    inference_down: bool
    outcome: str  # "model", "fallback" or "error"
    detail: str = ""  # the fallback reason or the gRPC status code
    message: str = ""  # the error's details


class Platform:
    """The stack of ``home`` (settings from the environment the caller set: ``PORTS`` and the
    services' own variables), started by :meth:`up`, stopped by :meth:`down`."""

    def __init__(self, home: Path) -> None:
        from recpilot.settings import PlatformSettings, load
        from recpilot.stack.manager import Stack

        self.settings = load(PlatformSettings)
        assert self.settings.home == home, (self.settings.home, home)
        self.stack = Stack(self.settings)
        self.replicas: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def up(self, replicas: dict[str, int]) -> None:
        self.replicas = dict(replicas)
        self.stack.up_infra(echo=lambda *_: None)
        self.stack.up_services(echo=lambda *_: None, replicas=replicas)

    def down(self) -> dict[str, str]:
        return self.stack.down(echo=lambda *_: None)

    def kill_all(self) -> None:
        """SIGKILL every process the stack started (services, then Kafka and Redis): the end of a test
        whose home is thrown away (a graceful `down` of the whole platform takes far longer)."""
        for table in (self.stack.services_table, self.stack.table):
            for rec_path in sorted(table.run_dir.glob("*.json")) if table.run_dir.is_dir() else []:
                rec = table.get(rec_path.stem)
                if rec is not None and rec.alive():
                    self.kill9(rec.name, table)
                rec_path.unlink(missing_ok=True)

    def names(self) -> list[str]:
        """Every service replica the platform runs (``features``, ``features-1`` ...)."""
        from recpilot.stack.manager import services

        return [spec.replica_name(i) for spec in services() for i in range(self.replicas.get(spec.name, 1))]

    # -- faults ---------------------------------------------------------------------------
    def kill9(self, name: str, table=None) -> int:
        """SIGKILL the process group of ``name`` (a service replica, or "kafka"/"redis" with the
        infrastructure's table) and wait until it is gone; its pid."""
        table = table or self.stack.services_table
        rec = table.get(name)
        assert rec is not None and rec.alive(), f"{name} is not running"
        os.killpg(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while rec.alive() and time.monotonic() < deadline:
            _reap(rec.pid)
            time.sleep(0.05)
        assert not rec.alive(), f"{name} survived SIGKILL"
        assert wait_group_gone(rec.pid, 20), f"a process of {name}'s group survived SIGKILL"
        return rec.pid

    def restart(self, name: str) -> None:
        """Start replica ``name`` again, as `recpilot up` does for what is not running (not waiting)."""
        from recpilot.stack.manager import services

        spec = next(s for s in services() if name == s.name or name.startswith(s.name + "-"))
        self.stack.start_replica(spec, int(name.rsplit("-", 1)[1]) if name != spec.name else 0)

    def restart_broker(self, graceful: bool = False) -> None:
        """The broker stopped (SIGTERM and waited for, or SIGKILL) and started again on its data."""
        if graceful:
            self.stack.table.stop("kafka", timeout=60)
        else:
            self.kill9("kafka", self.stack.table)
            self.stack.table.path("kafka").unlink(missing_ok=True)
        self.stack.kafka.start()
        self.stack.kafka.wait_ready()  # RECPILOT_KAFKA_READY_TIMEOUT_S (after a kill -9 it recovers its logs first)

    def restart_redis(self, graceful: bool = True) -> None:
        """Redis stopped (SIGTERM: it writes and fsyncs its append-only file first; or SIGKILL) and
        started again on its files."""
        if graceful:
            self.stack.table.stop("redis", timeout=60)
        else:
            self.kill9("redis", self.stack.table)
            self.stack.table.path("redis").unlink(missing_ok=True)
        self.stack.redis.start()
        self.stack.redis.wait_ready()

    # -- observation ----------------------------------------------------------------------
    def address(self, name: str) -> str | None:
        rec = self.stack.services_table.get(name)
        return rec.address if rec is not None else None

    def readyz(self, name: str) -> tuple[int, str]:
        addr = self.address(name)
        return http_get(f"http://{addr}/readyz", 2.0) if addr else (0, "no pid record")

    def not_ready(self) -> dict[str, str]:
        """The replicas whose /readyz does not answer 200, with what they answer."""
        out = {}
        for name in self.names():
            rec = self.stack.services_table.get(name)
            if rec is None or not rec.alive():
                out[name] = "not running"
                continue
            code, body = self.readyz(name)
            if code != 200:
                out[name] = f"{code} {body[:300]}"
        return out

    def log_tail(self, name: str, lines: int = 30) -> str:
        from recpilot.stack.process import tail

        return tail(self.stack.logs_dir / f"{name}.log", lines)

    def wait_ready(self, timeout: float, what: str) -> float:
        """Until every replica is ready; the seconds it took. Fails with what is not ready (and the
        end of its log) at ``timeout``."""
        from tests.support.wait import wait_until

        t0 = time.monotonic()

        def message() -> str:
            bad = self.not_ready()
            return f"{what}: not ready {bad}\n" + "\n".join(f"--- {n}:\n{self.log_tail(n, 15)}" for n in bad)

        wait_until(lambda: not self.not_ready(), timeout, message, 0.25)
        return time.monotonic() - t0

    def metric(self, name: str, metric: str) -> float:
        """The sum of a metric's samples (every label set) on replica ``name``'s /metrics (0 when
        it does not answer)."""
        addr = self.address(name)
        code, text = http_get(f"http://{addr}/metrics", 2.0) if addr else (0, "")
        if code != 200:
            return 0.0
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                   if ln.startswith(metric) and ln[len(metric):len(metric) + 1] in (" ", "{"))


class Load:
    """A shop at ``rate`` events/s (the simulator's shoppers; ``recommend_share`` of the steps ask
    the Recommender and click its answers) in a thread, until :meth:`stop`. ``phase`` and
    ``inference_down`` label the Recommend calls made from when they are set."""

    def __init__(self, platform, grpc_address: str, rate: float = 40.0, recommend_share: float = 0.3,
                 seed: int = 17, timeout_s: float = 1.0) -> None:
        from recpilot.kafka import producer
        from recpilot.simulator import ShopSimulator

        self.phase = "start"
        self.inference_down = False
        self.calls: list[Call] = []
        self.delivered: list[str] = []  # event ids the broker acknowledged on events.raw
        self.delivery_errors: list[str] = []
        self.result = None
        self._stop = threading.Event()
        self._lock = threading.Lock()

        def on_delivery(err, msg) -> None:
            from recpilot.pb import events_pb2

            if err is not None:
                self.delivery_errors.append(str(err))
            else:
                ev = events_pb2.UserEvent.FromString(msg.value())
                with self._lock:
                    self.delivered.append(ev.event_id)

        quiet = logging.getLogger("tests.platform.load")  # librdkafka logs a line per retry while the broker is down
        quiet.setLevel(logging.CRITICAL)
        quiet.propagate = False
        self.producer = producer(platform, **{"client.id": "fault-load", "linger.ms": 20, "on_delivery": on_delivery,
                                              "logger": quiet})
        self.probe = _RecordingProbe(self, grpc_address, timeout_s)
        self.sim = ShopSimulator(seed=seed)
        self.rate, self.recommend_share = rate, recommend_share
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)

    def _run(self) -> None:
        from recpilot.simulator.drive import simulate
        from recpilot.topics import EVENTS_RAW

        try:
            self.result = simulate(self.producer, EVENTS_RAW, self.sim, self.rate, self.probe,
                                   recommend_share=self.recommend_share, stop=self._stop.is_set)
        finally:
            self.probe.close()

    def burst(self, n: int) -> None:
        """``n`` more events at once (beside the steady stream, on the same producer): a backlog. The
        same shop (the simulator's seed: an item keeps its category and price) with ids of its own."""
        from recpilot.kafka import produce_waiting
        from recpilot.simulator import ShopSimulator, TrafficMix
        from recpilot.topics import EVENTS_RAW

        mix = TrafficMix(ShopSimulator(seed=self.sim.seed))
        now = int(time.time() * 1000)
        for i in range(n):
            key, value, _ = mix.next(now + i)
            produce_waiting(self.producer, EVENTS_RAW, value, key)
        assert self.producer.flush(30) == 0

    def start(self) -> "Load":
        self._thread.start()
        return self

    def set_phase(self, phase: str, inference_down: bool | None = None) -> None:
        self.phase = phase
        if inference_down is not None:
            self.inference_down = inference_down

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load did not stop"

    def alive(self) -> bool:
        return self._thread.is_alive()

    def answered(self) -> int:
        return sum(c.outcome != "error" for c in self.calls)

    def by_phase(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for c in self.calls:
            out.setdefault(c.phase, Counter())[c.outcome + (f":{c.detail}" if c.detail else "")] += 1
        return out


class _RecordingProbe:
    """The simulator's Recommender client (``recommend()`` returns the response or None), recording
    each call; reconnects quickly after the server comes back (short gRPC reconnect backoff)."""

    def __init__(self, load: Load, address: str, timeout_s: float) -> None:
        import grpc

        from recpilot.pb import recommend_pb2_grpc

        self.load, self.timeout_s = load, timeout_s
        self.backing_off = False  # simulate() asks; never: every step that draws a call makes one
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500)])
        self._stub = recommend_pb2_grpc.RecommenderStub(self._channel)

    def recommend(self, user_id: str, session_id: str, k: int = 10, context: dict | None = None):
        import grpc

        from recpilot.pb import recommend_pb2

        phase, down = self.load.phase, self.load.inference_down
        req = recommend_pb2.RecommendRequest(user_id=user_id, k=k, session_id=session_id,
                                             request_id=uuid.uuid4().hex, context=context or {})
        t = time.monotonic()
        try:
            resp = self._stub.Recommend(req, timeout=self.timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            # a call still in flight when the next step takes inference down counts as made with it down
            down = down or self.load.inference_down
            self.load.calls.append(Call(t, phase, down, "error", exc.code().name, (exc.details() or "")[:300]))
            return None
        self.load.calls.append(Call(t, phase, down, "fallback" if resp.fallback else "model",
                                    resp.fallback_reason if resp.fallback else ""))
        return resp

    def close(self) -> None:
        self._channel.close()
