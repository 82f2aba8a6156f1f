"""``recpilot bench monitor --parts rollback``: a regressing production model rolled back on the real
stack, timed from the moment the regression became detectable.

Needs a running Kafka (``recpilot up --no-services`` or the test stack); everything else is the
bench's own: a model repository with two toy versions, a control topic, rewards and alerts topics of
its own, the inference server (``python -m services.inference``) following that control topic and
the monitor (``python -m services.monitor``) with the packaged ``monitor.toml`` (its defaults: the
CtrRegression CUSUM, actions ``CtrRegression = "rollback"``).

Per seed: version 1 serves; rewards (one per shown item, as the reward joiner publishes them) stream
at ``rate`` items/s with CTR ``p_before`` for ``before_items``; version 2 is promoted (a plain
PROMOTE on the control topic) and once inference answers with it, its rewards stream at CTR
``p_after``. **Detectable** is the wall time at which the reward that makes the packaged detector
fire was published: the same reward sequence replayed through an in-process
:class:`~services.monitor.engine.Engine` with the same config gives that reward's index. Measured
from there: the monitor's ROLLBACK on the control topic (its timestamp) and the first Recommend
answered by version 1 again (polled every 50 ms)."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from recpilot.pb import events_pb2

MODEL = "ranker"


def _reward(version: str, clicked: bool, ts: int) -> events_pb2.Reward:
    return events_pb2.Reward(request_id=f"r{ts}", item_id="i", position=1, model_name=MODEL, model_version=version,
                             variant="production", policy_version="ranker-order", policy_variant="production",
                             clicked=clicked, reward=float(clicked), impression_ts_ms=ts, published_ms=ts)


def detect_index(before: np.ndarray, after: np.ndarray, config=None) -> int | None:
    """The index into ``after`` of the reward at which the packaged CtrRegression fires (the engine
    ticked after every reward), given ``before`` of version 1; None if it never does."""
    from services.monitor.config import load_config
    from services.monitor.engine import Engine

    eng = Engine(config or load_config(), lambda m, v: None)
    ts = 1_700_000_000_000
    for c in before.tolist():
        eng.observe_reward(_reward("1", c, ts))
    eng.tick(ts)
    window = eng.config.ctr_regression.window_items
    for i, c in enumerate(after.tolist()):
        eng.observe_reward(_reward("2", c, ts))
        if (i + 1) % window == 0 and any(a.name == "CtrRegression" and a.firing for a in eng.tick(ts)):
            return i
    return None


def _stream(prod, topic: str, version: str, clicks: np.ndarray, rate: float, stamps: list[float] | None,
            stop: threading.Event | None = None) -> None:
    from recpilot.kafka import produce_waiting

    t0 = time.monotonic()
    for i, c in enumerate(clicks.tolist()):
        if stop is not None and stop.is_set():
            break
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        now = time.time()
        produce_waiting(prod, topic, _reward(version, c, int(now * 1000)).SerializeToString(), b"u")
        if stamps is not None:
            stamps.append(now)
        if i % 500 == 0:
            prod.poll(0)
    prod.flush(10)


def rollback(seed: int, rate: float = 3000.0, before_items: int = 60_000, max_items: int = 120_000,
             p_before: float = 0.03, p_after: float = 0.024) -> dict:
    import grpc

    from bench.inference import Server, publish_command
    from bench.toymodel import write_version
    from recpilot import kafka
    from recpilot.models.deployments import ACTION_NAMES
    from recpilot.models.deployments import replay
    from recpilot.pb import recommend_pb2, recommend_pb2_grpc
    from recpilot.settings import PlatformSettings, load
    from recpilot.stack.process import ServiceProcess
    from recpilot.topics import acks_topic

    platform = load(PlatformSettings)
    rng = np.random.default_rng(seed)
    before = rng.random(before_items) < p_before
    after = rng.random(max_items) < p_after
    k = detect_index(before, after)
    uid = uuid.uuid4().hex[:8]
    control, rewards, alerts = f"bench.deployments.{uid}", f"bench.rewards.{uid}", f"bench.alerts.{uid}"
    kafka.create_topics(platform, [rewards, alerts], 1)
    work = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    root = work / "models"
    v1, v2 = write_version(root, MODEL, seed=1), write_version(root, MODEL, seed=2)
    publish_command(platform, control, "deploy", v1)
    procs = []
    out: dict = {"seed": seed, "rate_items_per_s": rate, "before_items": before_items, "ctr": [p_before, p_after]}
    try:
        server = Server({"RECPILOT_MODEL_REPOSITORY": str(root), "RECPILOT_INFERENCE_FEATURE_KEY_PREFIX": f"b{uid}:",
                         "RECPILOT_INFERENCE_DEPLOYMENTS_TOPIC": control, "RECPILOT_INFERENCE_BOOTSTRAP": "false",
                         "RECPILOT_INFERENCE_IMPRESSIONS_TOPIC": f"impressions.bench-{uid}",
                         "RECPILOT_INFERENCE_GRPC_HOST": "127.0.0.1"}, work / "inference.log")
        procs.append(server)
        server.wait_ready()
        mon = ServiceProcess("services.monitor", work / "monitor.log", env={
            "RECPILOT_MODEL_REPOSITORY": str(root), "RECPILOT_DEPLOY_TOPIC": control}, settings={
            "metrics_topics": f"bench.metrics.{uid}", "rewards_topic": rewards, "events_topic": f"bench.events.{uid}",
            "alerts_topic": alerts, "instance_id": f"bench-{uid}", "state_dir": work / "monitor", "tick_s": 0.2})
        procs.append(mon)
        mon.start().wait_ready(60)
        stub = recommend_pb2_grpc.RecommenderStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))

        def answer() -> str:
            r = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=3, candidate_ids=[f"x{i}" for i in range(20)]),
                               timeout=10)
            return "fallback" if r.fallback else r.model_version

        prod = kafka.producer(platform, **{"linger.ms": 5})
        _stream(prod, rewards, v1, before, rate, None)
        publish_command(platform, control, "promote", v2)
        deadline = time.monotonic() + 60
        while answer() != v2:
            if time.monotonic() > deadline:
                raise RuntimeError("version 2 never served")
            time.sleep(0.05)
        served_back: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                if answer() == v1:
                    served_back.append(time.time())
                    return
                time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        stamps: list[float] = []
        streamer = threading.Thread(target=_stream, args=(prod, rewards, v2, after, rate, stamps, stop), daemon=True)
        streamer.start()
        poller.join(120)
        stop.set()
        streamer.join(30)
        state = replay(platform, control, timeout=20).state(MODEL)
        rb = [h for h in state.history if ACTION_NAMES.get(h.action) == "rollback"]
        out.update({"detectable_item": k, "items_streamed_of_v2": len(stamps),
                    "rolled_back": bool(rb), "actor": rb[0].actor if rb else None})
        if k is not None and k < len(stamps):
            t_detectable = stamps[k]
            if rb:
                out["command_after_detectable_s"] = round(rb[0].timestamp_ms / 1000 - t_detectable, 2)
            if served_back:
                out["serving_v1_after_detectable_s"] = round(served_back[0] - t_detectable, 2)
        if stamps and served_back:
            out["serving_v1_after_v2_started_s"] = round(served_back[0] - stamps[0], 2)
    finally:
        for p in procs:
            p.kill9()
        kafka.delete_topics(platform, [control, acks_topic(control), rewards, alerts], timeout=10)
    return out
