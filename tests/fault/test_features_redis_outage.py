"""Redis dies (kill -9) and comes back while the features worker streams: the worker waits the outage
out (readiness says so), loses nothing and double-counts nothing. Uses a private redis-server
(AOF, fsync always) so the shared test Redis is never touched."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest

from recpilot import featurespec as fs
from recpilot.kafka import create_topics, delete_topics
from recpilot.net import free_port
from recpilot.simulator import ShopSimulator, event_to_dict
from recpilot.stack.redis import redis_server_binary
from services.features.client import FeatureClient
from tests.support.features import applied, features_worker, send, wait_applied

N_EVENTS = 12_000


class PrivateRedis:
    def __init__(self, workdir, port: int) -> None:
        self.workdir, self.port, self.proc = workdir, port, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed")
def test_redis_killed_and_restarted_mid_stream(stack, platform_settings, tmp_path, unique, wait_until):
    rport = free_port()
    rds = PrivateRedis(tmp_path, rport)
    rds.start()
    url = f"redis://127.0.0.1:{rport}/0"
    topic = f"test.features.redis.{unique}"
    create_topics(platform_settings, [topic], 4)
    worker = features_worker({"RECPILOT_FEATURES_INPUT_TOPIC": topic, "RECPILOT_FEATURES_APP_ID": f"test-fr-{unique}",
                              "RECPILOT_FEATURES_REDIS_URL": url, "RECPILOT_FEATURES_KEY_PREFIX": "rp:",
                              "RECPILOT_FEATURES_METRICS_TOPIC": f"test.features.redis.metrics.{unique}",
                              "RECPILOT_FEATURES_DATADIR": str(tmp_path / "faust")},
                             platform_settings.home / "logs" / f"test-features-redis-{unique}.log")
    client = FeatureClient(url, "rp:", socket_timeout=2, socket_connect_timeout=2)
    try:
        worker.start().wait_ready()
        sim = ShopSimulator(seed=5, n_users=50, n_items=120)
        now = int(time.time() * 1000)
        events = list(sim.events(N_EVENTS, now - 3_600_000, step_ms=3_600_000 / N_EVENTS))

        sent = []

        def produce():  # a steady stream that keeps going across the outage
            send(platform_settings, topic, events, paced=True)
            sent.append(len(events))

        th = threading.Thread(target=produce, daemon=True)
        th.start()
        t0 = time.monotonic()
        while applied(client) < N_EVENTS // 4:
            assert time.monotonic() - t0 < 60 and worker.alive(), worker.log_tail()
            time.sleep(0.02)
        rds.kill9()
        code, body = wait_until(lambda: (r := worker.get("/readyz"))[0] == 503 and r, 30,
                                lambda: "readyz never reported Redis down:\n" + worker.log_tail())
        assert '"redis": false' in body
        assert worker.alive()
        time.sleep(1.5)  # the outage goes on while events keep coming (the length of the fault, not a wait)
        rds.start()
        th.join(60)
        assert sent == [N_EVENTS]  # all delivered
        wait_applied(client, N_EVENTS, worker, timeout=90)
        assert worker.alive()

        offline = fs.OfflineFeatureStore()
        for ev in events:
            offline.apply(event_to_dict(ev))
        expected = Counter((e.item_id, fs.COUNT_FIELD[fs.EVENT_NAMES[e.event_type]])
                           for e in events if e.event_type in (1, 2, 3, 4))
        _, items = client.fetch("", sorted({e.item_id for e in events if e.item_id}), now)
        for it in items:
            assert {f: it[f] for f in fs.COUNT_FIELDS} == {f: expected[(it["item_id"], f)] for f in fs.COUNT_FIELDS}
            assert it == offline.item(it["item_id"], now)
        for uid in sorted({e.user_id for e in events}):
            assert client.user(uid) == offline.user(uid)
        code, text = worker.get("/metrics")
        errors = [ln for ln in text.splitlines() if ln.startswith("recpilot_features_write_errors_total ")]
        assert errors and float(errors[0].split()[-1]) > 0  # the outage was really hit
    finally:
        worker.stop()
        client.close()
        rds.stop()
        delete_topics(platform_settings, [topic, f"test.features.redis.metrics.{unique}"])
        shutil.rmtree(tmp_path, ignore_errors=True)
