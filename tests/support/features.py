"""The features worker as a real process, and events sent to it the way a shop backend would."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from confluent_kafka import Producer

from recpilot.stack.process import ServiceProcess
from tests.support.wait import wait_until


def features_worker(env: dict, log: Path) -> ServiceProcess:
    """``python -m services.features`` (not started yet) with ``env`` (``RECPILOT_FEATURES_*``)."""
    return ServiceProcess("services.features", log, env=env)


def worker_env(topic: str, metrics_topic: str, group: str, datadir, **settings) -> dict:
    """The ``RECPILOT_FEATURES_*`` variables of a test worker on its own input and metrics topics,
    consumer group and faust data dir; ``settings`` add more (``key_prefix=``, ``redis_url=`` ...)."""
    env = {"RECPILOT_FEATURES_INPUT_TOPIC": topic, "RECPILOT_FEATURES_METRICS_TOPIC": metrics_topic,
           "RECPILOT_FEATURES_APP_ID": group, "RECPILOT_FEATURES_DATADIR": str(datadir)}
    env.update({f"RECPILOT_FEATURES_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class FeaturesTestbed:
    """A test's own features set-up on the test stack: an input topic (``partitions``), a metrics
    topic, a consumer group, a key prefix and a faust data dir, all named after ``name`` and
    ``unique``. ``worker(**env)`` builds a worker on them (not started; ``env`` adds or overrides
    variables; every worker is stopped by :meth:`close`), ``client`` reads what they write. On a
    Redis Cluster (``cluster_url``) the workers and the client use ``shards`` shards."""

    def __init__(self, platform, name: str, unique: str, tmp_path: Path, *, partitions: int = 4,
                 cluster_url: str | None = None, shards: int = 1, **settings) -> None:
        from recpilot.kafka import create_topics
        from services.features.client import FeatureClient

        self.platform, self.name = platform, name
        self.topic, self.metrics_topic = f"test.features.{name}.{unique}", f"test.features.{name}.metrics.{unique}"
        self.prefix, self.group = f"test:{name}:{unique}:", f"test-features-{name}-{unique}"
        create_topics(platform, [self.topic], partitions)
        create_topics(platform, [self.metrics_topic], 1)
        self.env = worker_env(self.topic, self.metrics_topic, self.group, tmp_path / "faust", key_prefix=self.prefix,
                              **settings)
        self.redis_url, self.cluster = cluster_url or platform.redis_url, cluster_url is not None
        if self.cluster:
            self.env.update({"RECPILOT_REDIS_URL": cluster_url, "RECPILOT_REDIS_CLUSTER": "true",
                             "RECPILOT_REDIS_SHARDS": str(shards)})
        self.log = platform.home / "logs" / f"test-features-{name}-{unique}.log"
        self.client = FeatureClient(self.redis_url, self.prefix, shards=shards, cluster=self.cluster)
        self.workers: list[ServiceProcess] = []

    def worker(self, log: Path | None = None, **env) -> ServiceProcess:
        w = features_worker({**self.env, **env}, log or self.log)
        self.workers.append(w)
        return w

    def close(self) -> None:
        from recpilot.kafka import delete_topics
        from services.features.client import connect

        for w in self.workers:
            w.stop()
        self.client.close()
        raw = connect(self.redis_url, cluster=self.cluster)
        try:
            delete_prefix(raw, self.prefix)
        finally:
            raw.close()
        delete_topics(self.platform, [self.topic, self.metrics_topic])


class PacedStream(threading.Thread):
    """``events`` sent with ``send(paced=True)`` on a thread of their own: a steady stream that keeps
    going across a fault. :meth:`finish` waits for it and checks every event was delivered."""

    def __init__(self, platform, topic: str, events) -> None:
        super().__init__(daemon=True)
        self.platform, self.topic, self.events = platform, topic, events
        self.sent = 0

    def run(self) -> None:
        send(self.platform, self.topic, self.events, paced=True)
        self.sent = len(self.events)

    def finish(self, timeout: float = 60.0) -> None:
        self.join(timeout)
        assert self.sent == len(self.events), f"{self.sent} of {len(self.events)} events delivered"


def offline_store(events):
    """:class:`featurespec.OfflineFeatureStore` over ``events`` (simulator protobufs)."""
    from recpilot import featurespec as fs
    from recpilot.simulator import event_to_dict

    offline = fs.OfflineFeatureStore()
    for ev in events:
        offline.apply(event_to_dict(ev))
    return offline


def delete_prefix(redis_client, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own features in the shared Redis), the shard-tagged
    ones (``{<prefix><n>}...``) too; on a Redis Cluster client, key by key."""
    for pattern in (f"{prefix}*", f"{{{prefix}*"):
        keys = list(redis_client.scan_iter(pattern, count=1000))
        if keys and hasattr(redis_client, "get_nodes"):  # a cluster: keys of many slots
            for k in keys:
                redis_client.delete(k)
        elif keys:
            redis_client.delete(*keys)


def send(platform, topic: str, events, paced: bool = False) -> None:
    """A plain confluent-kafka producer (what any shop backend would use), keyed by user id.
    ``paced``: 200 events then a 50 ms pause (a steady stream that outlasts a crash in the middle
    of it, for fault tests). Every event is delivered or this fails."""
    p = Producer({"bootstrap.servers": platform.kafka_bootstrap, "linger.ms": 5})
    for k, ev in enumerate(events):
        p.produce(topic, key=ev.user_id.encode(), value=ev.SerializeToString())
        if not paced:
            p.poll(0)
        elif k % 200 == 199:
            p.poll(0)
            time.sleep(0.05)
    assert p.flush(30) == 0


def applied(client) -> int:
    """Events the workers applied, from the offsets they store in Redis."""
    return sum(v + 1 for v in client.offsets().values())


def wait_applied(client, n: int, worker: ServiceProcess, timeout: float = 45.0) -> None:
    """Until ``n`` events are applied; fails at once when the worker exits."""

    def done() -> bool:
        assert worker.alive(), worker.log_tail()
        return applied(client) >= n

    wait_until(done, timeout, lambda: f"{n} events applied (now {client.offsets()}):\n{worker.log_tail()}")


def assert_matches_offline(client, events, now_ms: int) -> None:
    """The features in Redis are those of :class:`featurespec.OfflineFeatureStore` over ``events``, every
    event counted exactly once: per item the counts equal those of the input, and every item and
    user dict equals the offline store's."""
    from collections import Counter

    from recpilot import featurespec as fs

    offline = offline_store(events)
    expected = Counter((e.item_id, fs.COUNT_FIELD[fs.EVENT_NAMES[e.event_type]])
                       for e in events if fs.EVENT_NAMES.get(e.event_type) in fs.COUNT_FIELD)
    _, items = client.fetch("", sorted({e.item_id for e in events if e.item_id}), now_ms)
    def diff(got: dict, want: dict) -> dict:
        return {k: (got.get(k), want.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}

    for it in items:
        assert {f: it[f] for f in fs.COUNT_FIELDS} == {f: expected[(it["item_id"], f)] for f in fs.COUNT_FIELDS}, \
            f"{it['item_id']} (stored, of the events): {diff(it, {f: expected[(it['item_id'], f)] for f in fs.COUNT_FIELDS})}"
        want = offline.item(it["item_id"], now_ms)
        assert it == want, f"{it['item_id']} (stored, of the events): {diff(it, want)}"
    for uid in sorted({e.user_id for e in events}):
        got, want = client.user(uid), offline.user(uid)
        assert got == want, f"{uid} (stored, of the events): {diff(got, want)}"


def wait_matches_offline(client, events, now_ms: int, timeout: float = 10.0) -> None:
    """:func:`assert_matches_offline`, polled for up to ``timeout`` seconds: on a sharded store the
    applied offsets can reach the end while the last batch's calls on other Redis nodes are landing."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            assert_matches_offline(client, events, now_ms)
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
