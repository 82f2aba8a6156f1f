"""The monitor as a real process on the real broker (topics of the test's own): an injected feature
drift gives exactly one firing alert at a signed webhook and in a real Alertmanager, then exactly one
resolved alert after the drift stops, a stationary stream none; malformed metric events are counted
and skipped; a webhook receiver that is down while the alert fires gets it once it is back; a restart
neither announces a firing alert again nor forgets it."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest

from recpilot import kafka
from recpilot.models.evaluate import distribution
from recpilot.models.repository import ModelRepository
from recpilot.pb import events_pb2
from recpilot.stack.alertmanager import alertmanager_binary
from services.monitor.channels import verify_signature
from tests.support.monitor import feature_events, monitor_topics, start_monitor, status
from tests.support.receiver import Receiver
from tests.support.repository import tiny_writer

pytestmark = pytest.mark.timeout(240)

SECRET = "s3cret"
# Short windows; only the feature-drift detector has input here. The training reference: these tests
# are about the alert's way to the channels and across a restart (the serving reference and its
# restart: tests/unit/test_monitor_engine.py).
CONFIG = """
[engine]
lateness_s = 0.3
[feature_drift]
reference = "training"
window_s = 1.5
for_windows = 2
resolve_windows = 2
min_samples = 200
"""


@pytest.fixture
def world(stack, platform_settings, tmp_path, unique):
    rng = np.random.default_rng(7)
    ref = distribution(rng.normal(0.0, 1.0, 50_000))
    repo = ModelRepository(tmp_path / "models")
    version = repo.create_version("ranker", tiny_writer("torch", reference={"f0": ref, "score": ref}))
    yield {"repo": repo, "version": version, "bounds": ref["histogram"]["bounds"], "rng": rng,
           "topics": monitor_topics(unique)}
    kafka.delete_topics(platform_settings, list(monitor_topics(unique).values()), timeout=10)


class Feed:
    """Produces one inference replica's ``feature`` events every ``every_s`` (N(shift, 1) values)."""

    def __init__(self, platform, world, every_s: float = 0.25, rows: int = 300) -> None:
        self.prod = kafka.producer(platform)
        self.world, self.every_s, self.rows = world, every_s, rows

    def run(self, seconds: float, shift: float = 0.0, garbage: int = 0) -> None:
        w = self.world
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            for ev in feature_events("ranker", w["version"], "f0", w["bounds"], w["rng"].normal(shift, 1.0, self.rows)):
                self.prod.produce(w["topics"]["metrics"], ev.SerializeToString(), b"inference")
            for _ in range(garbage):
                self.prod.produce(w["topics"]["metrics"], b"\xff\x00 not a metric event", b"inference")
            self.prod.poll(0)
            time.sleep(self.every_s)
        kafka.flush_or_raise(self.prod, 10)


def _alerts_topic(platform, topic) -> list:
    out = []
    for m in kafka.read_to_end(platform, topic, timeout=20):
        msg = events_pb2.AlertsMessage.FromString(m.value())
        out.append(getattr(msg, msg.WhichOneof("body")))
    return out


def _webhook_alerts(receiver) -> list[tuple[str, str]]:
    return [(a["status"], a["labels"]["alertname"]) for b in receiver.bodies() for a in b["alerts"]]


def _alertmanager(am) -> list[dict]:
    with urllib.request.urlopen(f"{am.url}/api/v2/alerts?filter=alertname%3D%22FeatureDrift%22", timeout=5) as r:
        return json.loads(r.read())


def test_drift_fires_once_at_a_signed_webhook_and_alertmanager_then_resolves_once(
        platform_settings, world, tmp_path, unique, wait_until, start_alertmanager):
    receiver = Receiver().start()
    am = start_alertmanager() if alertmanager_binary() else None
    env = {"RECPILOT_MODEL_REPOSITORY": str(tmp_path / "models")}
    settings = {"webhook_urls": receiver.url + "/hooks/monitor", "webhook_secret": SECRET}
    if am is not None:
        settings["alertmanager_url"] = am.url
    mon = start_monitor(platform_settings, tmp_path, unique, CONFIG, env=env, **settings)
    feed = Feed(platform_settings, world)
    try:
        # stationary (with malformed events among them): verdicts, no alert
        feed.run(5.0, shift=0.0, garbage=1)
        wait_until(lambda: status(mon)["processed"] > 0, 10, lambda: status(mon))
        st = status(mon)
        keys = st["detectors"]["FeatureDrift"]["keys"]
        assert keys and keys[0]["last"]["breach"] is False, keys
        assert st["malformed"] >= 5 and mon.alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{mon.port}/metrics", timeout=5) as r:
            exported = r.read().decode()
        assert 'recpilot_monitor_malformed_total{input="metrics"}' in exported
        assert 'recpilot_monitor_malformed_total{input="metrics"} 0.0' not in exported
        assert f'recpilot_monitor_drift{{kind="feature",model="ranker",statistic=' in exported
        assert receiver.requests == [] and (am is None or _alertmanager(am) == [])

        # drift: one firing alert, at both channels
        feed.run(5.0, shift=1.0)
        wait_until(lambda: ("firing", "FeatureDrift") in _webhook_alerts(receiver), 20, lambda: status(mon))
        if am is not None:
            wait_until(lambda: _alertmanager(am), 20, lambda: status(mon)["channels"])
            (active,) = _alertmanager(am)
            assert active["labels"]["feature"] == "f0" and active["labels"]["version"] == world["version"]
        for r in receiver.requests:  # every request signed over its raw body
            assert verify_signature(SECRET, r.body, r.headers.get("X-Recpilot-Signature"))

        # the drift stops: one resolved alert
        feed.run(5.0, shift=0.0)
        wait_until(lambda: ("resolved", "FeatureDrift") in _webhook_alerts(receiver), 20, lambda: status(mon))
        if am is not None:
            wait_until(lambda: not _alertmanager(am), 20, lambda: _alertmanager(am))
        feed.run(2.0, shift=0.0)  # and stays quiet
        assert _webhook_alerts(receiver) == [("firing", "FeatureDrift"), ("resolved", "FeatureDrift")]
        on_topic = [(a.status, a.name) for a in _alerts_topic(platform_settings, world["topics"]["alerts"])]
        assert on_topic == [(events_pb2.FIRING, "FeatureDrift"), (events_pb2.RESOLVED, "FeatureDrift")]
        assert mon.alive()
    finally:
        mon.stop()
        receiver.stop()


def test_a_receiver_down_while_it_fires_gets_it_when_back_and_a_restart_does_not_repeat_it(
        platform_settings, world, tmp_path, unique, wait_until):
    receiver = Receiver().start()
    port = receiver.port
    receiver.stop()  # down: connection refused
    env = {"RECPILOT_MODEL_REPOSITORY": str(tmp_path / "models")}
    mon = start_monitor(platform_settings, tmp_path, unique, CONFIG, env=env,
                        webhook_urls=f"http://127.0.0.1:{port}/hooks/monitor", webhook_secret=SECRET)
    feed = Feed(platform_settings, world)
    try:
        feed.run(2.0, shift=0.0)
        feed.run(5.0, shift=1.0)
        wait_until(lambda: status(mon)["channels"]["webhook"]["failures"] >= 2, 20, lambda: status(mon)["channels"])
        assert status(mon)["firing"], status(mon)["detectors"]
        back = Receiver(port=port, requests=receiver.requests).start()  # up again on the same port
        wait_until(lambda: ("firing", "FeatureDrift") in _webhook_alerts(receiver), 20,
                   lambda: status(mon)["channels"])

        # a restart while the drift goes on: the alert is adopted from the alerts topic, not re-sent
        mon.kill9()
        mon = start_monitor(platform_settings, tmp_path, unique, CONFIG, env=env,
                            webhook_urls=f"http://127.0.0.1:{port}/hooks/monitor", webhook_secret=SECRET)
        assert status(mon)["restored"]["firing"] == 1
        feed.run(4.0, shift=1.0)
        assert status(mon)["firing"], "the adopted alert is still firing"
        assert _webhook_alerts(receiver) == [("firing", "FeatureDrift")]
        feed.run(5.0, shift=0.0)  # and the restarted monitor resolves it
        wait_until(lambda: ("resolved", "FeatureDrift") in _webhook_alerts(receiver), 20, lambda: status(mon))
        assert _webhook_alerts(receiver) == [("firing", "FeatureDrift"), ("resolved", "FeatureDrift")]
        back.stop()
    finally:
        mon.kill9()
