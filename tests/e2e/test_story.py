"""The whole loop, as a user runs it: `recpilot run --headless --keep-up` (the story) on a fresh home
and its own ports, short timed steps, then a look at the platform it leaves up, then `recpilot down`.

From the story's JSON summary: every step from `up` to `recovery` reached (the learned policy's
step may end without a rise in so short a run: its CTR is reported, not asserted), a policy version
learned by rl_feedback published and serving, a trained ranker, the injected bad version's
CtrRegression alert at the story's webhook, the monitor's executed rollback of it, production back
on another version, and every event the shoppers produced accounted for by ingest (none lost).

Then, on the same running platform: shop events from a plain Kafka producer become item counts in
Redis (ingest -> events.clean -> features); Recommend answers over given candidates with a ranker
version and the learned policy's version; the answer is in `impressions` as served; a click on it
joins into one reward per shown item on `rewards`. `recpilot down` leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from recpilot.pb import events_pb2, recommend_pb2, recommend_pb2_grpc

pytestmark = [pytest.mark.timeout(1200), pytest.mark.platform]

PORTS = {
    "RECPILOT_KAFKA_PORT": "28392", "RECPILOT_KAFKA_CONTROLLER_PORT": "28393", "RECPILOT_REDIS_PORT": "28379",
    "RECPILOT_ALERTMANAGER_PORT": "28395", "RECPILOT_INGEST_HTTP_PORT": "28301", "RECPILOT_FEATURES_HTTP_PORT": "28302",
    "RECPILOT_INFERENCE_HTTP_PORT": "28303", "RECPILOT_INFERENCE_GRPC_PORT": "28351",
    "RECPILOT_RL_FEEDBACK_HTTP_PORT": "28304", "RECPILOT_MONITOR_HTTP_PORT": "28305",
}
LEARNED = lambda k: k not in ("-", "ranker-order")  # noqa: E731  (a policy version rl_feedback learned)


def _cli(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "recpilot.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _consumer_at_end(boot: str, topic: str, **conf) -> Consumer:
    """A consumer of every partition of ``topic`` from its end now (what is produced from here on)."""
    c = Consumer({"bootstrap.servers": boot, "group.id": f"e2e-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  **conf})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
              for p in parts])
    return c


def _collect(c: Consumer, parse, keep, want: int, timeout: float) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        for m in c.consume(500, 0.5):
            if m.error() is None:
                msg = parse(m.value())
                if keep(msg):
                    out.append(msg)
    c.close()
    return out


def test_story_then_the_loop_on_the_platform_it_leaves_up(tmp_path):
    env = dict(os.environ, RECPILOT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", **PORTS)
    try:
        res = _cli(env, "run", "--headless", "--keep-up", "--duration", "40", timeout=900)
        assert res.stdout.strip(), res.stderr[-4000:]
        s = json.loads(res.stdout)
        _story(s, res.stderr)
        _loop(env, s)
    finally:
        down = _cli(env, "down", timeout=180)
    assert down.returncode == 0, down.stderr[-2000:]
    st = _cli(env, "status", "--json", timeout=60)
    assert not any(c["running"] for c in json.loads(st.stdout)["components"])


def _story(s: dict, stderr: str) -> None:
    status = {st["name"]: st["status"] for st in s["steps"]}
    for name in ("up", "baseline", "train", "canary", "inject", "alert", "rollback", "recovery", "drain"):
        steps = "\n".join(f"{st['name']} {st['status']} {st.get('seconds')}s: {st.get('detail')}" for st in s["steps"])
        assert status[name] == "done", f"step {name}:\n{steps}\n{stderr[-3000:]}"
    v = s["versions"]
    assert v["baseline"] and v["trained"] and v["trained"] != v["baseline"], v
    bad = v["bad"]
    assert bad and bad not in (v["trained"], v["baseline"])
    # rl_feedback learned a policy, published it, and the Recommender served lists with it
    learned = {k: d for k, d in s["ctr"]["by_policy"].items() if LEARNED(k)}
    assert learned and all(d["shown"] > 0 for d in learned.values()), s["ctr"]["by_policy"]
    assert any(a["alertname"] == "CtrRegression" and a["status"] == "firing" and a["labels"].get("version") == bad
               for a in s["alerts"]), s["alerts"]
    assert any(a["action"] == "rollback" and a["outcome"] == "executed" and str(a["version"]) == bad
               for a in s["actions"]), s["actions"]
    assert s["ctr"]["bad_model"] < s["ctr"]["with_policy"]
    assert s["ctr"]["by_model"][bad]["shown"] > 0
    ev = s["events"]
    assert ev["produced"] > 0 and ev["delivery_failed"] == 0
    assert ev["lost"] == 0 and ev["accepted"] + ev["rejected"] + ev["duplicates"] == ev["produced"], ev
    assert s["recommend"]["calls"] > 0


def _loop(env: dict, s: dict) -> None:
    st = {c["name"]: c for c in json.loads(_cli(env, "status", "--json").stdout)["components"]}
    for name in ("kafka", "redis", "ingest", "features", "inference", "rl_feedback", "monitor"):
        assert st[name]["running"] and st[name]["ready"], st[name]

    # events from a plain producer: the item counts in Redis equal the input (ingest -> events.clean
    # -> features -> Redis), a malformed one goes nowhere
    boot = f"127.0.0.1:{PORTS['RECPILOT_KAFKA_PORT']}"
    tag = uuid.uuid4().hex[:8]
    now = int(time.time() * 1000)
    prod = Producer({"bootstrap.servers": boot})
    sent = []
    for i in range(30):
        ev = {"event_id": f"e2e-{uuid.uuid4().hex}", "user_id": f"shopper-{i % 3}", "session_id": f"s{i % 3}",
              "event_type": "VIEW" if i % 5 else "CLICK", "item_id": f"e2e-{tag}-{i % 6}", "price": 20.0 + i % 6,
              "timestamp_ms": now + i, "context": {"category": "shoes" if i % 2 else "bags"}}
        sent.append(ev)
        prod.produce("events.raw", key=ev["user_id"].encode(), value=json.dumps(ev).encode())
    prod.produce("events.raw", key=b"bad", value=b"\x00not an event")
    assert prod.flush(30) == 0
    expected_views = sum(1 for e in sent if e["item_id"] == f"e2e-{tag}-1" and e["event_type"] == "VIEW")
    deadline = time.monotonic() + 60
    item = {}
    while time.monotonic() < deadline:
        item = json.loads(_cli(env, "features", "item", f"e2e-{tag}-1", "--json").stdout or "{}")
        if item.get("views") == expected_views:
            break
        time.sleep(0.5)
    assert item.get("views") == expected_views and item.get("category") == "shoes", item

    # Recommend over given candidates: a ranked answer naming the ranker version production is back
    # on after the rollback and the learned policy version serving
    imps = _consumer_at_end(boot, "impressions")
    rewards = _consumer_at_end(boot, "rewards", **{"isolation.level": "read_committed"})
    with grpc.insecure_channel(f"127.0.0.1:{PORTS['RECPILOT_INFERENCE_GRPC_PORT']}") as ch:
        resp = recommend_pb2_grpc.RecommenderStub(ch).Recommend(recommend_pb2.RecommendRequest(
            user_id="shopper-1", k=3, candidate_ids=[f"e2e-{tag}-{j}" for j in range(6)]), timeout=10)
    assert not resp.fallback, resp.fallback_reason
    assert len(resp.items) == 3 and [it.position for it in resp.items] == [1, 2, 3]
    assert len({it.item_id for it in resp.items}) == 3 and all(it.item_id.startswith(f"e2e-{tag}-") for it in resp.items)
    assert resp.request_id and resp.model_version and resp.model_version != s["versions"]["bad"]
    assert LEARNED(resp.policy_version), resp.policy_version

    # the impression log has this response, with the same items, model and policy versions
    found = _collect(imps, events_pb2.Impression.FromString, lambda m: m.request_id == resp.request_id, 1, 30)
    assert found, "response not in impressions"
    imp = found[0]
    assert (imp.model_version, imp.policy_version, imp.user_id) == (resp.model_version, resp.policy_version, "shopper-1")
    assert [i.item_id for i in imp.items] == [i.item_id for i in resp.items]

    # rl_feedback: a click on the first item with the response's request id gives that item reward 1
    # and the others 0, one reward each, once the attribution window closes
    click = {"event_id": f"e2e-{uuid.uuid4().hex}", "user_id": "shopper-1", "session_id": "s1", "event_type": "CLICK",
             "item_id": resp.items[0].item_id, "request_id": resp.request_id, "timestamp_ms": imp.timestamp_ms + 50}
    prod.produce("events.raw", key=b"shopper-1", value=json.dumps(click).encode())
    assert prod.flush(30) == 0
    got = _collect(rewards, events_pb2.Reward.FromString, lambda r: r.request_id == resp.request_id, 3, 60)
    first = resp.items[0].item_id
    assert sorted((r.item_id, r.clicked, r.reward) for r in got) == sorted(
        (it.item_id, it.item_id == first, float(it.item_id == first)) for it in resp.items)
    assert {r.position for r in got} == {1, 2, 3} and all(r.model_version == resp.model_version for r in got)
