"""The monitor's alert channels without a socket: payload shapes (Alertmanager, Slack, webhook),
the webhook signature, and the dispatcher (retry with backoff, bounded queues, a channel down then
back, one slow channel never delaying another) on in-memory channels. Over real HTTP and against
a real Alertmanager and broker: tests/integration/test_monitor_{channels_http,alertmanager}.py."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import datetime

import pytest

from recpilot.errors import InvalidArgument
from recpilot.pb import events_pb2
from services.monitor import channels as C
from services.monitor import metrics
from services.monitor.alerts import Alert
from services.monitor.settings import MonitorSettings

T0 = 1_796_000_000_000  # epoch ms


def _alert(feature="price", **kw) -> Alert:
    base = dict(name="FeatureDrift", labels={"model": "ranker", "version": "3", "feature": feature},
                severity="page", value=0.31, threshold=0.2, statistic="psi", starts_ms=T0,
                summary=f"{feature} drifted", description="PSI above threshold for 2 windows", generator="mon-1")
    base.update(kw)
    return Alert(**base)


def _parse(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


# -- payloads --------------------------------------------------------------------------------------


def test_rfc3339_is_utc_with_milliseconds():
    assert C.rfc3339(T0 + 123) == "2026-11-30T00:53:20.123Z"
    assert _parse(C.rfc3339(T0 + 123)) == T0 + 123


def test_alertmanager_payload_is_what_prometheus_posts():
    ch = C.AlertmanagerChannel("http://am.example:9095/", resend_s=60, generator_url="http://mon:9105/status")
    assert ch.endpoint == "http://am.example:9095/api/v2/alerts"
    a = _alert(labels={"model": "ranker", "version": "3", "feature": "price", "bad-key": "x", "empty": ""})
    now = T0 + 10_000
    [firing] = ch.payload([a], now=now)
    assert firing["labels"] == {"alertname": "FeatureDrift", "severity": "page", "model": "ranker", "version": "3",
                                "feature": "price", "bad_key": "x"}  # valid label names, no empty values
    assert firing["annotations"]["summary"] == "price drifted"
    assert firing["annotations"]["statistic"] == "psi" and firing["annotations"]["threshold"] == "0.2"
    assert "runbook" in firing["annotations"]
    assert _parse(firing["startsAt"]) == T0
    assert _parse(firing["endsAt"]) == now + 4 * 60_000  # valid for four re-sends, as Prometheus does
    assert firing["generatorURL"] == "http://mon:9105/status"
    [resolved] = ch.payload([a.resolve(T0 + 50_000)], now=now)
    assert _parse(resolved["endsAt"]) == T0 + 50_000 and resolved["labels"] == firing["labels"]
    json.dumps([firing, resolved])  # serialisable as is


def test_a_firing_alert_and_its_resolution_in_one_batch_send_only_the_resolution():
    a, b = _alert("price"), _alert("age")
    assert C.latest_per_fingerprint([a, b, a.resolve(T0 + 1)]) == [b, a.resolve(T0 + 1)]


def test_slack_payload_has_text_and_one_attachment_per_alert():
    a, b = _alert("price"), _alert("age", severity="ticket").resolve(T0 + 5_000)
    p = C.SlackChannel.payload([a, b])
    assert p["text"].splitlines() == [
        "2 alerts (1 firing, 1 resolved)",
        "[FIRING:page] FeatureDrift feature=price model=ranker version=3: price drifted",
        "[RESOLVED:ticket] FeatureDrift feature=age model=ranker version=3: resolved: age drifted"]
    first, second = p["attachments"]
    assert first["color"] == "#d00000" and second["color"] == "#2eb886"
    assert {"title": "feature", "value": "price", "short": True} in first["fields"]
    assert {"title": "psi", "value": "0.31 (threshold 0.2)", "short": True} in first["fields"]
    assert first["ts"] == T0 // 1000 and second["ts"] == (T0 + 5_000) // 1000
    assert C.SlackChannel.payload([a])["text"] == "[FIRING:page] FeatureDrift feature=price model=ranker version=3: price drifted"


def test_webhook_body_reads_like_an_alertmanager_notification_and_is_signed():
    ch = C.WebhookChannel("https://hooks.example/recpilot", secret="s3cret", external_url="http://mon:9105/status")
    a, b = _alert("price"), _alert("age")
    body = ch.body([a, b.resolve(T0 + 9)], now=T0 + 10)
    doc = json.loads(body)
    assert doc["version"] == "4" and doc["status"] == "firing" and doc["receiver"] == "recpilot-monitor"
    assert [x["status"] for x in doc["alerts"]] == ["firing", "resolved"]
    assert doc["alerts"][0]["fingerprint"] == a.fingerprint
    assert doc["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z" and _parse(doc["alerts"][1]["endsAt"]) == T0 + 9
    assert doc["commonLabels"] == {"alertname": "FeatureDrift", "severity": "page", "model": "ranker", "version": "3"}
    assert _parse(doc["sentAt"]) == T0 + 10
    header = ch.headers(body)[C.SIGNATURE_HEADER]
    import hashlib
    import hmac
    assert header == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert C.verify_signature("s3cret", body, header)
    assert C.verify_signature(b"s3cret", body, "  " + header + " ")
    assert not C.verify_signature("other", body, header)
    assert not C.verify_signature("s3cret", body.replace(b"price", b"prics"), header)  # a changed body
    assert not C.verify_signature("s3cret", body, None) and not C.verify_signature("s3cret", body, "sha256=")
    assert C.WebhookChannel("http://x/h").headers(body) == {}  # no secret: no header


def test_a_url_that_is_not_http_is_a_usage_error():
    with pytest.raises(InvalidArgument, match="alertmanager_url"):
        C.AlertmanagerChannel("127.0.0.1:9095")
    with pytest.raises(InvalidArgument, match="webhook_urls"):
        C.build_channels(MonitorSettings(webhook_urls=("ftp://x",)), None)


def test_build_channels_follows_the_settings():
    s = MonitorSettings(alertmanager_url="http://127.0.0.1:9095", webhook_urls=("http://a/h", "http://b/h"),
                        webhook_secret="k", slack_webhook_urls=("https://hooks.slack.example/T/B/x",),
                        alertmanager_resend_s=30, channel_timeout_s=2, instance_id="mon-7", http_port=9105)
    chans = C.build_channels(s, producer=object())
    assert [c.name for c in chans] == ["kafka", "alertmanager", "webhook", "webhook-2", "slack"]
    kafka, am, hook, _, slack = chans
    assert isinstance(kafka, C.KafkaAlertsChannel) and kafka.topic == "alerts"
    assert am.resend_s == 30 and am.timeout_s == 2 and am.generator_url == "http://mon-7:9105/status"
    assert hook.secret == "k" and slack.url.endswith("/T/B/x")
    assert all(isinstance(c, C.Channel) for c in chans)
    assert [c.name for c in C.build_channels(MonitorSettings(), producer=None)] == []


class _FakeProducer:
    def __init__(self, fail: str | None = None, unacked: int = 0):
        self.sent, self.fail, self.unacked, self._cbs = [], fail, unacked, []

    def produce(self, topic, value, key, on_delivery):
        self.sent.append((topic, key, value))
        self._cbs.append(on_delivery)

    def poll(self, _t):
        return 0

    def flush(self, _timeout):
        for cb in self._cbs:
            cb(self.fail, None)
        self._cbs = []
        return self.unacked


def test_kafka_channel_publishes_alerts_messages_keyed_by_fingerprint_and_raises_when_unacked():
    prod = _FakeProducer()
    a = _alert()
    C.KafkaAlertsChannel(prod, "alerts").send([a, a.resolve(T0 + 1)])
    (t1, k1, v1), (_, k2, v2) = prod.sent
    assert t1 == "alerts" and k1 == k2 == a.fingerprint
    m1, m2 = events_pb2.AlertsMessage.FromString(v1), events_pb2.AlertsMessage.FromString(v2)
    assert m1.WhichOneof("body") == "alert" == m2.WhichOneof("body")
    assert Alert.from_proto(m1.alert).status == "firing" and Alert.from_proto(m2.alert).status == "resolved"
    assert m1.alert.labels["feature"] == "price" and m1.alert.fingerprint == a.fingerprint
    with pytest.raises(C.ChannelError, match="1 failed"):
        C.KafkaAlertsChannel(_FakeProducer(fail="broker down"), "alerts").send([a])
    with pytest.raises(C.ChannelError, match="1 not acknowledged"):
        C.KafkaAlertsChannel(_FakeProducer(unacked=1), "alerts").send([a])


# -- the dispatcher ----------------------------------------------------------------------------------


class _Memory:
    """An in-memory channel: records batches; ``down`` makes send raise; ``gate`` blocks send."""

    def __init__(self, name: str, max_batch: int = 100):
        self.name, self.max_batch = name, max_batch
        self.batches: list[list[Alert]] = []
        self.calls: list[float] = []
        self.down = False
        self.reject = False
        self.gate = threading.Event()
        self.gate.set()

    def send(self, alerts):
        self.calls.append(time.monotonic())
        self.gate.wait()
        if self.reject:
            raise C.ChannelRejected("HTTP 400: bad label")
        if self.down:
            raise C.ChannelError("connection refused")
        self.batches.append(list(alerts))

    @property
    def got(self) -> list[Alert]:
        return [a for b in self.batches for a in b]




def test_every_channel_gets_every_alert_in_order(dispatch, wait_until):
    a, b = _Memory("a"), _Memory("b")
    d = dispatch(a, b)
    alerts = [_alert(f"f{i}") for i in range(5)]
    for x in alerts:
        d.submit(x)
    d.submit(alerts[0].resolve(T0 + 1))
    want = [*alerts, alerts[0].resolve(T0 + 1)]
    wait_until(lambda: a.got == want and b.got == want, 5, lambda: (a.got, b.got))
    assert d.stats()["a"] | {"last_delivery_ms": 0} == {
        "delivered": 6, "failures": 0, "dropped": 0, "rejected": 0, "resends": 0, "queued": 0, "last_error": "",
        "up": True, "last_delivery_ms": 0}


def test_a_firing_alert_is_sent_once_while_it_fires(dispatch, wait_until):
    ch = _Memory("a")
    d = dispatch(ch)
    before = metrics.ALERTS.labels("FeatureDrift", "firing")._value.get()
    a = _alert()
    d.submit(a)
    d.submit(_alert(value=0.5))   # the same fingerprint, still firing
    d.submit(a.resolve(T0 + 1))
    d.submit(a)                   # fires again: a new episode
    wait_until(lambda: len(ch.got) == 3, 5, lambda: ch.got)
    assert [x.status for x in ch.got] == ["firing", "resolved", "firing"]
    assert d.deduplicated == 1 and d.firing() == [a]
    assert metrics.ALERTS.labels("FeatureDrift", "firing")._value.get() - before == 2


def test_a_channel_down_is_retried_with_growing_jittered_backoff_then_delivers_in_order(dispatch, wait_until):
    ch = _Memory("flaky")
    ch.down = True
    d = dispatch(ch, retry_initial_s=0.02, retry_max_s=0.16)
    first = _alert("f0")
    d.submit(first)
    wait_until(lambda: len(ch.calls) >= 7, 10, lambda: ch.calls)
    gaps = [b - a for a, b in zip(ch.calls, ch.calls[1:])]
    # step n waits between half and all of min(max, initial * 2^n): 0.01-0.02, 0.02-0.04, 0.04-0.08, then capped
    assert 0.009 <= gaps[0] < 0.5 and 0.019 <= gaps[1] and 0.039 <= gaps[2]
    assert all(0.079 <= g < 1.0 for g in gaps[3:6]), gaps  # capped: 0.08-0.16 s (+ scheduling)
    st = d.stats()["flaky"]
    assert not st["up"] and st["failures"] >= 7 and st["last_error"] == "connection refused" and st["queued"] == 1
    later = [_alert(f"f{i}") for i in range(1, 4)]
    for x in later:
        d.submit(x)
    ch.down = False
    wait_until(lambda: ch.got == [first, *later], 5, lambda: ch.got)
    st = d.stats()["flaky"]
    assert st["up"] and st["delivered"] == 4 and st["dropped"] == 0 and st["queued"] == 0


def test_backoff_honours_retry_after_up_to_the_maximum():
    lane = C._Lane(_Memory("x"), 10, 0.5, 30.0, random.Random(0))  # its thread is never started
    assert 0.25 <= lane._backoff(0, None) <= 0.5 and 15 <= lane._backoff(10, None) <= 30
    assert lane._backoff(0, 7.0) == 7.0 and lane._backoff(0, 999.0) == 30.0


def test_a_full_queue_drops_the_oldest_and_counts_it(dispatch, wait_until):
    ch = _Memory("slow")
    ch.down = True
    d = dispatch(ch, queue_size=3)
    before = metrics.CHANNEL_DROPPED.labels("slow")._value.get()
    alerts = [_alert(f"f{i}") for i in range(8)]
    for x in alerts:
        d.submit(x)
    st = d.stats()["slow"]
    assert st["queued"] == 3
    wait_until(lambda: d.stats()["slow"]["dropped"] == 5, 5, d.stats)  # exact once no attempt is in flight
    assert metrics.CHANNEL_DROPPED.labels("slow")._value.get() - before == 5
    assert metrics.CHANNEL_QUEUE.labels("slow")._value.get() == 3
    ch.down = False
    wait_until(lambda: ch.got == alerts[5:], 5, lambda: ch.got)  # the newest three, in order
    assert d.stats()["slow"]["delivered"] == 3 and metrics.CHANNEL_QUEUE.labels("slow")._value.get() == 0


def test_an_alert_dropped_while_its_batch_is_in_flight_counts_as_delivered_when_that_send_succeeds(dispatch, wait_until):
    ch = _Memory("gated")
    ch.gate.clear()
    d = dispatch(ch, queue_size=2)
    a0, a1, a2 = (_alert(f"f{i}") for i in range(3))
    d.submit(a0)
    wait_until(lambda: ch.calls, 5, "send started")   # [a0] in flight
    d.submit(a1)
    d.submit(a2)                                       # full: a0 (in flight) leaves the queue
    ch.gate.set()
    wait_until(lambda: ch.got == [a0, a1, a2], 5, lambda: ch.got)
    st = d.stats()["gated"]
    assert st["delivered"] == 3 and st["dropped"] == 0


def test_a_refused_batch_is_counted_and_not_retried(dispatch, wait_until):
    ch = _Memory("picky")
    ch.reject = True
    d = dispatch(ch)
    d.submit(_alert("f0"))
    wait_until(lambda: d.stats()["picky"]["rejected"] == 1, 5, d.stats)
    ch.reject = False
    d.submit(_alert("f1"))
    wait_until(lambda: [a.labels["feature"] for a in ch.got] == ["f1"], 5, lambda: ch.got)
    st = d.stats()["picky"]
    assert len(ch.calls) == 2 and st["last_error"] == "HTTP 400: bad label" and st["failures"] == 0


def test_a_hanging_channel_delays_neither_submit_nor_another_channel(dispatch, wait_until):
    stuck, fast = _Memory("stuck"), _Memory("fast")
    stuck.gate.clear()   # send() hangs, as a receiver that accepts the connection and never answers
    d = dispatch(stuck, fast)
    t0 = time.monotonic()
    alerts = [_alert(f"f{i}") for i in range(200)]
    for x in alerts:
        d.submit(x)
    submit_s = time.monotonic() - t0
    wait_until(lambda: fast.got == alerts, 5, lambda: len(fast.got))
    assert submit_s < 1.0  # generous: 200 in-memory appends (no wait on any channel)
    assert stuck.got == [] and d.stats()["stuck"]["queued"] == 200 and d.stats()["fast"]["queued"] == 0
    stuck.gate.set()
    wait_until(lambda: stuck.got == alerts, 5, lambda: len(stuck.got))


def test_batches_respect_the_channel_size(dispatch, wait_until):
    ch = _Memory("small", max_batch=2)
    ch.gate.clear()
    d = dispatch(ch)
    for i in range(5):
        d.submit(_alert(f"f{i}"))
    ch.gate.set()
    wait_until(lambda: len(ch.got) == 5, 5, lambda: ch.got)
    assert max(len(b) for b in ch.batches) == 2


class _Resending(_Memory):
    resend_s = 0.05

    def __init__(self, name):
        super().__init__(name)
        self.resent = 0
        self.last = None

    def send(self, alerts):
        super().send(alerts)
        self.last = time.monotonic()

    def resend_due(self):
        return None if self.last is None else self.last + self.resend_s - time.monotonic()

    def resend(self):
        self.resent += 1
        self.last = time.monotonic()


def test_the_worker_calls_resend_when_the_channel_says_it_is_due(dispatch, wait_until):
    ch = _Resending("am")
    d = dispatch(ch)
    d.submit(_alert())
    wait_until(lambda: ch.resent >= 3, 5, lambda: ch.resent)
    assert d.stats()["am"]["resends"] >= 3


def test_alertmanager_channel_tracks_what_fires_for_resends(monkeypatch):
    sent = []
    monkeypatch.setattr(C, "post_json", lambda url, body, timeout, headers=None: sent.append(json.loads(body)) or 200)
    ch = C.AlertmanagerChannel("http://127.0.0.1:1", resend_s=10)
    a, b = _alert("price"), _alert("age")
    assert ch.resend_due() is None
    ch.send([a, b])
    assert {x.fingerprint for x in ch.firing} == {a.fingerprint, b.fingerprint}
    assert 9 < ch.resend_due() <= 10
    ch.send([a.resolve(T0 + 1)])
    assert ch.firing == [b]
    ch.resend()
    assert [x["labels"]["feature"] for x in sent[-1]] == ["age"]
    ch.send([b.resolve(T0 + 2)])
    assert ch.resend_due() is None and len(sent) == 4


def test_close_delivers_what_is_queued_within_the_timeout(wait_until):
    ch = _Memory("a")
    ch.gate.clear()
    d = C.Dispatcher([ch])
    for i in range(3):
        d.submit(_alert(f"f{i}"))
    threading.Timer(0.05, ch.gate.set).start()
    d.close(timeout=5)
    assert len(ch.got) == 3
    d.submit(_alert("late"))  # ignored after close
    assert len(ch.got) == 3


def test_close_gives_up_on_a_channel_that_stays_down():
    ch = _Memory("dead")
    ch.down = True
    d = C.Dispatcher([ch], retry_initial_s=0.01, retry_max_s=0.02)
    d.submit(_alert())
    t0 = time.monotonic()
    d.close(timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    assert d.stats()["dead"]["queued"] == 1 and not d.stats()["dead"]["up"]


def test_channel_names_must_be_distinct():
    with pytest.raises(InvalidArgument, match="distinct"):
        C.Dispatcher([_Memory("a"), _Memory("a")])
