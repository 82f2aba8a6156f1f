from confluent_kafka import Message

from recpilot.kafka import commit_offsets
from recpilot.settings import PlatformSettings
from recpilot.topics import CONTROL_ACKS, CONTROL_DEPLOYMENTS, EVENTS_RAW, acks_topic, catalogue


def test_commit_offsets_is_last_plus_one_per_partition():
    msgs = [Message(topic="t", partition=p, offset=o) for p, o in [(0, 5), (1, 7), (0, 9), (0, 6), (2, 0)]]
    got = {(tp.topic, tp.partition): tp.offset for tp in commit_offsets(msgs)}
    assert got == {("t", 0): 10, ("t", 1): 8, ("t", 2): 1}


def test_catalogue_uses_partition_settings():
    s = PlatformSettings(events_partitions=6, default_partitions=2)
    specs = {t.name: t for t in catalogue(s)}
    assert specs[EVENTS_RAW].partitions == 6
    assert specs[CONTROL_DEPLOYMENTS].partitions == 1
    assert specs[CONTROL_DEPLOYMENTS].config["retention.ms"] == "-1"
    # the replicas' acks: a topic of their own, kept like the commands (the audit trail)
    assert CONTROL_ACKS == "control.acks" and specs[CONTROL_ACKS].partitions == 1
    assert specs[CONTROL_ACKS].config["retention.ms"] == "-1"
    assert specs["metrics.inference"].partitions == 2
    assert "metrics.monitor" in specs  # the monitor publishes its own metric events too
    assert len(specs) == 14


def test_every_control_topic_has_an_acks_topic_of_its_own():
    assert acks_topic(CONTROL_DEPLOYMENTS) == CONTROL_ACKS
    assert acks_topic("test.deployments.abc") == "test.deployments.abc.acks"
    assert acks_topic(CONTROL_ACKS) != CONTROL_ACKS  # never the control topic itself


def test_the_join_changelog_is_compacted_and_copartitioned_with_impressions():
    from recpilot.topics import IMPRESSIONS, RL_JOIN_CHANGELOG

    specs = {t.name: t for t in catalogue(PlatformSettings(impressions_partitions=5, events_partitions=5))}
    assert specs[RL_JOIN_CHANGELOG].partitions == specs[IMPRESSIONS].partitions == 5
    assert specs[RL_JOIN_CHANGELOG].config["cleanup.policy"] == "compact"
    assert "metrics.rl_feedback" in specs


def test_usable_skips_eof_reports_errors_and_raises_on_fatal():
    import pytest
    from confluent_kafka import KafkaError, KafkaException

    from recpilot.kafka import usable

    data = Message(topic="t", partition=0, offset=1, value=b"x")
    eof = Message(topic="t", partition=0, offset=2, error=KafkaError(KafkaError._PARTITION_EOF))
    transient = Message(topic="t", partition=0, error=KafkaError(KafkaError._TRANSPORT))
    seen = []
    assert usable([data, eof, transient], seen.append) == [data]
    assert [e.code() for e in seen] == [KafkaError._TRANSPORT]
    assert usable([transient, data]) == [data]  # logged, not raised
    fatal = Message(topic="t", partition=0, error=KafkaError(KafkaError._FATAL, fatal=True))
    with pytest.raises(KafkaException):
        usable([fatal])


class _FakeConsumer:
    """Serves scripted ``consume`` results (a callable entry runs instead, e.g. a rebalance
    callback) and records commits; asks the loop to stop once the script is used up."""

    def __init__(self, script, log):
        self.script, self.log = list(script), log
        self.loop = None
        self.callbacks = {}
        self.closed = False

    def subscribe(self, topics, **callbacks):
        self.topics, self.callbacks = topics, callbacks

    def consume(self, n, timeout):
        while self.script and callable(self.script[0]):
            self.script.pop(0)(self)
        if not self.script:
            self.loop.stop()
            return []
        return self.script.pop(0)

    def commit(self, offsets, asynchronous):
        assert asynchronous is False
        self.log.append(("commit", sorted((tp.topic, tp.partition, tp.offset) for tp in offsets)))

    def close(self):
        self.closed = True


def _loop(script, handler=None, **kw):
    from recpilot.kafka import ConsumeLoop

    log = []
    c = _FakeConsumer(script, log)
    loop = ConsumeLoop(c, ["t"], handler or (lambda b: log.append(("handle", [m.offset() for m in b]))),
                       after_batch=lambda b: log.append(("after", len(b))), **kw)
    c.loop = loop
    return loop, c, log


def _tp(topic, partition):
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)


def test_consume_loop_commits_each_batch_after_its_handler():
    from confluent_kafka import KafkaError

    eof = Message(topic="t", partition=0, offset=3, error=KafkaError(KafkaError._PARTITION_EOF))
    batch1 = [Message(topic="t", partition=0, offset=o) for o in (0, 1, 2)] + [eof]
    batch2 = [Message(topic="t", partition=1, offset=7)]
    loop, c, log = _loop([
        lambda c: c.callbacks["on_assign"](c, [_tp("t", 0), _tp("t", 1)]),
        batch1, [], [eof], batch2,
        lambda c: c.callbacks["on_revoke"](c, [_tp("t", 1)]),
    ])
    loop.run()
    assert log == [("handle", [0, 1, 2]), ("commit", [("t", 0, 3)]), ("after", 3),
                   ("handle", [7]), ("commit", [("t", 1, 8)]), ("after", 1)]
    assert (loop.batches, loop.messages) == (2, 4)
    assert c.topics == ["t"] and set(c.callbacks) == {"on_assign", "on_revoke", "on_lost"}
    assert loop.assigned == {("t", 0)} and c.closed and loop.last_poll > 0


def test_consume_loop_on_assign_gets_the_partitions_new_to_it():
    """Eager rebalances revoke everything, then assign: what was handed back is not new; what was
    lost (another consumer may have had it since) or never held is."""
    new = []
    assign = lambda *ps: lambda c: c.callbacks["on_assign"](c, [_tp("t", p) for p in ps])  # noqa: E731
    revoke = lambda *ps: lambda c: c.callbacks["on_revoke"](c, [_tp("t", p) for p in ps])  # noqa: E731
    lost = lambda *ps: lambda c: c.callbacks["on_lost"](c, [_tp("t", p) for p in ps])  # noqa: E731
    loop, c, log = _loop([assign(0, 1, 2, 3), revoke(0, 1, 2, 3), assign(0, 1),  # a second consumer joined
                          revoke(0, 1), assign(0, 1, 2, 3),                        # ... and left
                          lost(0, 1, 2, 3), assign(0, 1)],
                         on_assign=lambda ps: new.append(sorted(p for _, p in ps)))
    loop.run()
    assert new == [[0, 1, 2, 3], [], [2, 3], [0, 1]]
    assert loop.assigned == {("t", 0), ("t", 1)}


def test_consume_loop_failing_handler_commits_nothing_and_records_the_error():
    def failing(_batch):
        raise RuntimeError("side effect failed")

    loop, c, log = _loop([[Message(topic="t", partition=0, offset=0)]], failing)
    loop.start()
    loop._thread.join(5)
    assert not loop.running and isinstance(loop.error, RuntimeError)
    assert log == [] and loop.batches == 0 and c.closed


def test_consume_loop_commit_callback_replaces_the_consumer_commit():
    committed = []
    loop, c, log = _loop([[Message(topic="t", partition=2, offset=4), Message(topic="t", partition=2, offset=5)]],
                         commit=lambda offsets: committed.append([(tp.partition, tp.offset) for tp in offsets]))
    loop.run()
    assert committed == [[(2, 6)]]
    assert log == [("handle", [4, 5]), ("after", 2)]  # the consumer itself committed nothing


def test_consumer_lag_sums_the_topic_partitions_of_a_statistics_document():
    import json

    from recpilot.kafka import consumer_lag

    doc = {"topics": {"raw": {"partitions": {"0": {"consumer_lag": 5}, "1": {"consumer_lag": -1},
                                             "2": {"consumer_lag": 7}, "-1": {"consumer_lag": 100}}},
                      "other": {"partitions": {"0": {"consumer_lag": 50}}}}}
    assert consumer_lag(json.dumps(doc), "raw") == 12
    assert consumer_lag(json.dumps(doc), "missing") == 0
    assert consumer_lag("not json", "raw") is None
