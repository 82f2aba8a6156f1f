"""The monitor's HTTP channels over real sockets, against a local receiver (tests/support/receiver.py):
the webhook's signature verifies on what arrived, Slack gets its shape, a receiver that is down
gets the alert once it is back, a refusal is not retried, a stuck receiver delays no other."""

from __future__ import annotations

import json
import time

import pytest

from recpilot.net import free_port
from services.monitor import channels as C
from services.monitor.alerts import Alert
from tests.support.receiver import Receiver


def _alert(feature="price", **kw) -> Alert:
    return Alert(name="FeatureDrift", labels={"model": "ranker", "version": "3", "feature": feature},
                 severity="page", value=0.31, threshold=0.2, statistic="psi", starts_ms=time.time_ns() // 10**6,
                 summary=f"{feature} drifted", generator="mon-1", **kw)


@pytest.fixture
def receivers():
    made = []

    def make(**kw) -> Receiver:
        r = Receiver(**kw)
        made.append(r)
        return r.start()

    yield make
    for r in made:
        r.stop()




def test_signed_webhook_verifies_on_the_received_bytes(receivers, dispatch, wait_until):
    rx = receivers()
    d = dispatch(C.WebhookChannel(rx.url + "/hooks/recpilot", secret="k3y", timeout_s=2))
    a = _alert()
    d.submit(a)
    wait_until(lambda: len(rx.requests) == 1, 10, lambda: rx.requests)
    d.submit(a.resolve(a.starts_ms + 1000))
    wait_until(lambda: len(rx.requests) == 2, 10, lambda: rx.requests)
    for req, status in zip(rx.requests, ("firing", "resolved")):
        assert req.path == "/hooks/recpilot"
        assert req.headers["Content-Type"] == "application/json"
        assert C.verify_signature("k3y", req.body, req.headers[C.SIGNATURE_HEADER])
        assert not C.verify_signature("wrong", req.body, req.headers[C.SIGNATURE_HEADER])
        doc = req.json()
        assert doc["status"] == status and doc["alerts"][0]["labels"]["feature"] == "price"
        assert doc["alerts"][0]["fingerprint"] == a.fingerprint


def test_slack_webhook_gets_text_and_attachments(receivers, dispatch, wait_until):
    rx = receivers()
    d = dispatch(C.SlackChannel(rx.url + "/services/T0/B0/xyz", timeout_s=2))
    d.submit(_alert())
    wait_until(lambda: rx.requests, 10, "no Slack post")
    doc = rx.requests[0].json()
    assert doc["text"].startswith("[FIRING:page] FeatureDrift")
    assert doc["attachments"][0]["title"] == "[FIRING:page] FeatureDrift"
    assert doc["attachments"][0]["color"] == "#d00000"


def test_a_receiver_down_for_a_while_gets_the_alerts_in_order_once_back(receivers, dispatch, wait_until):
    port = free_port()
    d = dispatch(C.WebhookChannel(f"http://127.0.0.1:{port}/h", secret="k", timeout_s=1))
    a, b = _alert("price"), _alert("age")
    d.submit(a)
    d.submit(b)
    wait_until(lambda: d.stats()["webhook"]["failures"] >= 3, 10, d.stats)  # connection refused, retried
    st = d.stats()["webhook"]
    assert not st["up"] and st["queued"] == 2 and "Connection refused" in st["last_error"]
    d.submit(a.resolve(a.starts_ms + 1))
    rx = receivers(port=port)
    wait_until(lambda: d.stats()["webhook"]["queued"] == 0 and d.stats()["webhook"]["delivered"] == 3, 10, d.stats)
    got = [(x["alerts"][i]["labels"]["feature"], x["alerts"][i]["status"]) for x in rx.bodies()
           for i in range(len(x["alerts"]))]
    assert got == [("price", "firing"), ("age", "firing"), ("price", "resolved")]
    assert all(C.verify_signature("k", r.body, r.headers[C.SIGNATURE_HEADER]) for r in rx.requests)
    assert d.stats()["webhook"]["up"] and d.stats()["webhook"]["delivered"] == 3


def test_a_503_is_retried_and_a_400_is_not(receivers, dispatch, wait_until):
    rx = receivers(status=503)
    d = dispatch(C.WebhookChannel(rx.url, timeout_s=2))
    d.submit(_alert("price"))
    wait_until(lambda: len(rx.requests) >= 3, 10, lambda: rx.requests)
    assert d.stats()["webhook"]["last_error"] == "HTTP 503" and d.stats()["webhook"]["queued"] == 1
    rx.status = 400
    wait_until(lambda: d.stats()["webhook"]["rejected"] == 1, 10, d.stats)
    n = len(rx.requests)
    rx.status = 200
    d.submit(_alert("age"))
    wait_until(lambda: len(rx.requests) == n + 1, 10, lambda: rx.requests)
    assert rx.requests[-1].json()["alerts"][0]["labels"]["feature"] == "age"  # the refused one was not re-sent


def test_a_stuck_receiver_delays_no_other_channel(receivers, dispatch, wait_until):
    stuck, fine = receivers(), receivers()
    stuck.hang()
    d = dispatch(C.WebhookChannel(stuck.url, timeout_s=30, name="stuck"), C.WebhookChannel(fine.url, name="fine"))
    t0 = time.monotonic()
    for i in range(20):
        d.submit(_alert(f"f{i}"))
    wait_until(lambda: sum(len(x["alerts"]) for x in fine.bodies()) == 20, 10, lambda: fine.requests)
    took = time.monotonic() - t0
    assert took < 10 and stuck.requests == []  # the stuck one is still waiting for its answer
    assert d.stats()["stuck"]["queued"] == 20
    stuck.unhang()
    wait_until(lambda: d.stats()["stuck"]["queued"] == 0, 10, d.stats)


def test_the_alertmanager_payload_is_posted_as_json_to_the_v2_api(receivers):
    rx = receivers()
    ch = C.AlertmanagerChannel(rx.url, timeout_s=2, resend_s=60, generator_url="http://mon:9105/status")
    ch.send([_alert()])
    [req] = rx.requests
    assert req.path == "/api/v2/alerts"
    [item] = json.loads(req.body)
    assert set(item) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
