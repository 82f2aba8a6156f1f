"""Scale-out on Kafka partitions, on the real stack: `Stack.up_services(replicas=...)` (what
`recpilot up --replicas` runs) starts two ingest, two features and two rl_feedback processes on
4-partition topics; each replica holds a share of the partitions and does part of the work, and
together they count every event exactly once (ingest accepted = produced, the feature counts of
the input, one reward per shown item). And a comma-separated gRPC target spreads Recommend calls
over two servers."""

from __future__ import annotations

import json

import pytest

from bench.rl_join import check, make_traffic, now_ms, produce_all, service_settings
from recpilot.kafka import create_topics, delete_topics
from recpilot.net import free_port
from recpilot.simulator import ShopSimulator
from recpilot.stack.manager import Stack, services
from recpilot.stack.process import http_get
from services.features.client import FeatureClient
from tests.support.features import assert_matches_offline, delete_prefix, send, worker_env
from tests.support.ingest import topic_names as ingest_topics
from tests.support.rl_feedback import WEIGHTS, committed_rewards, setup_topics

pytestmark = pytest.mark.timeout(180)

SCALED = {"ingest": 2, "features": 2, "rl_feedback": 2}


def _metric(text: str, name: str) -> float:
    """The sum of a counter's samples (every label set) in a /metrics page."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name) and ln[len(name):len(name) + 1] in (" ", "{"))


def _readyz(st: Stack, name: str) -> dict:
    """The /readyz body of a replica ({} while it does not answer in time: the caller polls)."""
    rec = st.services_table.get(name)
    status, body = http_get(f"http://{rec.address}/readyz", 5.0)
    return json.loads(body) if status in (200, 503) else {}


def _ingest_env(unique: str, platform) -> tuple[dict[str, str], dict[str, str]]:
    ing = ingest_topics(f"test.scale.{unique}.ingest")
    create_topics(platform, [ing["raw"], ing["clean"]], 4)
    create_topics(platform, [ing["dlq"], ing["metrics"]], 1)
    env = {f"RECPILOT_INGEST_{k.upper()}_TOPIC": v for k, v in ing.items()}
    env.update(RECPILOT_INGEST_GROUP_ID=f"test-scale-ingest-{unique}", RECPILOT_INGEST_INSTANCE_ID=f"ing-{unique}",
               RECPILOT_INGEST_HTTP_PORT=str(free_port()))
    return env, ing


def _env(unique: str, tmp_path, platform) -> tuple[dict[str, str], dict]:
    env, ing = _ingest_env(unique, platform)
    create_topics(platform, [f"test.scale.{unique}.fmetrics"], 1)
    rl = setup_topics(platform, f"test-scale-{unique}-rl")
    prefix = f"test:scale:{unique}:"
    env.update(worker_env(ing["clean"], f"test.scale.{unique}.fmetrics", f"test-scale-features-{unique}",
                          tmp_path / "faust", key_prefix=prefix))
    w = dict(zip(("reward_click", "reward_add_to_cart", "reward_purchase", "reward_revenue"), WEIGHTS))
    rl_settings = service_settings(rl, f"test-scale-rl-{unique}", instance_id=f"rl-{unique}", window_s=1.5,
                                   grace_ms=300, **w)
    env.update({f"RECPILOT_RL_FEEDBACK_{k.upper()}": str(v) for k, v in rl_settings.items()})
    for name in ("features", "rl_feedback"):  # replica 1 listens on base + 10
        env[f"RECPILOT_{name.upper()}_HTTP_PORT"] = str(free_port())
    return env, {"ingest": ing, "rl": rl, "prefix": prefix}


def test_two_replicas_of_each_consumer_share_partitions_and_count_every_event_once(
        stack, platform_settings, redis_client, unique, tmp_path, monkeypatch, wait_until):
    p = platform_settings
    env, names = _env(unique, tmp_path, p)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st = Stack(p, services_dir=tmp_path)
    client = FeatureClient(p.redis_url, names["prefix"])
    replicas = [(spec.name, spec.replica_name(i)) for spec in services(list(SCALED)) for i in range(2)]

    def readyz(name: str) -> dict:
        return _readyz(st, name)

    def metrics(name: str) -> str:
        rec = st.services_table.get(name)
        assert rec is not None and rec.alive(), f"{name} exited:\n{open(rec.log).read()[-3000:] if rec else ''}"
        return http_get(f"http://{rec.address}/metrics", 5.0)[1]

    def shares() -> dict[str, int]:
        out = {}
        for svc, name in replicas:
            body = readyz(name)
            out[name] = body.get("assigned_partitions", 0) if svc == "ingest" else len(body.get("partitions", []))
        return out

    try:
        st.up_services(list(SCALED), echo=lambda _m: None, replicas=SCALED)
        assert {c["name"] for c in st.status()["components"] if c["running"]} >= {n for _, n in replicas}
        # the second replica of each joined the group: after the rebalance each holds 2 of the 4 partitions
        wait_until(lambda: all(v == 2 for v in shares().values()), 45, lambda: f"partition shares {shares()}", 0.5)

        t0 = now_ms()
        events = list(ShopSimulator(seed=11, n_users=200, n_items=120).events(3_000, t0 - 600_000, step_ms=200))
        send(p, names["ingest"]["raw"], events)  # keyed by user id: every partition gets some
        traffic = make_traffic(200, prefix=f"s{unique}", t0_ms=now_ms(), spacing_ms=2, outcome_share=0.5,
                               duplicate_share=0.1, max_delay_ms=300, n_users=60, seed=5)
        produce_all(p, names["rl"], traffic)

        def accepted() -> list[float]:
            return [_metric(metrics(n), "recpilot_ingest_events_accepted_total") for s, n in replicas if s == "ingest"]

        def applied() -> list[float]:
            return [_metric(metrics(n), 'recpilot_features_events_total{outcome="applied"}') for s, n in replicas if s == "features"]

        want = len(traffic.expected)
        wait_until(lambda: sum(accepted()) >= len(events) and sum(applied()) >= len(events)
                   and len(committed_rewards(p, names["rl"]["rewards"])) >= want, 60,
                   lambda: f"accepted {accepted()}, applied {applied()} of {len(events)}; "
                           f"rewards {len(committed_rewards(p, names['rl']['rewards']))} of {want}", 0.5)

        # ingest: every produced event accepted once, by both replicas
        acc = accepted()
        assert sum(acc) == len(events) and all(a > 0 for a in acc), acc
        # features: every event applied once, by both workers; the counts are those of the input
        app = applied()
        assert sum(app) == len(events) and all(a > 0 for a in app), app
        assert_matches_offline(client, events, now_ms())
        # rl_feedback: one reward per shown item, published by both replicas
        rewards = committed_rewards(p, names["rl"]["rewards"])
        assert check(rewards, traffic, WEIGHTS) == []
        by_replica = [_metric(metrics(n), "recpilot_rl_feedback_rewards_total") for s, n in replicas if s == "rl_feedback"]
        assert sum(by_replica) == len(rewards) == want and all(r > 0 for r in by_replica), by_replica

        # scaling down to one replica each stops the second
        st.up_services(list(SCALED), echo=lambda _m: None, replicas={k: 1 for k in SCALED})
        assert all(st.services_table.get(n) is None for _, n in replicas if n.endswith("-1"))
        assert all(st.services_table.running(s) for s in SCALED)
    finally:
        stopped = st.down_services()
        client.close()
        delete_prefix(redis_client, names["prefix"])
        delete_topics(p, [*names["ingest"].values(), f"test.scale.{unique}.fmetrics", *names["rl"].values()])
    assert set(stopped) == set(SCALED)


def test_a_target_list_spreads_recommend_calls_over_the_replicas(wait_until):
    """`recpilot simulate --target a,b` (RecommenderProbe): calls go round-robin to two real gRPC
    servers; with one of them gone, they all go to the other."""
    from concurrent import futures

    import grpc

    from recpilot.pb import recommend_pb2, recommend_pb2_grpc
    from recpilot.simulator.drive import RecommenderProbe

    class Counting(recommend_pb2_grpc.RecommenderServicer):
        def __init__(self) -> None:
            self.calls = 0

        def Recommend(self, request, context):
            self.calls += 1
            return recommend_pb2.RecommendResponse(request_id=request.request_id)

    servers, servicers, ports = [], [], []
    for _ in range(2):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        svc = Counting()
        recommend_pb2_grpc.add_RecommenderServicer_to_server(svc, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        server.start()
        servers.append(server)
        servicers.append(svc)
    probe = RecommenderProbe(",".join(f"127.0.0.1:{p}" for p in ports), timeout_s=2.0, retry_s=0.05)
    try:
        wait_until(lambda: probe.recommend("u1", "s1") is not None, 10, "the first Recommend", 0.05)
        for _ in range(40):
            assert probe.recommend("u1", "s1") is not None
        calls = [s.calls for s in servicers]
        assert sum(calls) == 41 and min(calls) >= 15, calls  # round-robin: about half each
        servers[0].stop(None).wait()
        wait_until(lambda: probe.recommend("u1", "s1") is not None, 10, "a call after one replica left", 0.05)
        before = servicers[1].calls
        assert all(probe.recommend("u1", "s1") is not None for _ in range(20))
        assert servicers[1].calls == before + 20 and servicers[0].calls == calls[0]
    finally:
        probe.close()
        for server in servers:
            server.stop(None)


def test_a_dead_replicas_replayed_batch_is_dropped_by_the_replica_that_takes_its_partitions(
        stack, platform_settings, unique, tmp_path, monkeypatch, wait_until):
    """Two ingest replicas; events reach the clean topic as if replica 1 published a batch and died
    before committing it (kill -9); replica 0 takes its partitions, warms its de-duplicator again
    before their first batch, and drops the replayed batch: nothing reaches the clean topic twice."""
    import os
    import signal

    from recpilot.kafka import producer

    p = platform_settings
    env, ing = _ingest_env(unique, p)
    env["RECPILOT_INGEST_SESSION_TIMEOUT_MS"] = "6000"  # the broker's minimum: the dead replica's share moves sooner
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    st = Stack(p, services_dir=tmp_path)

    def get(name: str, path: str) -> str:
        rec = st.services_table.get(name)
        return http_get(f"http://{rec.address}{path}", 5.0)[1]

    def held(name: str) -> int:
        return _readyz(st, name).get("assigned_partitions", 0)

    try:
        st.up_services(["ingest"], echo=lambda _m: None, replicas={"ingest": 2})
        wait_until(lambda: held("ingest") == held("ingest-1") == 2, 45, "two partitions each", 0.5)
        events = list(ShopSimulator(seed=3, n_users=100, n_items=50).events(400, now_ms() - 60_000, step_ms=100))
        prod = producer(p)
        for ev in events:  # what replica 1 published before it died, its raw offsets not committed
            ev.ingested_at_ms = now_ms()
            prod.produce(ing["clean"], ev.SerializeToString(), ev.user_id.encode())
        assert prod.flush(30) == 0
        os.kill(st.services_table.get("ingest-1").pid, signal.SIGKILL)
        wait_until(lambda: held("ingest") == 4, 45, "replica 0 holds every partition", 0.5)
        send(p, ing["raw"], events)  # the replay of the uncommitted batch
        text = lambda: get("ingest", "/metrics")  # noqa: E731
        wait_until(lambda: _metric(text(), "recpilot_ingest_events_received_total") >= len(events), 45,
                   lambda: f"received: {_metric(text(), 'recpilot_ingest_events_received_total')}", 0.5)
        assert _metric(text(), "recpilot_ingest_events_accepted_total") == 0
        assert _metric(text(), "recpilot_ingest_events_duplicate_total") == len(events)
    finally:
        st.down_services()
        delete_topics(p, list(ing.values()))
