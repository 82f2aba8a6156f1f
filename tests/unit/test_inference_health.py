"""Health as Triton and KServe define it: ready = a model is loaded and can answer (Redis down only
degrades the answers, flagged and counted); live = the serving event loop makes progress."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from services.inference.grpc_server import InferenceServer, LoopWatchdog
from services.inference.settings import InferenceSettings


def _sample(name, labels=None):
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_watchdog_fails_liveness_once_the_loop_stops_ticking():
    now = [100.0]
    w = LoopWatchdog(10.0, clock=lambda: now[0])
    assert w.live() == (True, {"event_loop": "starting"})  # not ticked yet: starting
    w.tick()
    now[0] += 9.5
    assert w.live()[0] and w.check()
    before = _sample("recpilot_inference_event_loop_stalls_total")
    now[0] += 1.0  # 10.5 s without a tick
    ok, details = w.live()
    assert not ok and details["event_loop_since_tick_s"] == pytest.approx(10.5)
    assert not w.check() and not w.check()
    assert _sample("recpilot_inference_event_loop_stalls_total") == before + 1  # one stall, counted once
    w.tick()
    assert w.live()[0] and w.check()


def test_a_wedged_event_loop_fails_liveness_and_recovers(wait_until, caplog):
    """The server's own lag loop ticks the watchdog; a blocking call on the loop wedges it."""
    srv = InferenceServer(InferenceSettings(loop_stall_s=0.4), SimpleNamespace(models=SimpleNamespace(loop=None)))
    loop, unblock = srv.loop, threading.Event()

    def run():
        srv.watchdog.loop_thread_id = threading.get_ident()
        asyncio.set_event_loop(loop)
        task = loop.create_task(srv._lag_loop())
        loop.run_forever()
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    srv.watchdog.start()
    try:
        wait_until(lambda: "event_loop_since_tick_s" in srv.watchdog.live()[1], 5, "the loop never ticked")
        assert srv.watchdog.live()[0]
        with caplog.at_level(logging.ERROR, logger="services.inference.grpc_server"):
            loop.call_soon_threadsafe(unblock.wait, 30)  # a blocking call on the loop: it is wedged
            wait_until(lambda: not srv.watchdog.live()[0], 5, "liveness never failed")
            wait_until(lambda: any(r.getMessage().startswith("event loop stalled") for r in caplog.records), 5,
                       "the watchdog thread never reported the stall")
        stalled = next(r for r in caplog.records if r.getMessage().startswith("event loop stalled"))
        assert "wait" in stalled.loop_stack  # where the loop is stuck: Event.wait
        unblock.set()
        wait_until(lambda: srv.watchdog.live()[0], 5, "liveness did not come back")
    finally:
        unblock.set()
        srv.watchdog.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


class RedisDown:
    """The feature client with Redis unreachable: every call fails as redis-py does."""

    async def _down(self, *_args, **_kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    ping = fetch = candidates = popular = _down


@pytest.fixture
def plane(tmp_path):
    from bench.toymodel import write_version
    from services.inference.dataplane import DataPlane
    from services.inference.routing import Desired, ModelManager
    from services.inference.settings import BatchingConfig

    v = write_version(tmp_path, "ranker", seed=1)
    ex = ThreadPoolExecutor(1)
    models = ModelManager(tmp_path, ["ranker"], device="cpu", executor=ex, batching_for=lambda _n: BatchingConfig())
    models.reconcile("ranker", Desired(production=v))
    yield DataPlane(InferenceSettings(), RedisDown(), models)
    ex.shutdown()


def test_redis_down_keeps_the_replica_ready_and_answers_flagged(plane):
    from services.inference.service import Request

    def fallbacks(method):
        return _sample("recpilot_inference_fallbacks_total", {"method": method, "reason": "features_unavailable"})

    before = {m: fallbacks(m) for m in ("recommend", "search")}

    async def run():
        await plane.check_dependencies(timeout=1.0)
        ready = plane.ready()
        deadline = time.monotonic() + 1.0
        generated = await plane.recommend(Request("u1", 3), deadline)
        given = await plane.recommend(Request("u1", 2, candidate_ids=["a", "b", "c"]), deadline)
        return ready, generated, given

    (ok, details), generated, given = asyncio.run(run())
    assert ok and details["model_loaded"] is True and details["redis"] is False  # ready, Redis reported
    assert _sample("recpilot_inference_dependency_up", {"dependency": "redis"}) == 0.0
    for res in (generated, given):
        assert res.fallback and res.fallback_reason == "features_unavailable" and res.variant == "fallback"
    assert [i[0] for i in given.items] == ["a", "b"]  # the candidates, in the popularity order known (none)
    assert fallbacks("recommend") == before["recommend"] + 2


def test_readiness_still_needs_a_loaded_model():
    from services.inference.dataplane import DataPlane
    from services.inference.routing import ModelManager
    from services.inference.settings import BatchingConfig

    models = ModelManager("/nonexistent", ["ranker"], device="cpu", executor=None,
                          batching_for=lambda _n: BatchingConfig())
    plane = DataPlane(InferenceSettings(), RedisDown(), models,
                      extra_ready=lambda: (True, {"deployments_caught_up": True}))
    plane.redis_ok = True
    ok, details = plane.ready()
    assert not ok and details == {"model_loaded": False, "redis": True, "deployments_caught_up": True}
