"""The whole loop as a user runs it: `recpilot up` on a fresh home, shop events from a plain Kafka
producer, features in Redis, Recommend answered by a model the first run trained and deployed, the
response's request id in `impressions`, a click on it joined into one reward per shown item on
`rewards`, and `recpilot down` leaving nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from confluent_kafka import Consumer, Producer

from recpilot.pb import events_pb2, recommend_pb2, recommend_pb2_grpc

PORTS = {
    "RECPILOT_KAFKA_PORT": "29292", "RECPILOT_KAFKA_CONTROLLER_PORT": "29293", "RECPILOT_REDIS_PORT": "26579",
    "RECPILOT_INGEST_HTTP_PORT": "29101", "RECPILOT_FEATURES_HTTP_PORT": "29102",
    "RECPILOT_INFERENCE_HTTP_PORT": "29103", "RECPILOT_INFERENCE_GRPC_PORT": "29051",
    "RECPILOT_RL_FEEDBACK_HTTP_PORT": "29104", "RECPILOT_RL_FEEDBACK_WINDOW_S": "2",
}


def _cli(env, *args, timeout=300):
    res = subprocess.run([sys.executable, "-m", "recpilot.cli", *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, f"recpilot {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


@pytest.fixture
def platform_env(tmp_path):
    env = dict(os.environ, RECPILOT_HOME=str(tmp_path / "home"), **PORTS)
    yield env
    subprocess.run([sys.executable, "-m", "recpilot.cli", "down"], env=env, capture_output=True, timeout=180)


def test_events_to_features_to_recommendations_to_impressions(platform_env):
    env = platform_env
    _cli(env, "up")
    st = {c["name"]: c for c in json.loads(_cli(env, "status", "--json"))["components"]}
    for name in ("kafka", "redis", "ingest", "features", "inference", "rl_feedback"):
        assert st[name]["running"] and st[name]["ready"], st[name]

    boot = f"127.0.0.1:{PORTS['RECPILOT_KAFKA_PORT']}"
    now = int(time.time() * 1000)
    prod = Producer({"bootstrap.servers": boot})
    sent = []
    for i in range(30):
        ev = {"event_id": f"e2e-{uuid.uuid4().hex}", "user_id": f"shopper-{i % 3}", "session_id": f"s{i % 3}",
              "event_type": "VIEW" if i % 5 else "CLICK", "item_id": f"e2e-item-{i % 6}", "price": 20.0 + i % 6,
              "timestamp_ms": now + i, "context": {"category": "shoes" if i % 2 else "bags"}}
        sent.append(ev)
        prod.produce("events.raw", key=ev["user_id"].encode(), value=json.dumps(ev).encode())
    prod.produce("events.raw", key=b"bad", value=b"\x00not an event")
    assert prod.flush(30) == 0

    # features: the item counts equal the input (ingest -> events.clean -> faust -> Redis)
    expected_views = sum(1 for e in sent if e["item_id"] == "e2e-item-1" and e["event_type"] == "VIEW")
    deadline = time.monotonic() + 60
    item = {}
    while time.monotonic() < deadline:
        item = json.loads(_cli(env, "features", "item", "e2e-item-1", "--json"))
        if item.get("views") == expected_views:
            break
        time.sleep(0.5)
    assert item.get("views") == expected_views and item.get("category") == "shoes", item

    # serving: a model-ranked answer naming its version, over the given candidates
    with grpc.insecure_channel(f"127.0.0.1:{PORTS['RECPILOT_INFERENCE_GRPC_PORT']}") as ch:
        stub = recommend_pb2_grpc.RecommenderStub(ch)
        resp = stub.Recommend(recommend_pb2.RecommendRequest(
            user_id="shopper-1", k=3, candidate_ids=[f"e2e-item-{j}" for j in range(6)]), timeout=10)
    assert not resp.fallback, resp.fallback_reason
    assert len(resp.items) == 3 and [it.position for it in resp.items] == [1, 2, 3]
    assert resp.model_version and resp.request_id
    assert all(it.item_id.startswith("e2e-item-") for it in resp.items)
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)

    # the impression log has this response, with the same items and version
    c = Consumer({"bootstrap.servers": boot, "group.id": f"e2e-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"})
    c.subscribe(["impressions"])
    found = None
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline:
        for m in c.consume(100, 0.5):
            if m.error() is None:
                imp = events_pb2.Impression.FromString(m.value())
                if imp.request_id == resp.request_id:
                    found = imp
    c.close()
    assert found is not None, "response not in impressions"
    assert found.model_version == resp.model_version and found.user_id == "shopper-1"
    assert [i.item_id for i in found.items] == [i.item_id for i in resp.items]

    # rl_feedback: a click on the first item, with the response's request id, gives that item reward 1
    # and the others 0, one reward each, once the 2 s window closes
    click = {"event_id": f"e2e-{uuid.uuid4().hex}", "user_id": "shopper-1", "session_id": "s1", "event_type": "CLICK",
             "item_id": resp.items[0].item_id, "request_id": resp.request_id, "timestamp_ms": found.timestamp_ms + 50}
    prod.produce("events.raw", key=b"shopper-1", value=json.dumps(click).encode())
    assert prod.flush(30) == 0
    c = Consumer({"bootstrap.servers": boot, "group.id": f"e2e-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed"})
    c.subscribe(["rewards"])
    rewards = []
    deadline = time.monotonic() + 60
    while len(rewards) < 3 and time.monotonic() < deadline:
        for m in c.consume(100, 0.5):
            if m.error() is None:
                r = events_pb2.Reward.FromString(m.value())
                if r.request_id == resp.request_id:
                    rewards.append(r)
    c.close()
    assert sorted((r.item_id, r.clicked, r.reward) for r in rewards) == sorted(
        (it.item_id, it.item_id == resp.items[0].item_id, float(it.item_id == resp.items[0].item_id)) for it in resp.items)
    assert {r.position for r in rewards} == {1, 2, 3} and all(r.model_version == resp.model_version for r in rewards)

    _cli(env, "down")
    st = json.loads(_cli(env, "status", "--json"))
    assert not any(c["running"] for c in st["components"])
