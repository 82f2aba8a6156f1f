"""``recpilot bench soak``: the whole platform under the shopper simulator at a fixed rate, memory,
CPU and consumer lag per component over time.

The platform comes up on a fresh home with the project's own stack manager (what `recpilot up`
starts: Kafka, Redis, Alertmanager when installed, the five services, each with its default
settings), the shopper simulator drives it at ``--rate`` steps/s (as ``recpilot simulate --rate``;
about three events reach the platform for four steps: a shopper who ignores a recommended list
produces none; the story's simulator thread, :meth:`recpilot.story.Story.start_simulator`: shoppers
who ask the Recommender and click), and every
``--interval`` seconds the bench reads, for ``--minutes``:

* per process of the stack (its pid record, children included): resident memory (``VmRSS`` of
  ``/proc/<pid>/status``) and CPU (cores: user+system CPU seconds per wall second since the
  previous reading); the bench's own process (the simulator) too;
* per consumer group with committed offsets: its lag, high watermarks minus committed offsets
  summed over its partitions (Kafka admin API). The monitor and rl_feedback's learner read by
  assignment and commit no offsets: they have no group lag to read. Once the load is over, what
  they have not read yet comes from the services' own counters (rewards the joiner published minus
  those the learner learned from or skipped, and minus those the monitor read);
* the simulator: steps/s (what ``--rate`` paces: it holds the rate when these match), events/s,
  Recommend calls/s, p50/p99 (client side) and CTR of the interval.

Then the shoppers stop, ingest accounts for every event (the story's drain step: lost events), a
last lag reading is taken once the consumers had ``--drain`` seconds to catch up, and `recpilot
down` stops everything (also on Ctrl-C, SIGTERM or an error). The result: a table per component
(RSS at the start, after 1 minute, at the end, max; the slope over the second half in MiB/min; mean
CPU), a table per consumer group (lag max, at the end of the load, after the drain), a verdict line
per component and group, a PNG (memory and lag over time) and, with ``--json``, every sample.

Verdicts (the thresholds are options): ``memory flat`` when the least-squares slope of RSS over the
second half of the run is below ``--flat-mib-per-min`` (default 1 MiB/min: 60 MiB an hour), both
the slope of every reading and that of the floor (each minute's lowest reading); ``memory grows``
when the floor rises (memory kept), ``floor flat, peaks`` when only the readings rise (transient
peaks that come back down). ``lag bounded`` when the group's lag came back to ``--lag-near-zero``
messages or fewer (default 500) at least once in the last quarter of the load; a consumer that
falls behind for good never does. ``--from-json`` prints the tables and draws the picture again
from a saved result, without running anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from bench.machine import machine, machine_info

COMPONENTS = ("ingest", "features", "inference", "rl_feedback", "monitor", "kafka", "redis", "alertmanager")
SIMULATOR = "simulator"  # this process: the shopper simulator's thread and the bench itself
# readers without committed offsets, read once the load is over (Probe.readers)
LEARNER = "rl_feedback learner (rewards not learned)"
MONITOR_REWARDS = "monitor (rewards not read)"

FLAT_MIB_PER_MIN = 1.0
LAG_NEAR_ZERO = 500


# --------------------------------------------------------------------------- pure parts
def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(t seconds, value)`` points, in value units per minute; None with
    fewer than 3 points or no spread in time."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / var


def _series(samples: list[dict], key: str, name: str) -> list[tuple[float, float]]:
    return [(s["t"], s[key][name]) for s in samples if s.get(key, {}).get(name) is not None]


def _first_at(points: list[tuple[float, float]], t: float) -> float | None:
    return next((v for tt, v in points if tt >= t), None)


def floor_points(points: list[tuple[float, float]], t_from: float, t_end: float,
                 width_s: float = 60.0) -> list[tuple[float, float]]:
    """The lowest reading of each ``width_s`` stretch from ``t_from`` to ``t_end`` (the last
    stretch takes what is left over): memory a process holds between its transient peaks."""
    n = max(1, int((t_end - t_from) // width_s))
    lows: dict[int, tuple[float, float]] = {}
    for t, v in points:
        if t < t_from:
            continue
        i = min(n - 1, int((t - t_from) // width_s))
        if i not in lows or v < lows[i][1]:
            lows[i] = (t, v)
    return [lows[i] for i in sorted(lows)]


def memory_row(samples: list[dict], name: str, flat_mib_per_min: float = FLAT_MIB_PER_MIN) -> dict:
    """RSS (MiB) of component ``name`` at the start, after 1 minute, at the end and at most; over
    the second half of the run the slope of every reading and of the floor (each minute's lowest
    reading), in MiB/min, and the verdict; mean CPU (cores).

    Verdict: ``memory flat`` when both slopes are under ``flat_mib_per_min``; ``memory grows``
    when the floor's is not (memory kept); ``floor flat, peaks`` when only the readings' slope is
    not (transient peaks that come back down); the floor needs 3 minutes in the second half, else
    the readings' slope alone decides."""
    pts = _series(samples, "rss_mib", name)
    cpu = [v for _, v in _series(samples, "cpu_cores", name)]
    row: dict = {"name": name, "samples": len(pts), "rss_start_mib": None, "rss_1min_mib": None,
                 "rss_end_mib": None, "rss_max_mib": None, "slope_mib_per_min": None, "floor_slope_mib_per_min": None,
                 "cpu_mean_cores": round(sum(cpu) / len(cpu), 3) if cpu else None, "memory": "no samples"}
    if not pts:
        return row
    t_end = samples[-1]["t"]
    second = [(t, v) for t, v in pts if t >= t_end / 2]
    slope = slope_per_min(second)
    floor = slope_per_min(floor_points(pts, t_end / 2, t_end))
    one = _first_at(pts, 60.0)
    row.update(rss_start_mib=round(pts[0][1], 1), rss_1min_mib=None if one is None else round(one, 1),
               rss_end_mib=round(pts[-1][1], 1), rss_max_mib=round(max(v for _, v in pts), 1),
               slope_mib_per_min=None if slope is None else round(slope, 3),
               floor_slope_mib_per_min=None if floor is None else round(floor, 3))
    if slope is None:
        row["memory"] = "too few samples in the second half"
    elif floor is not None and floor >= flat_mib_per_min:
        row["memory"] = f"memory grows {floor:.2f} MiB/min (floor)"
    elif slope >= flat_mib_per_min and floor is None:
        row["memory"] = f"memory grows {slope:.2f} MiB/min"
    elif slope >= flat_mib_per_min:
        row["memory"] = f"floor flat, peaks ({slope:+.2f} MiB/min over every reading)"
    else:
        row["memory"] = "memory flat"
    return row


def lag_row(samples: list[dict], group: str, after_drain: int | None = None,
            near_zero: int = LAG_NEAR_ZERO) -> dict:
    """Lag (messages) of consumer group ``group``: max, at the end of the load, after the drain,
    the minimum over the last quarter of the load and the verdict."""
    pts = _series(samples, "lag", group)
    row: dict = {"group": group, "samples": len(pts), "lag_max": None, "lag_end": None, "lag_after_drain": after_drain,
                 "lag_min_last_quarter": None, "slope_per_min": None, "lag": "no samples"}
    if not pts:
        if after_drain is not None:  # a reader read once the load was over
            row["lag"] = ("caught up after the drain" if after_drain <= near_zero
                          else f"{after_drain:,} behind after the drain")
        return row
    t_end = samples[-1]["t"]
    last_q = [v for t, v in pts if t >= 0.75 * t_end]
    slope = slope_per_min([(t, v) for t, v in pts if t >= t_end / 2])
    row.update(lag_max=int(max(v for _, v in pts)), lag_end=int(pts[-1][1]),
               lag_min_last_quarter=int(min(last_q)) if last_q else None,
               slope_per_min=None if slope is None else round(slope, 1))
    if not last_q:
        row["lag"] = "too few samples in the last quarter"
    elif min(last_q) <= near_zero:
        row["lag"] = "lag bounded"
    else:
        row["lag"] = f"lag growing (never back to <= {near_zero} in the last quarter)"
    return row


def summarise(samples: list[dict], after_drain: dict[str, int] | None = None,
              flat_mib_per_min: float = FLAT_MIB_PER_MIN, lag_near_zero: int = LAG_NEAR_ZERO) -> dict:
    """Per component memory rows, per group lag rows, and the simulator's figures over the run."""
    names = []
    for s in samples:
        for k in s.get("rss_mib", {}):
            if k not in names:
                names.append(k)
    order = {n: i for i, n in enumerate((*COMPONENTS, SIMULATOR))}
    names.sort(key=lambda n: (order.get(n, len(order)), n))
    groups = []
    for s in samples:
        for k in s.get("lag", {}):
            if k not in groups:
                groups.append(k)
    after_drain = after_drain or {}
    groups += [g for g in after_drain if g not in groups]
    sim = {}
    for key in ("steps_per_s", "events_per_s", "recommend_per_s", "ctr"):
        vals = [s["sim"][key] for s in samples if s.get("sim", {}).get(key) is not None]
        sim[key + "_mean"] = round(sum(vals) / len(vals), 5 if key == "ctr" else 1) if vals else None
    loads = [s["load1"] for s in samples if s.get("load1") is not None]
    return {"memory": [memory_row(samples, n, flat_mib_per_min) for n in names],
            "lag": [lag_row(samples, g, after_drain.get(g), lag_near_zero) for g in sorted(groups)],
            "simulator": sim,
            "load1": {"min": min(loads), "max": max(loads), "mean": round(sum(loads) / len(loads), 2)} if loads else None,
            "thresholds": {"flat_mib_per_min": flat_mib_per_min, "lag_near_zero": lag_near_zero}}


def _v(x, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_tables(summary: dict) -> str:
    """The memory and lag tables (markdown) and one verdict line per component and group."""
    out = ["| component | RSS start (MiB) | after 1 min | end | max | slope, 2nd half (MiB/min) | floor slope | "
           "CPU (cores, mean) | verdict |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in summary["memory"]:
        out.append(f"| {r['name']} | {_v(r['rss_start_mib'])} | {_v(r['rss_1min_mib'])} | {_v(r['rss_end_mib'])} | "
                   f"{_v(r['rss_max_mib'])} | {_v(r['slope_mib_per_min'], '{:+.2f}')} | "
                   f"{_v(r.get('floor_slope_mib_per_min'), '{:+.2f}')} | "
                   f"{_v(r['cpu_mean_cores'], '{:.2f}')} | {r['memory']} |")
    out += ["", "| consumer group | lag max | at the end of the load | after the drain | min, last quarter | verdict |",
            "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in summary["lag"]:
        out.append(f"| {r['group']} | {_v(r['lag_max'], '{:,}')} | {_v(r['lag_end'], '{:,}')} | "
                   f"{_v(r['lag_after_drain'], '{:,}')} | {_v(r['lag_min_last_quarter'], '{:,}')} | {r['lag']} |")
    out.append("")
    for r in summary["memory"]:
        out.append(f"{r['name']}: {r['memory']}")
    for r in summary["lag"]:
        out.append(f"{r['group']}: {r['lag']}")
    return "\n".join(out)


def plot(samples: list[dict], path: str, title: str) -> None:
    """Memory per component and lag per consumer group over time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(samples)
    fig, (ax1, ax3, ax2) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for r in summary["memory"]:
        pts = _series(samples, "rss_mib", r["name"])
        x = [t / 60 for t, _ in pts]
        ax1.plot(x, [v for _, v in pts], marker=".", label=r["name"])
        ax3.plot(x, [v - pts[0][1] for _, v in pts], marker=".", label=r["name"])
    ax1.set_yscale("log")  # Redis's tens of MiB and inference's hundreds on one axis
    ax1.set_ylabel("RSS (MiB, log scale)")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8, ncol=3)
    ax3.set_ylabel("RSS change since the start (MiB)")
    ax3.grid(alpha=0.3)
    for r in summary["lag"]:
        pts = _series(samples, "lag", r["group"])
        ax2.plot([t / 60 for t, _ in pts], [v for _, v in pts], marker=".", label=r["group"])
    ax2.set_ylabel("consumer lag (messages)")
    ax2.set_xlabel("minutes under load")
    ax2.grid(alpha=0.3)
    if summary["lag"]:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- readings
def process_tree(pid: int) -> list[int]:
    from recpilot.stack.process import children

    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


class Probe:
    """Readings of the running stack: RSS and CPU per component, lag per consumer group."""

    def __init__(self, stack) -> None:
        from recpilot.kafka import admin

        self.stack = stack
        self.admin = admin(stack.kafka.client_settings())
        self._cpu_prev: dict[str, tuple[float, float]] = {}
        self.by_topic: dict[str, dict[str, int]] = {}  # the last lag reading per group, per topic

    def pids(self) -> dict[str, int]:
        out = {}
        for c in self.stack.status()["components"]:
            if c["running"] and c["pid"]:
                out[c["name"]] = c["pid"]
        out[SIMULATOR] = os.getpid()
        return out

    def resources(self, pids: dict[str, int]) -> tuple[dict[str, float], dict[str, float]]:
        from recpilot.stack.process import memory_mb, process_cpu

        rss, cpu = {}, {}
        now = time.monotonic()
        for name, pid in pids.items():
            # the stack's processes are children of this one (spawned here): the simulator's is the
            # bench process alone, a component's its whole tree (a service's workers, a training run)
            tree = [pid] if name == SIMULATOR else process_tree(pid)
            rss[name] = round(sum(memory_mb(p) for p in tree), 1)
            c = sum(process_cpu(p) for p in tree)
            prev = self._cpu_prev.get(name)
            if prev is not None and now > prev[0]:
                cpu[name] = round(max(0.0, c - prev[1]) / (now - prev[0]), 3)
            self._cpu_prev[name] = (now, c)
        return rss, cpu

    def lags(self, timeout: float = 10.0) -> dict[str, int]:
        """Group -> high watermarks minus committed offsets over its committed partitions."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import OffsetSpec

        out: dict[str, int] = {}
        listed = self.admin.list_consumer_groups(request_timeout=timeout).result(timeout)
        for g in sorted(x.group_id for x in listed.valid):
            fut = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)], request_timeout=timeout)
            tps = [tp for tp in fut[g].result(timeout).topic_partitions if tp.offset >= 0 and not tp.error]
            if not tps:
                continue  # a group that never committed (a probe, a reader by assignment)
            ends = self.admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout)
            lag, per_topic = 0, {}
            for tp in tps:
                hw = next(f for k, f in ends.items() if k.topic == tp.topic and k.partition == tp.partition)
                n = max(0, hw.result(timeout).offset - tp.offset)
                lag += n
                per_topic[tp.topic] = per_topic.get(tp.topic, 0) + n
            out[g] = lag
            self.by_topic[g] = per_topic
        return out

    def service_gauges(self) -> dict[str, float]:
        """A few of the services' own gauges that explain their memory: the rows in rl_feedback's
        learner (its replay buffer, preallocated and filled up to its capacity) and the joiner's
        open impressions and buffered outcomes."""
        from recpilot.story import _metrics

        rl = self.stack.services_table.running("rl_feedback")
        m = _metrics(rl.address if rl else None)
        keys = ("recpilot_rl_learner_rows", "recpilot_rl_feedback_open_impressions",
                "recpilot_rl_feedback_buffered_outcomes")
        return {k: m[k] for k in keys if k in m}

    def readers(self) -> dict[str, int]:
        """The two readers without committed offsets, from the services' own counters: rewards the
        joiner published (``recpilot_rl_feedback_rewards_total``) minus those rl_feedback's learner
        learned from or skipped, and minus those the monitor read (its ``/status`` inputs). Exact
        once the counters are current (the joiner adds to its counter every few seconds), and on a
        fresh home only (the monitor starts reading at the end of the topic)."""
        from recpilot.story import _http_json, _metrics

        out: dict[str, int] = {}
        rl = self.stack.services_table.running("rl_feedback")
        m = _metrics(rl.address if rl else None)
        published = m.get("recpilot_rl_feedback_rewards_total")
        if published is None:
            return out
        learned = m.get("recpilot_rl_learner_rewards_total")
        if learned is not None:
            out[LEARNER] = int(published - learned - m.get("recpilot_rl_learner_skipped_rewards_total", 0.0))
        mon = self.stack.services_table.running("monitor")
        doc = _http_json(f"http://{mon.address}/status") if mon else None
        if isinstance(doc, dict) and "rewards" in (doc.get("inputs") or {}):
            out[MONITOR_REWARDS] = int(published - doc["inputs"]["rewards"])
        return out


# --------------------------------------------------------------------------- the run
def _fresh_home(path: str | None) -> tuple[Path, bool]:
    """The home the soak's stack lives in: ``path`` (must not exist or be empty) or a new temporary
    directory (removed after a run that went well). Returns it and whether it is temporary."""
    from recpilot.errors import InvalidArgument

    if path is None:
        return Path(tempfile.mkdtemp(prefix="recpilot-soak-")), True
    p = Path(path).resolve()
    if p.exists() and any(p.iterdir()):
        raise InvalidArgument(f"--home {p}: not empty (the soak starts the platform on a fresh home)")
    p.mkdir(parents=True, exist_ok=True)
    return p, False


def run(args) -> int:
    from recpilot.errors import InvalidArgument

    if args.from_json:
        return rerender(args)
    if args.minutes <= 0 or args.interval <= 0 or args.rate <= 0:
        raise InvalidArgument("--minutes, --interval and --rate must be > 0")
    home, temporary = _fresh_home(args.home)
    os.environ["RECPILOT_HOME"] = str(home)  # the stack, the simulator's clients and the services all read it

    from recpilot.stack.manager import Stack
    from recpilot.story import Story, StoryConfig

    def say(msg: str) -> None:
        print(msg, flush=True)

    m0 = machine_info()
    say(f"machine: {machine()}")
    say(f"soak: {args.minutes:g} min at {args.rate:g} shopper steps/s (seed {args.seed}), a reading every "
        f"{args.interval:g} s; home {home}")
    stack = Stack()
    story = Story(StoryConfig(rate=args.rate, seed=args.seed), echo=lambda m: say(f"  {m}"), stack=stack)
    samples: list[dict] = []
    after_drain: dict[str, int] = {}
    after_drain_by_topic: dict[str, dict[str, int]] = {}
    error: str | None = None
    prev = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    stop = threading.Event()

    def on_signal(*_):
        # a flag, checked between steps (as the story does): an exception raised here could land in
        # a Kafka client's callback and be lost; a second signal stops at once
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping (again to stop at once): the platform goes down after the step under way")

    for sig in prev:
        signal.signal(sig, on_signal)
    done = threading.Event()
    probe: Probe | None = None
    t_up = time.monotonic()
    up_s = None
    try:
        _up(stack, stop, lambda m: say(f"  up: {m}"))
        up_s = time.monotonic() - t_up
        say(f"platform up in {up_s:.0f}s")
        probe = Probe(stack)
        story.ingest0 = story.ingest_counts()
        story.start_simulator()

        def sampler():  # the story's simulator readings (CTR, events/s) every second
            while not done.is_set():
                story.sample()
                done.wait(1.0)

        threading.Thread(target=sampler, name="soak-sampler", daemon=True).start()
        pids = probe.pids()
        probe.resources(pids)  # CPU baseline
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        lat_cut = t0
        calls_prev = steps_prev = 0
        t_prev = t0
        next_at = t0
        while True:
            now = time.monotonic()
            if now < next_at:
                if stop.wait(min(0.5, next_at - now)):
                    raise KeyboardInterrupt
                continue
            t = now - t0
            rss, cpu = probe.resources(pids)
            try:
                lag = probe.lags()
            except Exception as exc:  # a slow broker this time: no lag reading in this sample
                say(f"  lag reading failed: {exc}")
                lag = {}
            lat = [v * 1000 for tt, v in list(story.latencies) if tt > lat_cut]
            lat_cut = now
            w = story.window(args.interval)
            r = story.sim_result
            calls = r.recommend_calls if r is not None else 0
            steps = r.sent if r is not None else 0  # shopper steps: what --rate paces
            sim = {"steps_per_s": round((steps - steps_prev) / (now - t_prev), 1) if samples else None,
                   "events_per_s": round(w["events_per_s"], 1),
                   "recommend_per_s": round((calls - calls_prev) / (now - t_prev), 1) if samples else None,
                   "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "ctr": w["ctr"], "shown": w["shown"],
                   "recommend_failures": r.recommend_failures if r is not None else 0}
            calls_prev, steps_prev, t_prev = calls, steps, now
            sample = {"t": round(t, 1), "rss_mib": rss, "cpu_cores": cpu, "lag": lag, "sim": sim,
                      "load1": round(os.getloadavg()[0], 2), "services": probe.service_gauges()}
            samples.append(sample)
            say(_progress(sample))
            gone = [n for n, pid in pids.items() if n != SIMULATOR and not _alive(stack, n)]
            if gone:
                raise RuntimeError(f"{', '.join(gone)} exited during the soak (logs in {home / 'logs'})")
            if now >= end:
                break
            next_at += args.interval
        story.drain()
        say(f"  drain: the consumers get {args.drain:g}s to catch up (the joiner publishes an impression's rewards "
            "once its attribution window has passed)")
        if stop.wait(args.drain):  # time itself is what is measured here: what is left after it
            raise KeyboardInterrupt
        after_drain = {}
        for read in (probe.lags, probe.readers):
            try:
                after_drain.update(read())
            except Exception as exc:  # noqa: BLE001 - reported; the row stays without it
                say(f"  {read.__name__} failed: {exc}")
        say(f"  after the drain: {after_drain}; by topic: {probe.by_topic}")
        after_drain_by_topic = dict(probe.by_topic)
    except KeyboardInterrupt:
        error = "interrupted"
        say("interrupted: summary of what was read, then the platform goes down")
    except Exception as exc:  # noqa: BLE001 - reported, then the platform goes down
        error = f"{type(exc).__name__}: {exc}"
        say(f"the soak stopped: {error}")
    finally:
        done.set()
        story.sim_stop.set()
        probe = None  # its admin client goes before the broker does (else it logs refused connections)
        for s, h in prev.items():  # a second Ctrl-C during `down` is the default again
            signal.signal(s, h)
        stack.down(echo=lambda m: say(f"  down: {m}"))
    m1 = machine_info()
    summary = summarise(samples, after_drain, args.flat_mib_per_min, args.lag_near_zero)
    lat_all = sorted(v * 1000 for _, v in list(story.latencies))
    r = story.sim_result
    result = {"machine": m0, "machine_end": m1, "command": _command(args), "rate": args.rate,
              "minutes": args.minutes, "interval_s": args.interval, "seed": args.seed,
              "up_s": None if up_s is None else round(up_s, 1), "error": error,
              "recommend": {"calls": r.recommend_calls if r else 0, "failures": r.recommend_failures if r else 0,
                            "p50_ms_last_20000": _pct(lat_all, 0.5), "p99_ms_last_20000": _pct(lat_all, 0.99)},
              "events": story.events, "lag_after_drain": after_drain, "lag_after_drain_by_topic": after_drain_by_topic,
              "summary": summary,
              "samples": samples}
    report(result, args, write_json=True)
    if error is None and temporary and not args.keep_home:
        shutil.rmtree(home, ignore_errors=True)
    elif temporary:
        print(f"home kept: {home}")
    if error == "interrupted":
        return 130
    return 1 if error else 0


def _up(stack, stop: threading.Event, echo) -> None:
    """`recpilot up` (:meth:`Stack.up`) one part at a time, so that a stop request waits for the part
    under way only (a service's start-up), not for the whole platform."""
    from recpilot.stack.manager import services

    def check() -> None:
        if stop.is_set():
            raise KeyboardInterrupt

    took = stack.up_infra(echo)
    echo(f"redis ready at {stack.redis.address} ({took['redis']:.1f}s), kafka ready at {stack.kafka.address} "
         f"({took['kafka']:.1f}s)")
    check()
    stack.up_alertmanager(echo)
    for spec in services():
        check()
        stack.up_services([spec.name], echo=echo)
    check()


def report(result: dict, args, write_json: bool = False) -> None:
    """Print the tables, verdicts and figures of ``result``; draw the picture (``args.plot``);
    write the JSON (``args.json``) when ``write_json``."""
    summary, samples, m0 = result["summary"], result["samples"], result["machine"]
    print()
    print(format_tables(summary))
    sim, rec, ev = summary["simulator"], result["recommend"], result.get("events") or {}
    print(f"simulator: {_v(sim['steps_per_s_mean'])} steps/s (asked {result['rate']:g}), "
          f"{_v(sim['events_per_s_mean'])} events/s, {_v(sim['recommend_per_s_mean'])} Recommend/s, CTR "
          f"{_v(sim['ctr_mean'], '{:.4f}')}; Recommend {rec['calls']} calls, {rec['failures']} failed, p50 "
          f"{_v(rec['p50_ms_last_20000'])} ms, p99 {_v(rec['p99_ms_last_20000'])} ms (the last 20,000 calls)")
    if ev:
        print(f"events: produced {ev['produced']}, accepted by ingest {ev['accepted']}, rejected {ev['rejected']}, "
              f"duplicates {ev['duplicates']}, lost {ev['lost']}")
    if summary["load1"]:
        print(f"load average (1 min) during the run: {summary['load1']['min']}-{summary['load1']['max']} "
              f"(mean {summary['load1']['mean']}); platform up in {result['up_s']} s")
    print(f"machine at the start: {machine(m0)}; at the end: {machine(result['machine_end'])}")
    if args.plot and samples:
        plot(samples, args.plot, f"recpilot bench soak: {result['rate']:g} shopper steps/s, {result['minutes']:g} min, "
                                 f"load avg {summary['load1']['mean'] if summary['load1'] else '-'} on {m0['cores']} cores")
        print(f"picture: {args.plot}")
    if write_json and args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"json: {args.json}")


def rerender(args) -> int:
    """``--from-json``: the tables, verdicts and picture again from a saved result (the verdict
    thresholds and the picture's path are this command's)."""
    result = json.loads(Path(args.from_json).read_text())
    after = result.get("lag_after_drain")
    if after is None:  # a result written before the field existed: from its rows
        after = {r["group"]: r["lag_after_drain"] for r in result["summary"]["lag"] if r["lag_after_drain"] is not None}
    result["summary"] = summarise(result["samples"], after, args.flat_mib_per_min, args.lag_near_zero)
    print(f"{result['command']} (from {args.from_json})")
    report(result, args)
    return 0


def _alive(stack, name: str) -> bool:
    table = stack.table if name in ("kafka", "redis", "alertmanager") else stack.services_table
    return table.running(name) is not None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 2)


def _progress(s: dict) -> str:
    sim = s["sim"]
    rss = " ".join(f"{k} {v:.0f}" for k, v in s["rss_mib"].items())
    lag = " ".join(f"{k} {v}" for k, v in s["lag"].items()) or "-"
    cpu = sum(s["cpu_cores"].values())
    return (f"[{s['t']:5.0f}s] steps/s {_v(sim.get('steps_per_s'), '{:.0f}')} events/s {sim['events_per_s']:.0f} Recommend/s {_v(sim['recommend_per_s'])} "
            f"p50 {_v(sim['p50_ms'])} p99 {_v(sim['p99_ms'])} ms CTR {_v(sim['ctr'], '{:.4f}')} | "
            f"RSS MiB {rss} | lag {lag} | CPU {cpu:.2f} cores | load {s['load1']}")


def _command(args) -> str:
    parts = ["recpilot bench soak", f"--minutes {args.minutes:g}", f"--rate {args.rate:g}", f"--interval {args.interval:g}"]
    return " ".join(parts)
