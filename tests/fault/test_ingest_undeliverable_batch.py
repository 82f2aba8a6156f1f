"""A batch that can never be delivered (the clean topic's max.message.bytes set too small): ingest
restarts in-process with backoff, not ready meanwhile, commits nothing, and finishes once the topic is
fixed, every event once. (A broker that dies while ingest works through a backlog:
tests/fault/test_platform_faults.py.)
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from recpilot import kafka as rkafka
from recpilot.kafka import committed_offsets, delete_topics, producer, read_to_end
from recpilot.pb import events_pb2
from recpilot.simulator import ShopSimulator
from recpilot.topics import TopicSpec
from tests.support.ingest import ingest_process, wait_committed

pytestmark = pytest.mark.timeout(300)


def _clean_ids(platform, topic: str) -> tuple[list, Counter]:
    clean = read_to_end(platform, topic, idle_s=1.0)
    return clean, Counter(events_pb2.UserEvent.FromString(m.value()).event_id for m in clean)


def test_undeliverable_batch_restarts_with_backoff_until_fixed(stack, platform_settings, unique, tmp_path):
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    p = platform_settings
    names = {x: f"test-ingest-restart-{unique}.{x}" for x in ("raw", "clean", "dlq", "metrics")}
    adm = rkafka.admin(p)
    rkafka.ensure_topics(adm, [TopicSpec(names["raw"], 1), TopicSpec(names["dlq"], 1), TopicSpec(names["metrics"], 1),
                               TopicSpec(names["clean"], 1, {"max.message.bytes": "64"})])  # smaller than any event
    group = f"test-ingest-restart-{unique}"
    sim = ShopSimulator(seed=32, n_users=50, n_items=50)
    prod = producer(p)
    now = int(time.time() * 1000)
    sent = []
    for i in range(200):
        ev = sim.next_event(now - 10_000 + i)
        sent.append(ev.event_id)
        prod.produce(names["raw"], key=ev.user_id.encode(), value=ev.SerializeToString())
    assert prod.flush(30) == 0

    log = tmp_path / "ingest.log"
    proc = ingest_process(names, group, log, flush_timeout_s=3, restart_backoff_max_s=2).start()
    try:
        t0 = time.monotonic()
        while log.read_text().count('"ingest loop failed; restarting"') < 2:
            assert proc.alive(), "ingest exited:\n" + log.read_text()[-3000:]
            assert time.monotonic() - t0 < 90, "no failed batch and restart:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        assert "MSG_SIZE_TOO_LARGE" in log.read_text() or "too large" in log.read_text().lower()
        assert sum(committed_offsets(p, group, names["raw"], [0]).values()) == 0  # nothing of it committed
        assert proc.get("/readyz", 5)[0] == 503  # not ready while failing

        res = ConfigResource("topic", names["clean"], incremental_configs=[
            ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)])
        for f in adm.incremental_alter_configs([res]).values():
            f.result()
        wait_committed(p, group, names["raw"], [0], len(sent), proc, 90, "ingest did not recover after the fix")
        proc.wait_ready(30)
        text = log.read_text()
        assert '"ingest restarted"' in text
        assert proc.stop(60) == 0
    finally:
        proc.kill9()
    clean, ids = _clean_ids(p, names["clean"])
    print(f"\nrestarts: {text.count('ingest loop failed; restarting')} failed batches, "
          f"{text.count('ingest restarted')} restarts; clean {len(clean)} of {len(sent)}")
    assert set(ids) == set(sent) and sum(ids.values()) == len(sent)
    delete_topics(p, list(names.values()))
