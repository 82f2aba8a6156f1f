"""`recpilot bench rl-join`: the reward joiner (services.rl_feedback) as its own process.

Phase 1 (throughput): N impressions (10 shown items each, a pool of 40 with dense inputs, as
inference logs them) and outcome events for a share of them are produced to the bench's own topics
as a backlog, with event times spaced as a stream; then ``--replicas`` rl_feedback processes (one
consumer group: the partitions split between them) join them.
Reported: impressions joined per second (first to last reward committed) and per CPU-second of the
process. Phase 2 (latency): impressions and their outcomes produced live at a rate, event time =
wall time; reported: reward latency = reward ``published_ms`` minus the outcome's event time
(p50/p99), and the time until a read_committed consumer sees the reward. Both phases check that
every (request, item) got exactly one reward with the expected flags and revenue.

The traffic builder (:func:`make_traffic`) also feeds the integration and fault tests.
"""

from __future__ import annotations

import argparse
import heapq
import random
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from recpilot.featurespec import DENSE_FEATURES
from recpilot.pb import events_pb2

D = len(DENSE_FEATURES)
Expect = tuple[bool, bool, bool, float]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Traffic:
    """Messages (key, value, event time) per topic and the rewards they must give."""

    impressions: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    events: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    expected: dict[tuple[str, str], Expect] = field(default_factory=dict)
    outcome_ts: dict[tuple[str, str], int] = field(default_factory=dict)


def make_traffic(n: int, *, prefix: str, t0_ms: int, spacing_ms: float, items: int = 10, pool: int = 40,
                 outcome_share: float = 0.3, no_request_share: float = 0.2, duplicate_share: float = 0.05,
                 max_delay_ms: int = 1_000, n_users: int = 5_000, seed: int = 0) -> Traffic:
    """``n`` impressions of ``items`` shown items (event time ``t0_ms + i * spacing_ms``); for a
    share of them a click on one item ``1..max_delay_ms`` later, sometimes followed by an
    add-to-cart and a purchase, some without request id (attributed by user + item: item ids are
    unique per impression, so attribution is unambiguous), some sent twice (the same event id) and
    some clicked twice (a second event id)."""
    rng = random.Random(seed)
    t = Traffic()
    dense = struct.unpack(f"{pool * D}f", struct.pack(f"{pool * D}f", *(rng.random() for _ in range(pool * D))))
    for i in range(n):
        rid = f"{prefix}-{i}"
        user = f"u{rng.randrange(n_users)}"
        ts = t0_ms + int(i * spacing_ms)
        imp = events_pb2.Impression(request_id=rid, user_id=user, session_id=f"s-{user}", surface="recommend",
                                    model_name="bench", model_version="1", policy_version="ranker-order",
                                    timestamp_ms=ts, variant="production", exploration="greedy")
        imp.features["user:clicks_1h"] = float(i % 7)
        pool_ids = [f"{rid}:{j}" for j in range(pool)]
        imp.pool_item_ids.extend(pool_ids)
        imp.pool_scores.extend([1.0 - j / pool for j in range(pool)])
        imp.pool_dense.extend(dense)
        for j in range(items):
            imp.items.add(item_id=pool_ids[j], position=j + 1, score=1.0 - j / pool, propensity=1.0, pool_index=j)
            t.expected[(rid, pool_ids[j])] = (False, False, False, 0.0)
        key = user.encode()
        t.impressions.append((key, imp.SerializeToString(), ts))
        if rng.random() >= outcome_share:
            continue
        item = pool_ids[rng.randrange(items)]
        ets = ts + rng.randint(1, max_delay_ms)
        req = "" if rng.random() < no_request_share else rid
        kinds = [events_pb2.CLICK]
        if rng.random() < 0.1:
            kinds.append(events_pb2.CLICK)  # a second click: counted once
        if rng.random() < 0.3:
            kinds.append(events_pb2.ADD_TO_CART)
            if rng.random() < 0.5:
                kinds.append(events_pb2.PURCHASE)
        flags = [False, False, False]
        revenue = 0.0
        for k, kind in enumerate(kinds):
            price = round(rng.uniform(5, 50), 2) if kind == events_pb2.PURCHASE else 0.0
            ev = events_pb2.UserEvent(event_id=f"{rid}-e{k}", user_id=user, event_type=kind, item_id=item,
                                      timestamp_ms=ets + k, request_id=req, price=price)
            value = ev.SerializeToString()
            t.events.append((key, value, ets + k))
            if rng.random() < duplicate_share:
                t.events.append((key, value, ets + k))  # the same event id again
            flags[{events_pb2.CLICK: 0, events_pb2.ADD_TO_CART: 1, events_pb2.PURCHASE: 2}[kind]] = True
            revenue += price
            t.outcome_ts[(rid, item)] = ets + k
        t.expected[(rid, item)] = (flags[0], flags[1], flags[2], revenue)
    return t


def reward_value(e: Expect, click: float, cart: float, purchase: float, rev: float) -> float:
    return click * e[0] + cart * e[1] + purchase * e[2] + rev * e[3]


class RewardReader:
    """Reads a rewards topic (read_committed) in a thread: every reward with its receive time."""

    def __init__(self, platform, topic: str) -> None:
        from recpilot import kafka as rkafka

        self.rewards: list[tuple[events_pb2.Reward, int]] = []
        self._c = rkafka.consumer(platform, f"bench-rl-join-reader-{uuid.uuid4().hex[:8]}",
                                  **{"isolation.level": "read_committed"})
        self._c.subscribe([topic])
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        parse = events_pb2.Reward.FromString
        while not self._stop.is_set():
            for m in self._c.consume(10_000, 0.1):
                if m.error() is None:
                    self.rewards.append((parse(m.value()), now_ms()))

    def close(self) -> None:
        self._stop.set()
        self._t.join(10)
        self._c.close()


def check(rewards: list[events_pb2.Reward], t: Traffic, weights=(1.0, 0.0, 0.0, 0.0)) -> list[str]:
    """What is wrong with ``rewards`` against the traffic's expected rewards (empty: all right)."""
    problems = []
    seen: dict[tuple[str, str], events_pb2.Reward] = {}
    for r in rewards:
        k = (r.request_id, r.item_id)
        if k in seen:
            problems.append(f"second reward for {k}")
        seen[k] = r
    missing = set(t.expected) - set(seen)
    if missing:
        problems.append(f"{len(missing)} rewards missing, e.g. {sorted(missing)[:3]}")
    extra = set(seen) - set(t.expected)
    if extra:
        problems.append(f"{len(extra)} unexpected rewards, e.g. {sorted(extra)[:3]}")
    wrong = []
    for k, r in seen.items():
        e = t.expected.get(k)
        if e is None:
            continue
        got = (r.clicked, r.added_to_cart, r.purchased, round(r.revenue, 2))
        want_r = reward_value(e, *weights)
        if got != (e[0], e[1], e[2], round(e[3], 2)) or abs(r.reward - want_r) > 1e-6:
            wrong.append((k, got, e, r.reward, want_r))
    if wrong:
        problems.append(f"{len(wrong)} rewards with wrong values, e.g. {wrong[:3]}")
    return problems


def produce_all(platform, topic_of: dict[str, str], t: Traffic, events_first: bool = False) -> None:
    from recpilot import kafka as rkafka

    prod = rkafka.producer(platform, **{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    order = [("events", t.events), ("impressions", t.impressions)]
    if not events_first:
        order.reverse()
    for kind, msgs in order:
        topic = topic_of[kind]
        for key, value, _ts in msgs:
            rkafka.produce_waiting(prod, topic, value, key)
        prod.poll(0)
    rkafka.flush_or_raise(prod, 60)


def topic_names(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}.{k}" for k in ("impressions", "events", "rewards", "changelog", "metrics")}


def service_settings(names: dict[str, str], group: str, **extra) -> dict:
    return {"impressions_topic": names["impressions"], "events_topic": names["events"],
            "rewards_topic": names["rewards"], "changelog_topic": names["changelog"],
            "metrics_topic": names["metrics"], "group_id": group, "learner_enabled": "false", **extra}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run(args: argparse.Namespace) -> int:
    from recpilot import kafka as rkafka
    from recpilot.errors import FailedPrecondition
    from recpilot.settings import PlatformSettings, load
    from recpilot.stack.process import ServiceProcess
    from bench.machine import busy_cores, machine, thread_cpu

    p = load(PlatformSettings)
    prefix = f"bench-rl-join-{uuid.uuid4().hex[:8]}"
    names = topic_names(prefix)
    rkafka.create_topics(p, list(names.values()), args.partitions)
    window_ms = int(args.window * 1000)
    settings = service_settings(names, prefix, window_s=args.window, grace_ms=args.grace_ms,
                                instance_id=prefix, batch_size=args.batch_size)
    log_dir = Path(p.home) / "logs"
    print(machine())
    procs: list = []
    reader = RewardReader(p, names["rewards"])
    failed = []
    try:
        # Phase 1: a backlog, event times spaced as a stream at the target rate, ending a window ago
        n = args.impressions
        spacing = 1000.0 / args.stream_rate
        t0 = now_ms() - int(n * spacing) - window_ms - 2_000
        traffic = make_traffic(n, prefix=f"{prefix}-b", t0_ms=t0, spacing_ms=spacing, items=args.items,
                               outcome_share=args.outcome_share, seed=1)
        tp = time.perf_counter()
        produce_all(p, names, traffic)
        print(f"produced {n} impressions x {args.items} items and {len(traffic.events)} outcome events "
              f"in {time.perf_counter() - tp:.1f}s")
        for r in range(args.replicas):
            procs.append(ServiceProcess("services.rl_feedback", log_dir / f"{prefix}-{r}.log",
                                        settings={**settings, "instance_id": f"{prefix}-{r}"},
                                        env={"OMP_NUM_THREADS": "1"}).start())
        cpu0, threads0 = 0.0, []
        for r, proc in enumerate(procs):  # the clock starts when the first replica is ready
            proc.wait_ready(120)
            if r == 0:
                t_ready, ready_ms = time.monotonic(), now_ms()
            cpu0 += proc.cpu_seconds()
            threads0.append(thread_cpu(proc.pid))
        want = len(traffic.expected)
        while len(reader.rewards) < want:
            for proc in procs:
                if not proc.alive():
                    raise FailedPrecondition(f"rl_feedback exited:\n{proc.log_tail(40)}")
            if time.monotonic() - t_ready > args.timeout:
                break
            time.sleep(0.05)
        got = [r for r, _ in reader.rewards]
        wall = time.monotonic() - t_ready
        cpu = sum(pr.cpu_seconds() for pr in procs) - cpu0
        threads1 = [thread_cpu(pr.pid) for pr in procs]
        loop_cpu = sum(t1.get("rl-feedback-loo", 0.0) - t0.get("rl-feedback-loo", 0.0)
                       for t0, t1 in zip(threads0, threads1))
        busy = "; ".join(busy_cores(t0, t1, wall) for t0, t1 in zip(threads0, threads1))
        pubs = sorted(r.published_ms for r in got) or [ready_ms]
        done_s = (pubs[-1] - ready_ms) / 1000.0
        problems = check(got, traffic)
        failed += problems
        print(f"throughput, {args.replicas} replica(s): {n} impressions ({len(got)} rewards) joined, ready -> last "
              f"reward published {done_s:.2f}s = {n / max(done_s, 1e-9):,.0f} impressions/s (first reward "
              f"published {(pubs[0] - ready_ms) / 1000:.2f}s after ready: windows close as the backlog's event time "
              f"advances); CPU {cpu:.1f}s = {n / max(cpu, 1e-9):,.0f} impressions per CPU-second, "
              f"{n / max(loop_cpu, 1e-9):,.0f} per CPU-second of the join threads (GIL-bound: one core per replica at "
              f"most); cores busy: {busy}; peak RSS {max(pr.peak_rss_mb() for pr in procs):.0f} MB per replica; "
              f"check: {'ok' if not problems else problems}")

        # Phase 2: live traffic at a rate; outcomes produced when their event time comes
        if args.duration > 0:
            reader.rewards.clear()
            m = int(args.rate * args.duration)
            live = make_traffic(m, prefix=f"{prefix}-l", t0_ms=now_ms() + 500, spacing_ms=1000.0 / args.rate,
                                items=args.items, outcome_share=args.outcome_share, seed=2,
                                max_delay_ms=min(window_ms // 2, 5_000))
            queue = [(ts, 0, k, v) for k, v, ts in live.impressions] + [(ts, 1, k, v) for k, v, ts in live.events]
            heapq.heapify(queue)
            prod = rkafka.producer(p, **{"linger.ms": 5})
            while queue:
                ts, kind, k, v = heapq.heappop(queue)
                wait = (ts - now_ms()) / 1000.0
                if wait > 0:
                    prod.poll(0)
                    time.sleep(wait)
                prod.produce(names["events" if kind else "impressions"], v, k)
            rkafka.flush_or_raise(prod, 30)
            deadline = time.monotonic() + args.window + 30
            while len(reader.rewards) < len(live.expected) and time.monotonic() < deadline:
                time.sleep(0.05)
            pub, vis = [], []
            for r, seen_ms in reader.rewards:
                if r.outcome_ts_ms:
                    pub.append(r.published_ms - r.outcome_ts_ms)
                    vis.append(seen_ms - r.outcome_ts_ms)
            problems = check([r for r, _ in reader.rewards], live)
            failed += problems
            print(f"latency at {args.rate:,.0f} impressions/s for {args.duration:.0f}s, window {args.window:g}s, "
                  f"grace {args.grace_ms} ms: outcome event time -> published_ms p50 {_pct(pub, 0.5):,.0f} ms, "
                  f"p99 {_pct(pub, 0.99):,.0f} ms (p99 minus window {_pct(pub, 0.99) - window_ms:,.0f} ms); "
                  f"-> visible to a read_committed consumer p50 {_pct(vis, 0.5):,.0f} ms, p99 {_pct(vis, 0.99):,.0f} ms; "
                  f"{len(pub)} rewards with outcomes; check: {'ok' if not problems else problems}")
    finally:
        reader.close()
        for proc in procs:
            proc.stop(30)
        if not args.keep_topics:
            rkafka.delete_topics(p, list(names.values()))
    return 1 if failed else 0
