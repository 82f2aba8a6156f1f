"""The inference server as a real process following a test's own control topic (``start_server``), or
in-process (``Running``: model manager, data plane, impression logger and gRPC server on a free port,
over a "world" of features written with ``write_features`` and a model repository)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recpilot import kafka
from recpilot.pb import deployments_pb2, events_pb2, recommend_pb2_grpc
from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc
from services.inference.routing import Desired, ModelManager
from services.inference.search import BM25Index
from services.inference.settings import InferenceSettings

from bench.inference import Server, publish_command


def publish(platform, topic: str, action: str, version: str, percent: float = 0.0) -> str:
    """A deployment command for "ranker" on ``topic`` (no controller checks); its command id."""
    return publish_command(platform, topic, action, version, percent, actor="test", reason="test")


def publish_policy(platform, topic: str, action: str, version: str = "", percent: float = 0.0) -> str:
    """A deployment command for the re-ranking policy of "ranker" (kind POLICY) on ``topic`` (no
    controller checks); its command id."""
    from recpilot.models.deployments import new_command
    from recpilot.pb import deployments_pb2 as pb

    prod = kafka.producer(platform)
    cmd = new_command(action, "ranker", version, percent=percent, actor="test", reason="test", kind=pb.POLICY)
    prod.produce(topic, key=b"ranker", value=pb.ControlMessage(command=cmd).SerializeToString())
    kafka.flush_or_raise(prod, 10)
    return cmd.command_id


def read_impressions(platform, topic: str, request_ids: set[str], group: str, timeout: float = 30.0) -> dict:
    """The impressions on ``topic`` whose request id is in ``request_ids`` (request id -> Impression),
    read from the start until all are found or ``timeout`` passes."""
    found: dict = {}
    c = kafka.consumer(platform, group)
    c.subscribe([topic])
    t0 = time.monotonic()
    try:
        while len(found) < len(request_ids) and time.monotonic() - t0 < timeout:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            imp = events_pb2.Impression.FromString(msg.value())
            if imp.request_id in request_ids:
                found[imp.request_id] = imp
    finally:
        c.close()
    return found


def read_acks(platform, topic: str, group: str) -> list:
    """Every deployment ack for the control ``topic`` so far (on its acks topic)."""
    from recpilot.topics import acks_topic

    c = kafka.consumer(platform, group)
    c.subscribe([acks_topic(topic)])
    out, t0, idle = [], time.monotonic(), 0
    try:
        while time.monotonic() - t0 < 15 and idle < 4:
            m = c.poll(0.5)
            if m is None:
                idle += 1 if out or time.monotonic() - t0 > 3 else 0
                continue
            if m.error():
                continue
            msg = deployments_pb2.ControlMessage.FromString(m.value())
            if msg.WhichOneof("body") == "ack":
                out.append(msg.ack)
    finally:
        c.close()
    return out


def server_env(root: Path, topic: str, unique: str, **extra: str) -> dict:
    """Settings for `python -m services.inference` on the test stack, isolated by ``unique``."""
    return {"RECPILOT_MODEL_REPOSITORY": str(root), "RECPILOT_INFERENCE_FEATURE_KEY_PREFIX": f"t{unique}:",
            "RECPILOT_INFERENCE_DEPLOYMENTS_TOPIC": topic, "RECPILOT_INFERENCE_BOOTSTRAP": "false",
            "RECPILOT_INFERENCE_IMPRESSIONS_TOPIC": f"impressions.test-{unique}",
            "RECPILOT_INFERENCE_GRPC_HOST": "127.0.0.1", **extra}


def start_server(env: dict, log: Path, timeout: float) -> Server:
    """The server process on free ports, once its /readyz answers 200."""
    return Server(env, log).wait_ready(timeout)


COLOURS = ["red", "blue", "green", "black"]
KINDS = {"shoes": "footwear", "jacket": "outerwear", "scarf": "accessories", "boots": "footwear"}


def catalogue() -> list[dict]:
    """40 items: colour x kind titles, categories, prices."""
    items = []
    for i in range(40):
        colour = COLOURS[i % 4]
        kind = list(KINDS)[(i // 4) % 4]
        items.append({"item_id": f"it{i:03d}", "title": f"{colour} {kind} model {i}", "category": KINDS[kind],
                      "price": 10.0 + i})
    return items


def events(items, now_ms: int) -> list[tuple[int, object]]:
    """(offset, UserEvent) of 6 users x 8 events over the last ten minutes."""
    evs, off = [], 0
    for u in range(6):
        for j in range(8):
            it = items[(u * 7 + j * 3) % len(items)]
            etype = [events_pb2.VIEW, events_pb2.VIEW, events_pb2.CLICK, events_pb2.PURCHASE][j % 4]
            ev = events_pb2.UserEvent(event_id=f"e{off}", user_id=f"user{u}", session_id=f"s{u}", event_type=etype,
                                      item_id=it["item_id"], price=it["price"],
                                      timestamp_ms=now_ms - 600_000 + off * 1000,
                                      context={"category": it["category"], "title": it["title"]})
            evs.append((off, ev))
            off += 1
    return evs


def write_features(redis_url: str, prefix: str, evs) -> None:
    """The features service's writer applies ``evs`` to Redis at ``redis_url`` under ``prefix``."""
    import redis.asyncio as aioredis

    from services.features.writer import FeatureWriter

    async def write():
        r = aioredis.Redis.from_url(redis_url)
        await FeatureWriter(r, prefix).apply({"events.clean:0": evs})
        await r.aclose()

    asyncio.run(write())


def small_world(platform, redis_url: str, root, unique: str) -> dict:
    """A world for ``Running``: the features of ``events`` under a ``unique`` prefix in Redis at
    ``redis_url``, and version 1 of "ranker" in a new repository at ``root``."""
    from bench.toymodel import write_version

    items = catalogue()
    prefix = f"t{unique}:"
    write_features(redis_url, prefix, events(items, int(time.time() * 1000)))
    return {"platform": platform, "prefix": prefix, "items": items, "root": root, "uid": unique,
            "versions": [write_version(root, "ranker", seed=1)]}


class Running:
    """The server in-process over ``world`` (platform, uid, prefix, root, versions, items); its
    impressions go to ``producer`` (default: one for the platform's broker)."""

    def __init__(self, world, load: bool = True, redis_url: str | None = None, producer=None, **overrides):
        from recpilot import kafka
        from services.features.client import AsyncFeatureClient
        from services.inference.impressions import ImpressionLogger
        from services.inference.dataplane import DataPlane
        from services.inference.grpc_server import InferenceServer

        p = world["platform"]
        self.topic = f"impressions-test-{world['uid']}"
        s = InferenceSettings(grpc_port=0, grpc_host="127.0.0.1", http_port=0, feature_key_prefix=world["prefix"],
                              impressions_topic=self.topic, bootstrap=False, **overrides)
        self.s = s
        self.ex = ThreadPoolExecutor(1)
        self.models = ModelManager(world["root"], s.model_names, device="cpu", executor=self.ex,
                                   batching_for=s.batching_for)
        self.features = AsyncFeatureClient(redis_url or p.redis_url, s.feature_key_prefix)
        self.impressions = ImpressionLogger(producer if producer is not None else kafka.producer(p),
                                            s.impressions_topic, s.impressions_queue, s.impressions_queue_bytes)
        self.service = DataPlane(s, self.features, self.models, impressions=self.impressions,
                                 index=BM25Index.build(world["items"]))
        self.server = InferenceServer(s, self.service)
        self.impressions.start()
        self.server.start()
        if load:
            self.models.reconcile("ranker", Desired(production=world["versions"][0]))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.reco = recommend_pb2_grpc.RecommenderStub(self.channel)
        self.oip = oip_grpc.GRPCInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def wait_serving(self, want=health_pb2.HealthCheckResponse.SERVING, timeout=10.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            st = self.health.Check(health_pb2.HealthCheckRequest(service="")).status
            if st == want:
                return st
            time.sleep(0.1)
        return st

    def close(self, impressions_timeout: float = 10.0):
        self.channel.close()
        self.server.stop()
        self.impressions.stop(impressions_timeout)
        self.ex.shutdown()


class Load:
    """Recommend requests one after another on a thread until ``stop()``: ``answers`` (the
    responses, in order) and ``errors`` (the failed RPCs)."""

    def __init__(self, running: Running, user_id: str = "user1", k: int = 5) -> None:
        import threading

        from recpilot.pb import recommend_pb2

        self.answers, self.errors = [], []
        self._req = recommend_pb2.RecommendRequest(user_id=user_id, k=k)
        self._reco = running.reco
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self._reco.Recommend(self._req, timeout=5))
            except grpc.RpcError as exc:
                self.errors.append(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
