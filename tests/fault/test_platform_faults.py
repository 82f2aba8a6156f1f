"""The whole platform under steady load through one fault after another.

`recpilot up --replicas features=2` on a private home and ports (tests/support/platform.py): ingest,
two features workers, inference, rl_feedback and the monitor over their own Kafka and Redis. A shop
at a steady rate sends raw events and calls Recommend (its shoppers click what it shows). In turn:
kill -9 of each service and a restart (as an operator or Kubernetes would: nothing in the stack
restarts a dead process; features while it applies a backlog: what it re-reads after the restart must
be skipped), a broker crash (kill -9) while ingest works through a backlog and a
restart, a Redis crash (kill -9) and a restart, and a kill -9 of one of the two features workers
that is NOT restarted (the other takes its partitions). After each fault every service must be
ready again within 30 s (stretched on an oversubscribed machine: ``ready_deadline``), and the
pipeline must move again before the next one. Once the load stops
and everything drains:

* every event the broker acknowledged on events.raw is on events.clean exactly once (read_committed),
  and the features in Redis are exactly those of events.clean: every accepted event counted once;
* ingest lived through the broker outage (same process) and read its backlog to the end;
* every item shown (the impressions) has exactly one reward (read_committed), whose flags and
  outcome count are backed by outcome events on events.clean: no reward double-counted;
* every Recommend call was answered (by the model, or by a fallback that says why) except while
  the inference process itself was down.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict

import pytest

from recpilot.pb import events_pb2
from tests.support.platform import PORTS, Load, Platform

pytestmark = [pytest.mark.timeout(900), pytest.mark.platform]  # a guard: about 150 s on a quiet 2-core machine

READY_S = 30.0  # every service ready again within this long after a fault (issue #17) ...
MAX_STRETCH = 4.0  # ... times how busy the machine was before the platform started, up to this
BUSY = {"load": 0.0}  # the 1-minute load average per core when the platform fixture began


def ready_deadline() -> float:
    """READY_S on a quiet machine (a CI runner: the platform's own processes are what the 30 s is
    about); on a shared machine that was already running more than a process per core before the
    platform started (a developer box under other test runs) every start-up is that much slower, and
    the deadline stretches by that load per core, up to MAX_STRETCH times."""
    return READY_S * min(MAX_STRETCH, max(1.0, BUSY["load"]))


REPLICAS = {"features": 2}
INGEST_BATCH = 50
BACKLOG = 5_000  # events.raw records sent at once before features is killed
# ... and before the broker is killed: more, sent while ingest is paused (SIGSTOP), so that the
# backlog is there in full when it resumes (ingest takes tens of thousands of events/s: it kept pace
# with the sender, and sometimes had read everything before the kill)
BROKER_BACKLOG = 30_000
WEIGHTS = {"click": 1.0, "add_to_cart": 2.0, "purchase": 4.0, "revenue": 0.01}  # every term shows in a reward
ENV = {
    "RECPILOT_KAFKA_HEAP_MB": "384", "OMP_NUM_THREADS": "1",
    "RECPILOT_KAFKA_READY_TIMEOUT_S": "240",  # a guard: a JVM start takes minutes on an oversubscribed machine
    # ingest: small batches (a backlog keeps it busy), and a batch the broker does not confirm in 3 s
    # fails: ingest then starts afresh in-process (its de-duplicator re-warmed), backing off up to 2 s
    "RECPILOT_INGEST_BATCH_SIZE": str(INGEST_BATCH), "RECPILOT_INGEST_FLUSH_TIMEOUT_S": "3",
    "RECPILOT_INGEST_RESTART_BACKOFF_MAX_S": "2",
    # a dead consumer's partitions move after 6 s (the broker's minimum session timeout), not 10
    "RECPILOT_INGEST_SESSION_TIMEOUT_MS": "6000", "RECPILOT_RL_FEEDBACK_SESSION_TIMEOUT_MS": "6000",
    "RECPILOT_FEATURES_SESSION_TIMEOUT_S": "6", "RECPILOT_FEATURES_HEARTBEAT_INTERVAL_S": "1",
    # rewards published 2 s after the impression; the policy learner is not under test here
    "RECPILOT_RL_FEEDBACK_WINDOW_S": "2", "RECPILOT_RL_FEEDBACK_GRACE_MS": "300",
    "RECPILOT_RL_FEEDBACK_LEARNER_ENABLED": "false",
    **{f"RECPILOT_RL_FEEDBACK_REWARD_{k.upper()}": str(v) for k, v in WEIGHTS.items()},
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    from bench.toymodel import write_version

    BUSY["load"] = os.getloadavg()[0] / (os.cpu_count() or 1)
    home = tmp_path_factory.mktemp("platform") / "home"
    mp = pytest.MonkeyPatch()
    for k, v in {**PORTS, **ENV, "RECPILOT_HOME": str(home)}.items():
        mp.setenv(k, v)
    mp.delenv("RECPILOT_MODEL_REPOSITORY", raising=False)
    # a model in the repository: inference's first-run bootstrap deploys it instead of training one
    write_version(home / "models", "ranker", seed=1)
    p = Platform(home)
    try:
        p.up(REPLICAS)
        yield p
    finally:
        p.kill_all()  # its home is thrown away: no need for a graceful `recpilot down`
        mp.undo()


def _progress(p: Platform, load: Load) -> tuple[int, int]:
    """(events applied to the features, Recommend calls answered) so far."""
    from services.features.client import FeatureClient

    client = FeatureClient(p.settings.redis_url, "rp:", socket_timeout=2, socket_connect_timeout=2)
    try:
        applied = sum(v + 1 for v in client.offsets().values())
    except Exception:  # Redis restarting: no progress to see
        applied = 0
    finally:
        client.close()
    return applied, load.answered()


def _clean(p: Platform) -> list:
    from recpilot.kafka import read_to_end
    from recpilot.topics import EVENTS_CLEAN

    return read_to_end(p.settings, EVENTS_CLEAN, idle_s=0.5)


def test_steady_load_through_kills_and_restarts_counts_everything_once(platform, wait_until):
    from recpilot.kafka import committed_offsets, end_offsets, read_to_end
    from recpilot.topics import EVENTS_RAW, IMPRESSIONS, REWARDS
    from services.features.client import FeatureClient
    from tests.support.features import assert_matches_offline

    p = platform
    load = Load(p.settings, f"127.0.0.1:{PORTS['RECPILOT_INFERENCE_GRPC_PORT']}", rate=40).start()
    ready_s: dict[str, tuple[float, float, float]] = {}

    def moved_on(step: str, since: tuple[int, int]) -> None:
        """The pipeline moves again: new events in the features, new answers from inference."""
        wait_until(lambda: (now := _progress(p, load))[0] >= since[0] + 40 and now[1] >= since[1] + 5, 60,
                   lambda: f"after {step}: progress {since} -> {_progress(p, load)}; by phase {load.by_phase()}", 0.5)

    def restart_service(name: str):
        def fault() -> None:
            p.kill9(name)
            p.restart(name)
        return fault

    def ingest_committed() -> int:
        return sum(committed_offsets(p.settings, "recpilot-ingest", EVENTS_RAW, [0, 1, 2, 3]).values())

    ingest_path = {}

    def broker_mid_backlog() -> None:
        """A backlog in events.raw; the broker dies while ingest works through it (it holds
        prefetched records, a batch in flight) and comes back after its restart: ingest must not exit."""
        pid = p.stack.services_table.get("ingest").pid
        before = ingest_committed()
        os.kill(pid, signal.SIGSTOP)
        try:
            load.burst(BROKER_BACKLOG)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: ingest_committed() >= before + 500, 60, "ingest did not start on the backlog", 0.1)
        at_kill = ingest_committed()
        p.restart_broker()
        assert at_kill < before + BROKER_BACKLOG, "ingest had read the backlog before the broker was killed"
        rec = p.stack.services_table.get("ingest")
        assert rec.pid == pid and rec.alive(), "ingest exited during the broker outage:\n" + p.log_tail("ingest", 40)

    replayed_metric = 'recpilot_features_events_total{outcome="replayed"}'
    replays = {}

    def features_mid_backlog() -> None:
        """A backlog through ingest; features (replica 0) dies while it applies it, most often
        before its consumer offsets caught up with what it wrote, and starts again: what it re-reads
        is skipped by the offsets stored in Redis with the features (the exact counts at the end)."""
        replays["before"] = p.metric("features-1", replayed_metric)
        start = _progress(p, load)[0]
        load.burst(BACKLOG)
        wait_until(lambda: _progress(p, load)[0] >= start + 500, 60, "features did not start on the backlog", 0.1)
        p.kill9("features")
        p.restart("features")

    steps = [
        ("kill -9 ingest", restart_service("ingest")),
        ("kill -9 features mid-backlog", features_mid_backlog),
        ("kill -9 inference", restart_service("inference")),
        ("kill -9 rl_feedback", restart_service("rl_feedback")),
        ("kill -9 monitor", restart_service("monitor")),
        ("broker kill -9 mid-backlog and restart", broker_mid_backlog),
        ("redis kill -9 and restart", lambda: p.restart_redis(graceful=False)),
        ("kill -9 features-1 (not restarted)", lambda: (p.kill9("features-1"), p.replicas.update(features=1))),
    ]

    def held() -> int:  # events.clean partitions features (replica 0) holds
        code, body = p.readyz("features")
        return len(json.loads(body).get("partitions", [])) if code in (200, 503) else 0

    try:
        load.set_phase("steady")
        moved_on("start", _progress(p, load))
        for step, fault in steps:
            down = "inference" in step
            load.set_phase(step, inference_down=down)
            since = _progress(p, load)
            t0 = time.monotonic()
            fault()
            t1 = time.monotonic()
            deadline = ready_deadline()
            p.wait_ready(deadline, step)  # the 30 s of the issue: ready again, or fail here
            if step.startswith("kill -9 features-1"):  # ready = the survivor took the dead worker's partitions
                wait_until(lambda: held() == 4, deadline - (time.monotonic() - t0),
                           lambda: f"features holds {p.readyz('features')} after {step}", 0.25)
            # the fault's own time (a broker's restart), then until every service was ready, and the deadline
            ready_s[step] = (round(t1 - t0, 1), round(time.monotonic() - t1, 1), round(deadline))
            load.set_phase(step + ": recovered", inference_down=False)
            moved_on(step, since)
            if step == "kill -9 features mid-backlog":  # reported: 0 when the kill came just after a commit
                replays["after"] = p.metric("features", replayed_metric) + p.metric("features-1", replayed_metric)
            assert load.alive(), "the load thread died"
        load.set_phase("end")
    finally:
        load.stop()
    log = (p.stack.logs_dir / "ingest.log").read_text()  # how ingest lived through the broker outage
    ingest_path["broker"] = ("restarted in-process" if '"ingest restarted"' in log else "waited in its commit") + (
        ", its failed batch's undelivered messages purged" if "undelivered messages of the failed batch" in log else "")
    print(f"\n(fault, ready again after it, deadline) in s: {ready_s}; ingest through the broker outage: {ingest_path}; "
          f"features events re-read and skipped after the kill: {replays}")
    print(f"Recommend calls by phase: { {k: dict(v) for k, v in load.by_phase().items()} }")

    # -- drain: ingest has read everything, the features hold every clean event, rewards are out --
    delivered = list(load.delivered)
    assert not load.delivery_errors, load.delivery_errors[:5]
    raw_end = end_offsets(p.settings, EVENTS_RAW)
    wait_until(lambda: committed_offsets(p.settings, "recpilot-ingest", EVENTS_RAW, list(raw_end)) == raw_end, 60,
               lambda: f"ingest committed {committed_offsets(p.settings, 'recpilot-ingest', EVENTS_RAW, list(raw_end))}"
                       f" of {raw_end}", 0.5)
    clean = _clean(p)
    last = {}
    for m in clean:
        last[f"{m.topic()}:{m.partition()}"] = max(last.get(f"{m.topic()}:{m.partition()}", -1), m.offset())
    client = FeatureClient(p.settings.redis_url, "rp:")

    def stored_at_end() -> bool:
        stored = client.offsets()
        return all(stored.get(k, -1) >= v for k, v in last.items())

    wait_until(stored_at_end, 60, lambda: f"features stored offsets {client.offsets()}, clean ends at {last}", 0.5)

    # -- ingest: every acknowledged raw event on events.clean exactly once --
    events = [events_pb2.UserEvent.FromString(m.value()) for m in clean]
    ids = Counter(ev.event_id for ev in events)
    twice = {k: n for k, n in ids.items() if n > 1}
    assert not twice, f"{len(twice)} events twice on events.clean"
    assert set(ids) == set(delivered), (f"lost {len(set(delivered) - set(ids))} of {len(set(delivered))}, "
                                        f"unexpected {len(set(ids) - set(delivered))}")
    # -- features: exactly the counts of events.clean --
    try:
        assert_matches_offline(client, events, int(time.time() * 1000))
    finally:
        client.close()

    # -- rewards: one per shown item, each backed by its outcomes --
    imps = [events_pb2.Impression.FromString(m.value()) for m in read_to_end(p.settings, IMPRESSIONS, idle_s=0.5)]
    shown = {(imp.request_id, it.item_id) for imp in imps for it in imp.items}

    def rewards() -> list:
        return [events_pb2.Reward.FromString(m.value()) for m in read_to_end(p.settings, REWARDS, idle_s=0.3)]

    got = wait_until(lambda: (r := rewards()) and {(x.request_id, x.item_id) for x in r} >= shown and r, 60,
                     lambda: f"rewards for {len(shown)} shown items", 1.0)
    per_pair = Counter((r.request_id, r.item_id) for r in got)
    assert [k for k, n in per_pair.items() if n > 1] == [], "a shown item rewarded twice"
    assert set(per_pair) == shown
    # The outcomes a reward may count (docs/learning.md "Rewards"): those that name its request and
    # item, and those that name no request, of the same user and item, within its window.
    by_request: dict[tuple[str, str], list] = defaultdict(list)
    unnamed: dict[tuple[str, str], list] = defaultdict(list)
    for ev in events:
        if ev.event_type in (events_pb2.CLICK, events_pb2.ADD_TO_CART, events_pb2.PURCHASE):
            if ev.request_id:
                by_request[(ev.request_id, ev.item_id)].append(ev)
            else:
                unnamed[(ev.user_id, ev.item_id)].append(ev)
    window_ms = int(float(ENV["RECPILOT_RL_FEEDBACK_WINDOW_S"]) * 1000)
    short = 0
    for r in got:
        cands = by_request.get((r.request_id, r.item_id), []) + [
            ev for ev in unnamed.get((r.user_id, r.item_id), [])
            if r.impression_ts_ms <= ev.timestamp_ms <= r.impression_ts_ms + window_ms]
        types = {ev.event_type for ev in cands}
        assert not r.clicked or events_pb2.CLICK in types, (r, cands)
        assert not r.added_to_cart or events_pb2.ADD_TO_CART in types, (r, cands)
        assert not r.purchased or events_pb2.PURCHASE in types, (r, cands)
        assert r.outcome_events <= len(cands), (r, cands)  # no outcome counted twice
        assert r.revenue <= sum(ev.price for ev in cands if ev.event_type == events_pb2.PURCHASE) + 1e-6, (r, cands)
        want = (WEIGHTS["click"] * r.clicked + WEIGHTS["add_to_cart"] * r.added_to_cart
                + WEIGHTS["purchase"] * r.purchased + WEIGHTS["revenue"] * r.revenue)
        assert r.reward == pytest.approx(want), r
        short += r.outcome_events < len(cands)  # late, or an unnamed outcome another impression took
    clicked = sum(r.clicked for r in got)
    print(f"events {len(events)} ({len(delivered)} delivered); shown {len(shown)}, rewards {len(got)}, "
          f"clicked {clicked}, with fewer outcomes than could count (late ones): {short}")
    assert clicked > 0

    # -- Recommend: answered (the model's answer or a flagged fallback) unless inference was down --
    failed_up = Counter(f"{c.phase}: {c.detail} {c.message}" for c in load.calls
                        if c.outcome == "error" and not c.inference_down)
    assert not failed_up, f"Recommend failed while inference was up: {failed_up}"
    answered = Counter(c.outcome for c in load.calls)
    assert answered["model"] > 0
    assert all(c.detail for c in load.calls if c.outcome == "fallback"), "a fallback that does not say why"
