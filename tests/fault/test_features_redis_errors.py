"""Redis stays up but refuses writes -- MISCONF (a failed snapshot with stop-writes-on-bgsave-error),
READONLY (made a replica of a dead master), OOM (maxmemory reached) -- while events keep coming: the
features worker retries, /readyz and the retry metric say why, and after each recovery every event
is counted exactly once. Uses a private redis-server so the shared test Redis is never touched."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import redis

from recpilot.kafka import create_topics, delete_topics
from recpilot.net import free_port
from recpilot.simulator import ShopSimulator
from recpilot.stack.redis import redis_server_binary
from services.features.client import FeatureClient
from tests.support.features import (applied, assert_matches_offline, features_worker, send, wait_applied,
                                    worker_env)
from tests.support.redis import PrivateRedis

CHUNK = 1500
SNAPSHOT = "snapshot.rdb"


def _persistence(r) -> dict:
    return r.info("persistence")


def _misconf(r, workdir, wait_until) -> None:
    """A snapshot that cannot be renamed into place (a directory holds its name): with a save rule and
    stop-writes-on-bgsave-error, Redis refuses writes with MISCONF until a snapshot succeeds."""
    (workdir / SNAPSHOT).mkdir()
    (workdir / SNAPSHOT / "x").touch()
    r.bgsave(schedule=True)
    wait_until(lambda: (p := _persistence(r))["rdb_bgsave_in_progress"] == 0 and p["rdb_last_bgsave_status"] == "err",
               20, lambda: f"the snapshot did not fail: {_persistence(r)}")


def _misconf_cleared(r, workdir, wait_until) -> None:
    shutil.rmtree(workdir / SNAPSHOT)
    r.bgsave(schedule=True)
    wait_until(lambda: (p := _persistence(r))["rdb_bgsave_in_progress"] == 0 and p["rdb_last_bgsave_status"] == "ok",
               20, lambda: f"the snapshot did not succeed: {_persistence(r)}")


def _readonly(r, workdir, wait_until) -> None:
    r.replicaof("127.0.0.1", str(free_port()))  # nothing listens there: never syncs, keeps its data


def _readonly_cleared(r, workdir, wait_until) -> None:
    r.replicaof("NO", "ONE")


def _oom(r, workdir, wait_until) -> None:
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")


def _oom_cleared(r, workdir, wait_until) -> None:
    r.config_set("maxmemory", "0")


FAULTS = [("misconf", _misconf, _misconf_cleared), ("readonly", _readonly, _readonly_cleared),
          ("oom", _oom, _oom_cleared)]


def _ready(worker) -> tuple[int, dict]:
    code, body = worker.get("/readyz")
    try:
        return code, json.loads(body)
    except ValueError:
        return code, {}


def _metric(text: str, name: str, labels: str = "") -> float:
    for ln in text.splitlines():
        if ln.startswith(f"{name}{labels} "):
            return float(ln.split()[-1])
    return 0.0


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed")
def test_writes_refused_then_accepted_again_count_every_event_once(stack, platform_settings, tmp_path, unique,
                                                                   wait_until):
    rds = PrivateRedis(tmp_path, free_port(), "--save", "3600 1", "--dbfilename", SNAPSHOT)
    rds.start()
    topic, mtopic = f"test.features.rerr.{unique}", f"test.features.rerr.metrics.{unique}"
    create_topics(platform_settings, [topic], 2)
    worker = features_worker(worker_env(topic, mtopic, f"test-fe-{unique}", tmp_path / "faust", redis_url=rds.url),
                             platform_settings.home / "logs" / f"test-features-rerr-{unique}.log")
    client = FeatureClient(rds.url, "rp:", socket_timeout=2, socket_connect_timeout=2)
    admin = redis.Redis.from_url(rds.url, socket_timeout=5, decode_responses=True)
    try:
        worker.start().wait_ready()
        sim = ShopSimulator(seed=11, n_users=40, n_items=100)
        now = int(time.time() * 1000)
        n_total = CHUNK * (1 + len(FAULTS))
        events = list(sim.events(n_total, now - 3_600_000, step_ms=3_600_000 / n_total))
        send(platform_settings, topic, events[:CHUNK])
        wait_applied(client, CHUNK, worker)

        for k, (kind, fault, clear) in enumerate(FAULTS, start=1):
            fault(admin, tmp_path, wait_until)
            before = applied(client)
            send(platform_settings, topic, events[k * CHUNK:(k + 1) * CHUNK])
            code, ready = wait_until(
                lambda: (r := _ready(worker))[1].get("redis_write_error", {}).get("kind") == kind and r, 30,
                lambda: f"/readyz never reported {kind}: {_ready(worker)}\n{worker.log_tail()}")
            assert code == 503 and worker.alive()
            time.sleep(1.0)  # writes stay refused a while (the length of the fault, not a wait)
            assert applied(client) == before, f"{kind}: a refused write stored offsets"
            clear(admin, tmp_path, wait_until)
            wait_applied(client, (k + 1) * CHUNK, worker)
            wait_until(lambda: _ready(worker)[0] == 200, 15, lambda: f"not ready after {kind}: {_ready(worker)}")

        assert worker.alive()
        assert_matches_offline(client, events, now)
        _, text = worker.get("/metrics")
        for kind, _, _ in FAULTS:
            assert _metric(text, "recpilot_features_write_retries_total", f'{{kind="{kind}"}}') > 0, kind
        assert _metric(text, "recpilot_features_events_total", '{outcome="applied"}') == n_total
    finally:
        worker.stop()
        client.close()
        admin.close()
        rds.stop()
        delete_topics(platform_settings, [topic, mtopic])
        shutil.rmtree(tmp_path, ignore_errors=True)
