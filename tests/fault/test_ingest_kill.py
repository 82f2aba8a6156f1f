"""kill -9 the ingest process in the middle of a stream of known events, restart it, and check the
clean topic: nothing lost, and no duplicate (transactions, read_committed) or no more duplicates
than one uncommitted batch (at-least-once mode; the start-up de-duplication warm-up from the
clean topic removes them in practice)."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from recpilot.kafka import committed_offsets, create_topics, delete_topics, producer, read_to_end
from recpilot.pb import events_pb2
from recpilot.simulator import ShopSimulator, TrafficMix
from recpilot.simulator.drive import open_loop
from tests.support.ingest import ingest_process, topic_names, wait_committed

pytestmark = pytest.mark.timeout(240)
BATCH = 500


@pytest.mark.parametrize("transactional", [True, False], ids=["transactions", "at-least-once"])
def test_kill_9_mid_stream_loses_nothing_and_duplicates_nothing(stack, platform_settings, unique, tmp_path,
                                                                  transactional):
    p = platform_settings
    names = topic_names(f"test-ingest-kill-{unique}")
    create_topics(p, list(names.values()), 4)
    group = f"test-ingest-kill-{unique}"
    settings = {"batch_size": BATCH, "transactional": str(transactional).lower(), "instance_id": "fault-test",
                "static_membership": "true"}
    log1, log2 = tmp_path / "ingest-1.log", tmp_path / "ingest-2.log"
    records: list[tuple[bytes, bytes, str]] = []
    procs = []
    try:
        proc = ingest_process(names, group, log1, **settings).start()
        procs.append(proc)
        proc.wait_ready(90)

        mix = TrafficMix(ShopSimulator(seed=21, n_users=2000, n_items=500), malformed_share=0.01, duplicate_share=0.05)
        prod = producer(p, **{"linger.ms": 5})

        def record(k, v, kind):
            records.append((k, v, kind))

        # a burst that keeps ingest busy, so that the kill lands inside a batch
        gen = threading.Thread(target=lambda: open_loop(prod, names["raw"], mix, 0, count=20_000, on_record=record))
        gen.start()
        t0 = time.monotonic()
        while sum(committed_offsets(p, group, names["raw"], [0, 1, 2, 3]).values()) < 2000:
            assert time.monotonic() - t0 < 30, "ingest made no progress"
            time.sleep(0.02)
        proc.kill9()
        assert proc.returncode == -signal.SIGKILL
        committed_at_kill = sum(committed_offsets(p, group, names["raw"], [0, 1, 2, 3]).values())
        gen.join(60)
        proc = ingest_process(names, group, log2, **settings).start()
        procs.append(proc)
        proc.wait_ready(90)
        # more traffic after the restart, with exact re-sends of events sent before the kill
        open_loop(prod, names["raw"], mix, 3000, duration_s=2.0, on_record=record)
        total = len(records)
        assert committed_at_kill < total
        wait_committed(p, group, names["raw"], [0, 1, 2, 3], total, proc, 60, "restarted ingest did not catch up")
        assert proc.stop(60) == 0
    finally:
        for pr in procs:
            pr.kill9()

    valid_ids = {events_pb2.UserEvent.FromString(v).event_id for _k, v, kind in records if kind == "valid"}
    clean = read_to_end(p, names["clean"], idle_s=1.0)
    ids = Counter(events_pb2.UserEvent.FromString(m.value()).event_id for m in clean)
    duplicates = sum(n - 1 for n in ids.values())
    seen_uncommitted = len(read_to_end(p, names["clean"], idle_s=0.5, read_committed=False))
    malformed = sum(1 for _k, _v, kind in records if kind not in ("valid", "duplicate"))
    dlq = read_to_end(p, names["dlq"], idle_s=0.5)
    dlq_sources = {(h["source_partition"], h["source_offset"]) for h in
                   ({k: v.decode() for k, v in m.headers()} for m in dlq)}
    warm = [line for line in log2.read_text().splitlines() if '"dedup warm-up done"' in line]
    print(f"\n[{'transactions' if transactional else 'at-least-once'}] sent {total} raw "
          f"({len(valid_ids)} valid distinct, {malformed} malformed); killed at {committed_at_kill} committed; "
          f"clean (read_committed) {len(clean)} with {duplicates} duplicates; read_uncommitted sees "
          f"{seen_uncommitted}; dlq {len(dlq)} ({len(dlq_sources)} distinct sources); warm-up: {warm[:1]}")

    assert set(ids) == valid_ids, f"lost {len(valid_ids - set(ids))}, unexpected {len(set(ids) - valid_ids)}"
    assert len(dlq_sources) == malformed
    assert warm and '"event_ids": 0' not in warm[0]
    if transactional:
        assert duplicates == 0
        assert len(dlq) == malformed
    else:
        assert duplicates <= BATCH
    delete_topics(p, list(names.values()))
