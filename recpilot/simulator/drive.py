"""Drive Kafka with simulated traffic: an open-loop generator that holds a rate, and the shopper
simulator that asks the Recommender (when it answers) and clicks by the position-bias model.

Both take an already-built confluent-kafka ``Producer``; nothing here reads settings."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from recpilot.kafka import produce_waiting
from recpilot.net import grpc_target
from recpilot.simulator.traffic import CLICK, ShopSimulator, TrafficMix

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class RunResult:
    sent: int = 0
    seconds: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    delivery_errors: int = 0
    behind_s: float = 0.0  # how far the generator was behind its schedule at the end
    recommend_calls: int = 0
    recommend_failures: int = 0
    # closed loop: items shown in answered recommendations and the shoppers' clicks on them, in
    # total and per policy version that chose the list (the CTR line `recpilot simulate` prints)
    shown: int = 0
    clicks: int = 0
    by_policy: dict[str, list[int]] = field(default_factory=dict)  # policy version -> [shown, clicks]
    by_model: dict[str, list[int]] = field(default_factory=dict)   # ranker version -> [shown, clicks]

    @property
    def ctr(self) -> float:
        return self.clicks / self.shown if self.shown else 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def open_loop(producer, topic: str, mix: TrafficMix, rate: float, duration_s: float | None = None,
              count: int | None = None, stop: Callable[[], bool] | None = None,
              progress: Callable[[RunResult], None] | None = None, progress_every_s: float = 5.0,
              on_record: Callable[[bytes, bytes, str], None] | None = None) -> RunResult:
    """Send records on a fixed schedule (record ``n`` is due at ``n / rate`` s), independent of how
    the system under test keeps up. ``rate <= 0`` sends as fast as possible. Stops after
    ``duration_s``, ``count`` records, or when ``stop()`` is true; then flushes."""
    res = RunResult()
    errors = []

    def on_delivery(err, _msg):
        if err is not None:
            errors.append(err)

    t0 = time.monotonic()
    next_progress = t0 + progress_every_s
    sent = 0
    chunk = 2000
    while True:
        now = time.monotonic()
        el = now - t0
        if (duration_s is not None and el >= duration_s) or (count is not None and sent >= count):
            break
        if stop is not None and stop():
            break
        if rate > 0:
            due = int(rate * el) + 1
            if duration_s is not None:
                due = min(due, int(rate * duration_s))
            n = due - sent
            if n <= 0:
                time.sleep(min(0.005, max(0.0, (sent + 1) / rate - el)))
                continue
            n = min(n, chunk)
        else:
            n = chunk
        if count is not None:
            n = min(n, count - sent)
        now_ms = _now_ms()
        for _ in range(n):
            key, value, kind = mix.next(now_ms)
            produce_waiting(producer, topic, value, key)
            if on_record is not None:
                on_record(key, value, kind)
        sent += n
        producer.poll(0)
        if progress is not None and now >= next_progress:
            res.sent, res.seconds, res.kinds = sent, el, dict(mix.counts)
            progress(res)
            next_progress = now + progress_every_s
    res.seconds = time.monotonic() - t0
    if rate > 0:
        res.behind_s = max(0.0, res.seconds - sent / rate) if duration_s is None else 0.0
    remaining = producer.flush(60)
    res.sent = sent
    res.kinds = dict(mix.counts)
    res.delivery_errors = len(errors) + remaining
    return res


class RecommenderProbe:
    """A Recommender client that never raises: ``recommend()`` returns None when the server is
    absent or fails, and waits ``retry_s`` before trying again. ``address``: one ``host:port``, or
    the replicas' addresses comma-separated (calls spread round-robin: :func:`recpilot.net.grpc_target`)."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout_s: float = 0.5, retry_s: float = 5.0) -> None:
        self.address, self.timeout_s, self.retry_s = address, timeout_s, retry_s
        self._stub = None
        self._channel = None
        self._down_until = 0.0
        self.available = False

    def _connect(self):
        import grpc

        from recpilot.pb import recommend_pb2_grpc

        target, options = grpc_target(self.address)  # "a,b": round-robin over the replicas
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = recommend_pb2_grpc.RecommenderStub(self._channel)

    @property
    def backing_off(self) -> bool:
        """True while waiting to retry after a failure (no call would be made)."""
        return time.monotonic() < self._down_until

    def recommend(self, user_id: str, session_id: str, k: int = 10, context: dict | None = None):
        if self.backing_off:
            return None
        try:
            from recpilot.pb import recommend_pb2

            if self._stub is None:
                self._connect()
            req = recommend_pb2.RecommendRequest(user_id=user_id, k=k, session_id=session_id,
                                                 request_id=uuid.uuid4().hex, context=context or {})
            resp = self._stub.Recommend(req, timeout=self.timeout_s)
            if not self.available:
                log.info("recommender answers; shoppers now use its recommendations", extra={"address": self.address})
            self.available = True
            return resp
        except Exception as exc:  # absent, not ready, or any error: fall back to open-loop traffic
            if self.available:
                log.warning("recommender stopped answering; plain open-loop traffic", extra={"error": str(exc)[:200]})
            self.available = False
            self._down_until = time.monotonic() + self.retry_s
            return None

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def simulate(producer, topic: str, sim: ShopSimulator, rate: float, probe: RecommenderProbe | None,
             recommend_share: float = 0.3, duration_s: float | None = None,
             stop: Callable[[], bool] | None = None, fmt: str = "proto",
             progress: Callable[[RunResult], None] | None = None, progress_every_s: float = 10.0) -> RunResult:
    """Shoppers at about ``rate`` events/s. With probability ``recommend_share`` a step asks the
    Recommender for 10 items; the shopper examines them with position bias and clicks, carts and
    buys by the click model, with the response's ``request_id`` on those events. When the server
    does not answer, the step is a plain open-loop event."""
    mix = TrafficMix(sim, fmt=fmt)
    res = RunResult()
    t0 = time.monotonic()
    next_progress = t0 + progress_every_s
    sent = 0
    while True:
        el = time.monotonic() - t0
        if (duration_s is not None and el >= duration_s) or (stop is not None and stop()):
            break
        due = int(rate * el) + 1
        if due <= sent:
            time.sleep(min(0.05, max(0.0, (sent + 1) / rate - el)))
            continue
        now_ms = _now_ms()
        records: list[tuple[bytes, bytes]] = []
        kind = "open_loop"
        if probe is not None and not probe.backing_off and sim.rng.random() < recommend_share:
            user = sim.population.sample(sim.rng.random())
            session_id = f"s-{sim._run}-{sim.rng.getrandbits(40):010x}"
            resp = probe.recommend(user.user_id, session_id, 10, {"device": "web", "page": "home"})
            res.recommend_calls += 1
            if resp is None:
                res.recommend_failures += 1
            else:
                kind = "recommended"
                ranked = [it.item_id for it in sorted(resp.items, key=lambda x: x.position)]
                clicks = 0
                for ev in sim.outcomes_for(user, session_id, ranked, resp.request_id, now_ms):
                    records.append((ev.user_id.encode(), mix.encode(ev)))
                    clicks += ev.event_type == CLICK
                counts = res.by_policy.setdefault(resp.policy_version or "-", [0, 0])
                counts[0] += len(ranked)
                counts[1] += clicks
                counts = res.by_model.setdefault(resp.model_version or "-", [0, 0])
                counts[0] += len(ranked)
                counts[1] += clicks
                res.shown += len(ranked)
                res.clicks += clicks
                if not records:
                    sent += 1  # a shopper who looked and did nothing still took a step
                    continue
        if not records:
            key, value, _ = mix.next(now_ms)
            records.append((key, value))
        for key, value in records:
            produce_waiting(producer, topic, value, key)
        res.kinds[kind] = res.kinds.get(kind, 0) + len(records)
        sent += len(records)
        producer.poll(0)
        if progress is not None and time.monotonic() >= next_progress:
            res.sent, res.seconds = sent, time.monotonic() - t0
            progress(res)
            next_progress = time.monotonic() + progress_every_s
    res.seconds = time.monotonic() - t0
    res.delivery_errors = producer.flush(30)
    res.sent = sent
    return res
