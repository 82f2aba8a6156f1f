"""The real local stack: Kafka (KRaft) and Redis started by recpilot's own stack manager."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic

from recpilot.kafka import ConsumeLoop, admin, consumer, flush_or_raise, producer
from recpilot.net import free_port
from recpilot.pb import events_pb2
from recpilot.stack.alertmanager import alertmanager_binary
from recpilot.topics import EVENTS_CLEAN, EVENTS_RAW


def _topic(settings, name, partitions=1):
    adm = admin(settings)  # keep a reference until the future resolves
    adm.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    return name


def _consume_all(settings, topic, expected, group, timeout=30.0):
    c = consumer(settings, group)
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        for m in c.consume(100, 0.5):
            if m.error() is None:
                got.append(m)
    c.close()
    return got


def test_status_reports_both_ready(stack):
    st = stack.status()
    comps = {c["name"]: c for c in st["components"]}
    for name in ("kafka", "redis"):
        assert comps[name]["running"] and comps[name]["ready"], comps[name]
        assert isinstance(comps[name]["pid"], int)
    assert comps["kafka"]["address"] == f"127.0.0.1:{stack.s.kafka_port}"
    md = admin(stack.s).list_topics(timeout=10)
    assert {EVENTS_RAW, EVENTS_CLEAN, "control.deployments", "control.acks", "metrics.ingest"} <= set(md.topics)
    assert len(md.topics[EVENTS_RAW].partitions) == stack.s.events_partitions


def test_protobuf_event_roundtrip(stack, unique):
    topic = _topic(stack.s, f"it.events.{unique}", 2)
    prod = producer(stack.s)
    sent = []
    for i in range(20):
        ev = events_pb2.UserEvent(event_id=f"e{i}", user_id=f"u{i % 3}", event_type=events_pb2.CLICK,
                                  item_id=f"i{i}", price=float(i), timestamp_ms=1_700_000_000_000 + i)
        sent.append(ev)
        prod.produce(topic, key=ev.user_id.encode(), value=ev.SerializeToString())
    flush_or_raise(prod)
    got = _consume_all(stack.s, topic, 20, f"it-{unique}")
    events = sorted((events_pb2.UserEvent.FromString(m.value()) for m in got), key=lambda e: e.timestamp_ms)
    assert events == sent
    # Keyed by user: all events of one user are in one partition, in order.
    by_user = {}
    for m in got:
        by_user.setdefault(m.key(), set()).add(m.partition())
    assert all(len(parts) == 1 for parts in by_user.values())


def test_redis_read_write(redis_client, unique):
    key = f"it:{unique}"
    redis_client.hset(key, mapping={"views": 3, "clicks": 1})
    redis_client.hincrby(key, "views", 2)
    assert redis_client.hgetall(key) == {b"views": b"5", b"clicks": b"1"}
    redis_client.delete(key)


def test_consume_loop_commits_only_after_the_side_effect(stack, unique):
    topic = _topic(stack.s, f"it.loop.{unique}")
    prod = producer(stack.s)
    for i in range(10):
        prod.produce(topic, value=str(i).encode())
    flush_or_raise(prod)
    group = f"loop-{unique}"

    def failing(_batch):
        raise RuntimeError("side effect failed")

    loop = ConsumeLoop(consumer(stack.s, group), [topic], failing, batch_size=100)
    loop.start()
    deadline = time.monotonic() + 30
    while loop.running and time.monotonic() < deadline:
        time.sleep(0.1)
    assert isinstance(loop.error, RuntimeError)

    seen = []
    ok = ConsumeLoop(consumer(stack.s, group), [topic], lambda b: seen.extend(int(m.value()) for m in b), batch_size=100)
    ok.start()
    deadline = time.monotonic() + 30
    while len(seen) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    ok.stop()
    assert sorted(seen) == list(range(10))  # nothing was committed by the failed loop

    prod.produce(topic, value=b"10")
    flush_or_raise(prod)
    again = [int(m.value()) for m in _consume_all(stack.s, topic, 1, group)]
    assert again == [10]  # the successful loop committed everything it handled


# -- a stack of its own, restarted with the CLI ------------------------------------------------
@pytest.fixture
def own_stack_env(tmp_path):
    env = dict(os.environ)
    env.update({
        "RECPILOT_HOME": str(tmp_path / "home"),
        "RECPILOT_KAFKA_PORT": "29092",
        "RECPILOT_KAFKA_CONTROLLER_PORT": "29093",
        "RECPILOT_REDIS_PORT": "26379",
        "RECPILOT_ALERTMANAGER_PORT": str(free_port()),
    })
    yield env
    subprocess.run([sys.executable, "-m", "recpilot.cli", "down"], env=env, capture_output=True, timeout=120)


def _cli(env, *args, timeout=180):
    res = subprocess.run([sys.executable, "-m", "recpilot.cli", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"recpilot {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _our_pids(home: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if home in cmd and state != "Z":
            pids.append(int(pid))
    return pids


def test_acknowledged_message_survives_down_and_up(own_stack_env):
    env = own_stack_env
    out = _cli(env, "up", "--no-services")
    st = json.loads(_cli(env, "status", "--json"))
    assert all(c["ready"] for c in st["components"] if c["name"] in ("kafka", "redis"))
    comps = {c["name"]: c for c in st["components"]}
    if alertmanager_binary():  # started with the stack when installed, else one line says so
        assert comps["alertmanager"]["ready"], out
        assert comps["alertmanager"]["address"] == f"127.0.0.1:{env['RECPILOT_ALERTMANAGER_PORT']}"
        assert "--cluster.listen-address=" in open(f"{env['RECPILOT_HOME']}/run/alertmanager.json").read()
    else:
        assert "alertmanager: not installed" in out and "alertmanager" not in comps

    boot = "127.0.0.1:29092"
    prod = Producer({"bootstrap.servers": boot, "acks": "all", "enable.idempotence": True})
    acked = []
    ev = events_pb2.UserEvent(event_id="persist-1", user_id="u-persist", event_type=events_pb2.PURCHASE,
                              item_id="i-1", price=42.0, timestamp_ms=1_700_000_000_123)
    prod.produce(EVENTS_RAW, key=b"u-persist", value=ev.SerializeToString(),
                 on_delivery=lambda err, msg: acked.append((err, msg.offset())))
    prod.flush(30)
    assert acked and acked[0][0] is None
    import redis

    r = redis.Redis(port=26379)
    r.set("persist:key", "kept")
    r.close()

    _cli(env, "down")
    assert _our_pids(env["RECPILOT_HOME"]) == []
    st = json.loads(_cli(env, "status", "--json"))
    assert not any(c["running"] for c in st["components"])

    _cli(env, "up", "--no-services")
    c = Consumer({"bootstrap.servers": boot, "group.id": "persist-check", "auto.offset.reset": "earliest"})
    c.subscribe([EVENTS_RAW])
    found = None
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        for m in c.consume(100, 0.5):
            if m.error() is None and events_pb2.UserEvent.FromString(m.value()).event_id == "persist-1":
                found = events_pb2.UserEvent.FromString(m.value())
    c.close()
    assert found == ev
    r = redis.Redis(port=26379)
    assert r.get("persist:key") == b"kept"  # the append-only file brought it back
    r.close()
