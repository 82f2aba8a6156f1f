from confluent_kafka import Message

from recpilot.kafka import commit_offsets
from recpilot.settings import PlatformSettings
from recpilot.topics import CONTROL_DEPLOYMENTS, EVENTS_RAW, catalogue


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
    assert specs["metrics.monitor"].partitions == 2
    assert len(specs) == 12


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
