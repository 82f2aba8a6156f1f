"""`recpilot bench ingest`: one real ingest process (``python -m services.ingest``) on fresh topics.

Phase 1 (backlog): ``--events`` messages (with the given malformed and duplicate shares) are
written to a fresh raw topic first; then ingest starts and drains them. Sustained events/s =
messages whose offsets were committed (together with their clean/DLQ output) divided by the time
from the first to the last commit progress, sampled every 0.25 s from the group's committed
offsets. Phase 2 (``--rate R``): an open-loop generator sends R events/s for ``--duration`` s
while ingest runs; consumer lag (end offset - committed offset) is sampled every 0.5 s.
Peak RSS is the ingest process's VmHWM. Afterwards the outputs are counted and compared with
what was sent (valid distinct -> clean, malformed -> DLQ).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from bench.machine import machine
from recpilot import kafka as rkafka
from recpilot.settings import PlatformSettings, load
from recpilot.simulator import ShopSimulator, TrafficMix
from recpilot.simulator.drive import open_loop
from recpilot.stack.process import ServiceProcess


def _sum_committed(p, group, topic, parts) -> int:
    return sum(rkafka.committed_offsets(p, group, topic, parts).values())


def run(args: argparse.Namespace) -> int:
    p = load(PlatformSettings)
    run_id = uuid.uuid4().hex[:8]
    raw, clean, dlq, met = (f"bench-ingest-{run_id}.{x}" for x in ("raw", "clean", "dlq", "metrics"))
    group = f"bench-ingest-{run_id}"
    names = [raw, clean, dlq, met]
    rkafka.create_topics(p, names, args.partitions)
    print(f"machine: {machine()}")
    print(f"broker {p.kafka_bootstrap}; topics {raw} -> {clean} / {dlq} ({args.partitions} partitions); "
          f"transactions {'on' if args.transactions else 'off'}; batch {args.batch_size}; format {args.format}")
    parts = list(range(args.partitions))
    proc = None
    try:
        sim = ShopSimulator(seed=7, n_users=50_000, n_items=20_000)
        mix = TrafficMix(sim, args.malformed_share, args.duplicate_share, args.format)
        prod = rkafka.producer(p, **{"client.id": "bench-ingest-gen", "linger.ms": 50})
        t0 = time.monotonic()
        res = open_loop(prod, raw, mix, 0, count=args.events)
        print(f"phase 1: wrote {res.sent:,} raw messages in {time.monotonic() - t0:.1f}s ({res.kinds})")

        log_path = p.home / "logs" / f"bench-ingest-{run_id}.log"
        settings = {"raw_topic": raw, "clean_topic": clean, "dlq_topic": dlq, "metrics_topic": met, "group_id": group,
                    "transactional": str(args.transactions).lower(), "batch_size": args.batch_size,
                    "metrics_interval_s": 2}
        t_start = time.monotonic()
        proc = ServiceProcess("services.ingest", log_path, settings=settings).start()
        proc.wait_ready(90)
        print(f"ingest pid {proc.pid} ready in {time.monotonic() - t_start:.1f}s (log {log_path})")

        total = res.sent
        samples: list[tuple[float, int]] = []
        first_progress = None
        deadline = time.monotonic() + max(120.0, total / 2000)
        while time.monotonic() < deadline:
            done = _sum_committed(p, group, raw, parts)
            now = time.monotonic()
            samples.append((now, done))
            if done > 0 and first_progress is None:
                first_progress = samples[-2] if len(samples) > 1 else samples[-1]
            if done >= total:
                break
            if not proc.alive():
                raise RuntimeError(f"ingest exited with {proc.returncode}; see {log_path}")
            time.sleep(0.25)
        done_t, done_n = samples[-1]
        if done_n < total:
            print(f"phase 1: only {done_n:,} of {total:,} committed before the deadline")
        t_first, n_first = first_progress or samples[0]
        span = done_t - t_first
        rate = (done_n - n_first) / span if span > 0 else float("nan")
        # steady-state rate: the middle 80% of the drain
        lo_n, hi_n = n_first + 0.1 * (done_n - n_first), n_first + 0.9 * (done_n - n_first)
        mid = [(t, n) for t, n in samples if lo_n <= n <= hi_n]
        mid_rate = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) > 2 and mid[-1][0] > mid[0][0] else rate
        print(f"phase 1 (backlog drain): {done_n:,} messages raw->clean/dlq in {span:.2f}s = "
              f"{rate:,.0f} events/s overall, {mid_rate:,.0f} events/s in the middle 80%")

        lag_samples: list[int] = []
        rate2 = None
        if args.rate > 0:
            mix2 = TrafficMix(ShopSimulator(seed=8, n_users=50_000, n_items=20_000),
                              args.malformed_share, args.duplicate_share, args.format)
            stop_at = time.monotonic() + args.duration
            import threading

            result = {}

            def gen():
                result["r"] = open_loop(prod, raw, mix2, args.rate, args.duration)

            th = threading.Thread(target=gen, daemon=True)
            th.start()
            rss_trace: list[tuple[float, float]] = []
            next_rss = time.monotonic()
            while time.monotonic() < stop_at + 1.0:
                ends = rkafka.end_offsets(p, raw)
                com = rkafka.committed_offsets(p, group, raw, parts)
                lag_samples.append(sum(ends.values()) - sum(com.values()))
                if time.monotonic() >= next_rss:
                    rss_trace.append((time.monotonic() - stop_at + args.duration, proc.rss_mb()))
                    next_rss += max(1.0, args.duration / 10)
                time.sleep(0.5)
            print("phase 2 RSS (MiB) over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in rss_trace))
            th.join()
            rate2 = result["r"].rate
            total += result["r"].sent
            deadline = time.monotonic() + 60
            while _sum_committed(p, group, raw, parts) < total and time.monotonic() < deadline:
                time.sleep(0.25)
            print(f"phase 2 (open loop): target {args.rate:,.0f}/s, generator achieved {rate2:,.0f}/s for "
                  f"{args.duration:.0f}s; consumer lag (messages) p50 {statistics.median(lag_samples):,.0f}, "
                  f"p99 {sorted(lag_samples)[int(0.99 * (len(lag_samples) - 1))]:,.0f}, max {max(lag_samples):,}")

        rss = proc.peak_rss_mb()
        print(f"ingest peak RSS (VmHWM): {rss:.0f} MiB" if rss else "ingest peak RSS: unavailable")
        rc = proc.stop(60)
        print(f"ingest stopped with exit code {rc}")

        if not args.no_verify:
            n_clean = len(rkafka.read_to_end(p, clean, idle_s=1.0))
            n_dlq = len(rkafka.read_to_end(p, dlq, idle_s=1.0))
            kinds = dict(mix.counts)
            if args.rate > 0:
                for k, v in result["r"].kinds.items():
                    kinds[k] = kinds.get(k, 0) + v
            malformed = sum(v for k, v in kinds.items() if k not in ("valid", "duplicate"))
            print(f"verify: clean {n_clean:,} (sent valid {kinds.get('valid', 0):,}, exact re-sends "
                  f"{kinds.get('duplicate', 0):,}); dlq {n_dlq:,} (sent malformed {malformed:,})")
        print(f"SUMMARY ingest: {mid_rate:,.0f} events/s sustained (backlog, middle 80%), "
              f"{rate:,.0f} events/s overall; peak RSS {rss or float('nan'):.0f} MiB"
              + (f"; open-loop {rate2:,.0f}/s max lag {max(lag_samples):,}" if rate2 else ""))
        return 0
    finally:
        if proc is not None:
            proc.stop(30)
        if not args.keep_topics:
            rkafka.delete_topics(p, names)
