"""recpilot.kafka's topic helpers on the real broker: create/delete throw-away topics, read a
topic to its end without a consumer group, end offsets and a group's committed offsets."""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from recpilot.kafka import (
    TopicReader,
    committed_offsets,
    consumer,
    create_topics,
    delete_topics,
    end_offsets,
    flush_or_raise,
    producer,
    read_to_end,
)


def test_read_to_end_offsets_and_committed(stack, platform_settings, unique):
    p = platform_settings
    topic = f"test.kafka.topics.{unique}"
    assert create_topics(p, [topic], 3) == [topic]
    assert create_topics(p, [topic], 3) == []  # already there
    try:
        prod = producer(p)
        t_mid = 0
        for i in range(90):
            if i == 60:
                time.sleep(0.05)
                t_mid = int(time.time() * 1000)
            prod.produce(topic, key=f"k{i % 7}".encode(), value=str(i).encode())
        flush_or_raise(prod)

        got = read_to_end(p, topic)
        assert sorted(int(m.value()) for m in got) == list(range(90))
        ends = end_offsets(p, topic)
        assert set(ends) == {0, 1, 2} and sum(ends.values()) == 90

        with TopicReader(p, topic) as r:
            assert r.partitions() == [0, 1, 2]
            since = r.offsets_for_time(t_mid)
            later = []
            assert r.read({q: o for q, o in since.items() if o >= 0}, later.append, timeout=30) == set()
            assert sorted(int(m.value()) for m in later) == list(range(60, 90))
            # a partition that is already at its end is done at once
            assert r.read({0: ends[0]}, later.append, timeout=30) == set() and len(later) == 30

        group = f"test-kafka-topics-{unique}"
        assert committed_offsets(p, group, topic, [0, 1, 2]) == {0: 0, 1: 0, 2: 0}  # nothing committed yet
        c = consumer(p, group)
        try:
            c.assign([TopicPartition(topic, 1, OFFSET_BEGINNING)])
            c.commit(offsets=[TopicPartition(topic, 1, 5)], asynchronous=False)
        finally:
            c.close()
        assert committed_offsets(p, group, topic, [0, 1, 2]) == {0: 0, 1: 5, 2: 0}
        assert read_to_end(p, f"{topic}.missing") == []
    finally:
        assert delete_topics(p, [topic, f"{topic}.missing", f"{topic}.never-created"]) == {}
