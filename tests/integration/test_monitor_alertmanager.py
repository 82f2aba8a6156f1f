"""The monitor's alerts in a real Alertmanager (Debian's prometheus-alertmanager, started here on a
free port with the stack's own launcher) and on the real ``alerts`` topic: a firing alert is active,
its resolution removes it, re-sending keeps it active past its ``endsAt``, and an Alertmanager that
starts late still gets what was queued for it."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from recpilot.net import free_port
from recpilot.pb import events_pb2
from recpilot.stack.alertmanager import Alertmanager, alertmanager_binary
from services.monitor import channels as C
from services.monitor.alerts import Alert

needs_alertmanager = pytest.mark.skipif(alertmanager_binary() is None,
                                        reason="prometheus-alertmanager is not installed (recpilot setup installs it)")


def _alert(feature="price", **kw) -> Alert:
    return Alert(name="FeatureDrift", labels={"model": "ranker", "version": "3", "feature": feature},
                 severity="page", value=0.31, threshold=0.2, statistic="psi", starts_ms=time.time_ns() // 10**6,
                 summary=f"{feature} drifted", generator="mon-1", **kw)


def _active(am: Alertmanager, feature: str) -> dict | None:
    """The alert about ``feature`` as Alertmanager's API lists it (None: not listed)."""
    with urllib.request.urlopen(f"{am.url}/api/v2/alerts?filter=feature%3D%22{feature}%22", timeout=5) as r:
        alerts = json.loads(r.read())
    return alerts[0] if alerts else None




@needs_alertmanager
def test_firing_then_resolved_in_a_real_alertmanager(start_alertmanager, dispatch, wait_until):
    am = start_alertmanager()
    d = dispatch(C.AlertmanagerChannel(am.url, timeout_s=5, resend_s=60, generator_url="http://mon:9105/status"))
    a = _alert("price")
    d.submit(a)
    got = wait_until(lambda: _active(am, "price"), 15, d.stats)
    assert got["status"]["state"] == "active"
    assert got["labels"] == {"alertname": "FeatureDrift", "severity": "page", "model": "ranker", "version": "3",
                             "feature": "price"}
    assert got["annotations"]["summary"] == "price drifted" and got["annotations"]["statistic"] == "psi"
    assert got["generatorURL"] == "http://mon:9105/status"
    assert got["startsAt"].startswith(C.rfc3339(a.starts_ms)[:19])
    d.submit(a.resolve(time.time_ns() // 10**6))
    wait_until(lambda: _active(am, "price") is None, 15, lambda: _active(am, "price"))
    # the channel counts a delivery once Alertmanager's answer is back, which can be after it applied it
    wait_until(lambda: d.stats()["alertmanager"]["delivered"] == 2, 15, d.stats)
    assert d.stats()["alertmanager"]["failures"] == 0


@needs_alertmanager
def test_resending_keeps_a_firing_alert_active_past_its_end(start_alertmanager, dispatch, wait_until):
    am = start_alertmanager()
    resent = C.AlertmanagerChannel(am.url, timeout_s=5, resend_s=0.75)  # each post is valid for 3 s
    d = dispatch(resent)
    d.submit(_alert("price"))
    # the control: the same kind of alert posted once and never again expires at its endsAt
    once = C.AlertmanagerChannel(am.url, timeout_s=5, resend_s=0.75)
    once.send([_alert("age")])
    first = wait_until(lambda: _active(am, "price"), 15, d.stats)
    first_end = C.now_ms() + 3_000
    # wait for time to pass the first post's endsAt (the subject of the test), polling the API
    wait_until(lambda: C.now_ms() > first_end + 1_000 and _active(am, "age") is None, 15,
               lambda: _active(am, "age"))
    still = _active(am, "price")
    assert still is not None and still["status"]["state"] == "active"
    assert still["endsAt"] > first["endsAt"] and d.stats()["alertmanager"]["resends"] >= 3


@needs_alertmanager
def test_an_alertmanager_that_starts_late_gets_the_queued_alert(start_alertmanager, dispatch, wait_until):
    port = free_port()
    d = dispatch(C.AlertmanagerChannel(f"http://127.0.0.1:{port}", timeout_s=2, resend_s=60))
    d.submit(_alert("price"))
    wait_until(lambda: d.stats()["alertmanager"]["failures"] >= 2, 10, d.stats)
    assert not d.stats()["alertmanager"]["up"]
    am = start_alertmanager(port)
    got = wait_until(lambda: _active(am, "price"), 15, d.stats)
    assert got["status"]["state"] == "active"
    # the channel's worker marks it up when the post returns (just after Alertmanager has the alert)
    wait_until(lambda: d.stats()["alertmanager"]["up"], 5, d.stats)


def test_alerts_topic_gets_one_message_per_alert_keyed_by_fingerprint(stack, unique, wait_until):
    from recpilot.kafka import create_topics, producer, read_to_end

    topic = f"it.alerts.{unique}"
    create_topics(stack.s, [topic], 1)
    d = C.Dispatcher([C.KafkaAlertsChannel(producer(stack.s), topic)])
    try:
        a, b = _alert("price"), _alert("age")
        d.submit(a)
        d.submit(b)
        d.submit(a.resolve(a.starts_ms + 5))
        wait_until(lambda: d.stats()["kafka"]["delivered"] == 3, 30, d.stats)
    finally:
        d.close(5)
    msgs = read_to_end(stack.s, topic)
    got = [(m.key().decode(), events_pb2.AlertsMessage.FromString(m.value())) for m in msgs]
    assert [(k, Alert.from_proto(m.alert).labels["feature"], Alert.from_proto(m.alert).status) for k, m in got] == [
        (a.fingerprint, "price", "firing"), (b.fingerprint, "age", "firing"), (a.fingerprint, "price", "resolved")]
    assert all(m.WhichOneof("body") == "alert" for _, m in got)
