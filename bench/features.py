"""`recpilot bench features`: the real worker process (`python -m services.features`) against the
configured Kafka and Redis, on a fresh topic, key prefix and consumer group.

1. Throughput: a backlog of ``--events`` events is produced first; the worker is started and the
   time from its first applied batch to the last is measured (offsets read from Redis, i.e. what
   is really applied) -> sustained events/s.
2. Freshness: events are produced open-loop at ``--rate`` for ``--duration`` seconds, each stamped
   with its send time; the worker's own freshness histogram (event time -> visible in Redis) is
   scraped before and after -> p50/p99 (interpolated inside histogram buckets) and the exact share
   of events visible within 250 ms (a bucket bound). Consumer lag (end offsets minus the offsets
   applied in Redis) is sampled every 0.5 s.
3. Peak memory: the worker's VmHWM, and Redis used_memory growth.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid

from bench.machine import machine_info as machine
from recpilot.settings import PlatformSettings, load
from recpilot.stack.process import ServiceProcess


def parse_histogram(text: str, name: str) -> tuple[list[float], list[float], float]:
    """Cumulative buckets (bounds, counts) and count of a Prometheus histogram from /metrics text."""
    bounds, counts = [], []
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        bounds.append(float("inf") if m.group(1) == "+Inf" else float(m.group(1)))
        counts.append(float(m.group(2)))
    return bounds, counts, counts[-1] if counts else 0.0


def histogram_quantile(q: float, bounds: list[float], cum: list[float]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    total = cum[-1] if cum else 0
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_b, prev_c = 0.0, 0.0
    for b, c in zip(bounds, cum):
        if c >= rank:
            if b == float("inf"):
                return prev_b
            return prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_b, prev_c = b, c
    return bounds[-2] if len(bounds) > 1 else float("nan")


def _used_memory(r) -> int:
    """Redis used_memory, summed over the masters of a cluster."""
    if hasattr(r, "get_nodes"):
        info = r.info("memory", target_nodes=r.PRIMARIES)
        return sum(v["used_memory"] for v in info.values()) if "used_memory" not in info else info["used_memory"]
    return r.info("memory")["used_memory"]


class _Lag:
    """Events in the topic (its end offsets) and events applied (the offsets the worker stored in Redis,
    read through the feature client: every shard's)."""

    def __init__(self, platform, topic: str, prefix: str, client):
        from recpilot.kafka import TopicReader

        self.reader = TopicReader(platform, topic, group_id=f"bench-lag-{uuid.uuid4().hex[:6]}")
        self.prefix, self.client = prefix, client
        self.parts = self.reader.partitions()

    def applied(self) -> int:
        return sum(v + 1 for v in self.client.offsets().values())

    def end(self) -> int:
        return sum(self.reader.end_offsets(self.parts, timeout=5).values())

    def close(self):
        self.reader.close()


def read_api_latency(redis_url: str, prefix: str, sim, calls: int, shards: int = 1, cluster: bool = False) -> dict:
    """Sequential FeatureClient calls on the data the run wrote: fetch(user, 100 items) and
    candidates(user, 100), as inference makes them (one client, one connection)."""
    import random

    from services.features.client import FeatureClient

    if calls <= 0:
        return {}
    rng = random.Random(3)
    c = FeatureClient(redis_url, prefix, shards=shards, cluster=cluster)
    now = int(time.time() * 1000)
    fetch_ms, cand_ms = [], []
    try:
        c.fetch(sim.population.user(0).user_id, [it.item_id for it in sim.items[:100]], now)  # loads the script
        for _ in range(calls):
            uid = sim.population.sample(rng.random()).user_id
            items = [sim.global_sampler.sample(rng.random()).item_id for _ in range(100)]
            t0 = time.perf_counter()
            c.fetch(uid, items, now)
            fetch_ms.append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            c.candidates(uid, 100, now)
            cand_ms.append(1000 * (time.perf_counter() - t0))
    finally:
        c.close()
    fetch_ms.sort()
    cand_ms.sort()
    q = lambda v, p: round(v[min(len(v) - 1, int(p * len(v)))], 2)  # noqa: E731
    return {"calls": calls, "fetch_user_100_items_p50_ms": q(fetch_ms, .5), "fetch_p99_ms": q(fetch_ms, .99),
            "candidates_100_p50_ms": q(cand_ms, .5), "candidates_p99_ms": q(cand_ms, .99)}


def _delete(r, keys) -> None:
    if hasattr(r, "get_nodes"):  # a cluster: one DEL per key (keys of many slots)
        for k in keys:
            r.delete(k)
    else:
        r.delete(*keys)


def run(args) -> int:
    from recpilot.kafka import create_topics, delete_topics, producer
    from recpilot.simulator import ShopSimulator

    platform = load(PlatformSettings)
    tag = uuid.uuid4().hex[:8]
    topic = f"bench.features.{tag}"
    prefix = f"benchf{tag}:"
    parts = args.partitions or platform.events_partitions
    create_topics(platform, [topic], parts)
    from services.features.client import FeatureClient, connect

    r = connect(platform.redis_url, platform.redis_cluster)
    reader = FeatureClient(platform.redis_url, prefix, shards=platform.redis_shards, cluster=platform.redis_cluster)
    mem0 = _used_memory(r)
    sim = ShopSimulator(seed=11, n_users=args.users, n_items=args.items, run_id=f"bench{tag}")
    prod = producer(platform, **{"client.id": "bench-features", "linger.ms": 5})
    out: dict = {"machine": machine(), "topic_partitions": parts, "users": args.users, "items": args.items,
                 "redis_shards": platform.redis_shards, "redis_cluster": platform.redis_cluster,
                 "command": "recpilot bench features " + " ".join(sys.argv[3:])}
    proc = None
    lag = None
    try:
        # -- phase 1: backlog ---------------------------------------------------------------
        if args.events > 0:
            print(f"producing a backlog of {args.events:,} events to {topic} ...", flush=True)
            now = int(time.time() * 1000)
            for i, ev in enumerate(sim.events(args.events, now - args.events, 1.0)):
                prod.produce(topic, key=ev.user_id.encode(), value=ev.SerializeToString())
                if i % 10000 == 0:
                    prod.poll(0)
            prod.flush(60)
        env = {"RECPILOT_FEATURES_INPUT_TOPIC": topic, "RECPILOT_FEATURES_APP_ID": f"bench-features-{tag}",
               "RECPILOT_FEATURES_KEY_PREFIX": prefix,
               "RECPILOT_FEATURES_METRICS_TOPIC": f"bench.features.metrics.{tag}",
               "RECPILOT_FEATURES_DATADIR": str(platform.home / "bench" / f"features-{tag}")}
        log_path = platform.home / "logs" / f"bench-features-{tag}.log"
        proc = ServiceProcess("services.features", log_path, env=env).start()
        t_start = time.monotonic()
        while proc.address is None and time.monotonic() - t_start < 60:
            if not proc.alive():
                raise RuntimeError(f"worker exited; see {log_path}")
            time.sleep(0.1)
        if proc.address is None:
            raise RuntimeError(f"worker did not start; see {log_path}")
        lag = _Lag(platform, topic, prefix, reader)
        if args.events > 0:
            first = None
            t_first = t_last = None
            last_applied = 0
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                a = lag.applied()
                t = time.monotonic()
                if a > 0 and first is None:
                    first, t_first = a, t
                    cpu_first = proc.cpu_seconds()
                if a != last_applied:
                    last_applied, t_last = a, t
                if a >= args.events:
                    break
                if not proc.alive():
                    raise RuntimeError(f"worker exited; see {log_path}")
                time.sleep(0.05)
            done = last_applied - (first or 0)
            secs = (t_last - t_first) if t_first and t_last else 0.0
            cpu = proc.cpu_seconds() - cpu_first if first is not None else 0.0
            out["throughput"] = {"events": args.events, "applied": last_applied,
                                 "worker_cpu_us_per_event": round(1e6 * cpu / done, 1) if done else None,
                                 "events_per_s": round(done / secs, 1) if secs > 0 else None,
                                 "seconds": round(secs, 2), "startup_to_ready_s": round(t_first - t_start, 2) if t_first else None}
            print(f"throughput: {out['throughput']}", flush=True)
        proc.wait_ready(120)  # assigned and Redis answering, for the freshness phase
        if args.duration > 0:
            _, before = proc.get("/metrics")
            b0, c0, n0 = parse_histogram(before, "recpilot_features_freshness_seconds")
            print(f"freshness: {args.rate:g} events/s for {args.duration:g} s ...", flush=True)
            lags = []
            rss = []
            sent = 0
            cpu0 = proc.cpu_seconds()
            gen = sim.events(10**12, int(time.time() * 1000), 0.0)
            t0 = time.monotonic()
            next_lag = t0
            progress_every = 30.0 if args.duration >= 120 else 0.0
            next_progress = progress_every
            while True:
                now = time.monotonic()
                el = now - t0
                if el >= args.duration:
                    break
                due = int(el * args.rate)
                ts = int(time.time() * 1000)
                while sent < due:
                    ev = next(gen)
                    ev.timestamp_ms = ts
                    prod.produce(topic, key=ev.user_id.encode(), value=ev.SerializeToString())
                    sent += 1
                prod.poll(0)
                if now >= next_lag:
                    prod.flush(5)
                    lags.append(max(0, lag.end() - lag.applied()))
                    rss.append((round(el), proc.rss_mb()))
                    next_lag = now + 0.5
                    if progress_every and el >= next_progress:
                        print(f"  {el:5.0f}s sent={sent} lag={lags[-1]} worker_rss={rss[-1][1]:.0f}MB", flush=True)
                        next_progress += progress_every
                time.sleep(0.002)
            prod.flush(30)
            cpu = proc.cpu_seconds() - cpu0
            target = lag.end()
            t_end = time.monotonic() + 60
            while lag.applied() < target and time.monotonic() < t_end:
                time.sleep(0.05)
            time.sleep(0.2)
            _, after = proc.get("/metrics")
            b1, c1, n1 = parse_histogram(after, "recpilot_features_freshness_seconds")
            cum = [y - x for x, y in zip(c0, c1)] if c0 else c1
            within = dict(zip(b1, cum)).get(0.25, float("nan"))
            total = cum[-1] if cum else 0
            out["freshness"] = {
                "rate": args.rate, "seconds": args.duration, "sent": sent,
                "achieved_rate": round(sent / args.duration, 1), "observed": int(total),
                "p50_ms": round(1000 * histogram_quantile(0.5, b1, cum), 1),
                "p99_ms": round(1000 * histogram_quantile(0.99, b1, cum), 1),
                "share_within_250ms": round(within / total, 5) if total else None,
                "lag_mean": round(sum(lags) / len(lags), 1) if lags else None,
                "lag_max": max(lags) if lags else None,
                "worker_cpu_us_per_event": round(1e6 * cpu / sent, 1) if sent else None,
                "worker_rss_mb_first_minute_max": round(max((v for t, v in rss if t <= 60), default=0), 1),
                "worker_rss_mb_last_minute_max": round(max((v for t, v in rss if t >= rss[-1][0] - 60), default=0), 1)
                if rss else None,
            }
            print(f"freshness: {out['freshness']}", flush=True)
        out["read_api"] = read_api_latency(platform.redis_url, prefix, sim, args.read_calls, platform.redis_shards,
                                           platform.redis_cluster)
        print(f"read API: {out['read_api']}", flush=True)
        out["worker_peak_rss_mb"] = round(proc.peak_rss_mb(), 1)
        out["redis_used_memory_growth_mb"] = round((_used_memory(r) - mem0) / 2**20, 1)
    finally:
        if proc is not None:
            proc.stop()
        if lag is not None:
            lag.close()
        if not args.keep:
            import shutil

            shutil.rmtree(platform.home / "bench" / f"features-{tag}", ignore_errors=True)
            delete_topics(platform, [topic, f"bench.features.metrics.{tag}"], timeout=10)
            for pattern in (f"{prefix}*", f"{{{prefix}*"):  # (and the shard-tagged keys)
                batch = []
                for k in r.scan_iter(pattern, count=1000):
                    batch.append(k)
                    if len(batch) >= 500:  # small DELs: the Redis may be shared
                        _delete(r, batch)
                        batch = []
                if batch:
                    _delete(r, batch)
        reader.close()
    print(json.dumps(out, indent=None if args.json else 2))
    return 0
