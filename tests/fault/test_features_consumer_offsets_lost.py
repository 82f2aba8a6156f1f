"""The two places that say how far the features worker got disagree, and the Redis one wins:

- the Kafka consumer offsets are lost (a new consumer group: the app id changed, or the broker lost
  ``__consumer_offsets``): the worker re-reads the whole topic from the start, and every event is
  skipped as already applied by the offsets stored in Redis with the features; nothing changes;
- Redis comes back with less than it acknowledged (a failover to a replica without the last writes,
  a restore from an older copy) while the group's committed offsets are past those events: the
  worker seeks back to the stored offsets and applies them again, once.

(A kill -9 mid-stream and a restart, with a replay of what the worker had written but not committed:
tests/fault/test_platform_faults.py.)"""

from __future__ import annotations

import re
import time

import pytest

from recpilot.simulator import ShopSimulator
from recpilot.stack.process import ServiceProcess
from tests.support.features import FeaturesTestbed, assert_matches_offline, offline_store, send, wait_applied

N_EVENTS = 5_000


@pytest.fixture
def setup(stack, platform_settings, unique, tmp_path):
    bed = FeaturesTestbed(platform_settings, "ff", unique, tmp_path)
    yield bed
    bed.close()


def _metric(worker: ServiceProcess, outcome: str) -> float:
    code, text = worker.get("/metrics")
    assert code == 200
    m = re.search(rf'^recpilot_features_events_total{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_new_consumer_group_rereads_everything_and_applies_nothing(platform_settings, setup, unique, wait_until):
    sim = ShopSimulator(seed=99, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    client = setup.client
    first = setup.worker().start().wait_ready()
    send(platform_settings, setup.topic, events)
    wait_applied(client, N_EVENTS, first, timeout=90)
    # the counter follows the Redis write that made the events visible
    wait_until(lambda: _metric(first, "applied") >= N_EVENTS, 30, lambda: f"applied {_metric(first, 'applied')}", 0.2)
    assert _metric(first, "applied") == N_EVENTS
    first.stop()
    offline = offline_store(events)
    assert_matches_offline(client, events, now)
    assert client.popular(10) == offline.top_popular(10)
    stored = client.offsets()

    # A new consumer group starts from the beginning of the topic: everything is re-read, nothing applied.
    second = setup.worker(RECPILOT_FEATURES_APP_ID=f"{setup.group}-replay").start().wait_ready(90)
    wait_until(lambda: (second.alive() or pytest.fail(second.log_tail())) and _metric(second, "replayed") >= N_EVENTS,
               60, lambda: f"replayed {_metric(second, 'replayed')} of {N_EVENTS}:\n{second.log_tail()}", 0.2)
    assert _metric(second, "replayed") == N_EVENTS
    assert _metric(second, "applied") == 0
    assert client.offsets() == stored
    assert_matches_offline(client, events, now)
    assert client.popular(10) == offline.top_popular(10)


def test_redis_restored_from_an_older_copy_is_caught_up_from_the_stored_offsets(platform_settings, setup, redis_client,
                                                                                 wait_until):
    from recpilot.kafka import committed_offsets

    sim = ShopSimulator(seed=98, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    half = N_EVENTS // 2
    client = setup.client

    def committed() -> int:
        return sum(committed_offsets(platform_settings, setup.group, setup.topic, range(4)).values())

    def run(batch) -> None:
        worker = setup.worker().start().wait_ready()
        before = committed()
        send(platform_settings, setup.topic, batch)
        wait_applied(client, before + len(batch), worker, timeout=90)
        worker.stop()  # faust commits what it acked
        assert committed() == before + len(batch)

    run(events[:half])
    copy = {k: (redis_client.dump(k), redis_client.pttl(k)) for k in redis_client.scan_iter(f"{setup.prefix}*")}
    run(events[half:])
    assert_matches_offline(client, events, now)

    # Redis comes back as it was after the first half; the group's commit says everything was read
    for k in redis_client.scan_iter(f"{setup.prefix}*"):
        redis_client.delete(k)
    for k, (dumped, ttl) in copy.items():
        redis_client.restore(k, max(ttl, 0), dumped)
    assert sum(v + 1 for v in client.offsets().values()) == half and committed() == N_EVENTS

    worker = setup.worker().start().wait_ready()
    wait_applied(client, N_EVENTS, worker, timeout=90)
    assert_matches_offline(client, events, now)
    assert _metric(worker, "applied") == N_EVENTS - half
    warned = [ln for ln in worker.log_tail(200).splitlines() if "the feature store is behind" in ln]
    assert warned and f'"events": {N_EVENTS - half}' in warned[0]


def test_redis_going_back_under_a_running_worker_is_caught_and_replayed(platform_settings, setup, redis_client,
                                                                        wait_until):
    """The same loss while the worker runs: its next write finds a lower offset than it stored itself
    (APPLY refuses: STALE), it restarts itself (same pid), seeks back to the stored offsets and applies
    the lost events and the new ones, each once."""
    sim = ShopSimulator(seed=97, n_users=80, n_items=200)
    now = int(time.time() * 1000)
    events = list(sim.events(N_EVENTS, now - 2 * 3_600_000, step_ms=2 * 3_600_000 / N_EVENTS))
    third = N_EVENTS // 3
    client = setup.client
    worker = setup.worker().start().wait_ready()
    pid = worker.pid
    send(platform_settings, setup.topic, events[:third])
    wait_applied(client, third, worker, timeout=90)
    copy = {k: (redis_client.dump(k), redis_client.pttl(k)) for k in redis_client.scan_iter(f"{setup.prefix}*")}
    send(platform_settings, setup.topic, events[third:2 * third])
    wait_applied(client, 2 * third, worker, timeout=90)
    for k in redis_client.scan_iter(f"{setup.prefix}*"):
        redis_client.delete(k)
    for k, (dumped, ttl) in copy.items():
        redis_client.restore(k, max(ttl, 0), dumped)

    send(platform_settings, setup.topic, events[2 * third:])
    wait_until(lambda: "lost acknowledged writes" in worker.log_tail(400), 60,
               lambda: "the worker did not notice the loss:\n" + worker.log_tail())
    wait_applied(client, N_EVENTS, worker, timeout=120)
    assert worker.alive() and worker.pid == pid  # it re-executed itself
    assert_matches_offline(client, events, now)
    log = worker.log_tail(400)
    assert "the feature store is behind the group's committed offsets" in log
