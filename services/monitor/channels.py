"""Where the monitor's alerts go: Alertmanager, Slack-compatible webhooks, signed JSON webhooks and
the ``alerts`` topic, each behind its own queue and worker thread (:class:`Dispatcher`).

A channel is anything with a ``name`` and ``send(alerts)`` that raises when the delivery failed
(:class:`Channel`). The dispatcher gives every channel a bounded queue (the oldest alert is dropped
and counted when it is full) and a worker that sends in order, in batches, retrying a failed batch
with exponential backoff and jitter until the channel is back: :meth:`Dispatcher.submit` never
blocks, and a channel that is down never delays another. A receiver's 4xx answer (other than 408,
425 and 429) is a refusal of the payload, not an outage: the batch is counted as rejected and not
retried, so one bad alert cannot wedge a queue.

HTTP goes through the standard library (``urllib``); nothing here logs a URL, since Slack-style
webhook URLs carry their token in the path.

Verifying a webhook (:class:`WebhookChannel`): the ``X-Recpilot-Signature`` header is
``sha256=<hex HMAC-SHA256(secret, raw request body)>``; a receiver recomputes it over the bytes it
received, before parsing them, and compares in constant time (:func:`verify_signature`, which a
receiver may copy: it needs only ``hmac`` and ``hashlib``).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import itertools
import json
import logging
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Protocol, runtime_checkable

from recpilot.errors import InvalidArgument, Unavailable
from recpilot.kafka import produce_waiting
from recpilot.pb import events_pb2
from services.monitor import metrics
from services.monitor.alerts import Alert

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Recpilot-Signature"
USER_AGENT = "recpilot-monitor"


class ChannelError(Unavailable):
    """A delivery failed and may succeed later (the dispatcher retries); ``retry_after`` (s) when the
    receiver asked for a pause (HTTP 429/503 ``Retry-After``)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChannelRejected(ChannelError):
    """The receiver refused the payload (HTTP 4xx): sending it again would fail again."""


@runtime_checkable
class Channel(Protocol):
    name: str

    def send(self, alerts: list[Alert]) -> None:
        """Deliver ``alerts`` (in order) or raise."""


# -- payloads -------------------------------------------------------------------------------------


def rfc3339(ms: int) -> str:
    """``2026-11-30T04:05:06.789Z`` for epoch milliseconds ``ms``."""
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_LABEL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


def label_name(key: str) -> str:
    """A Prometheus label name for ``key`` (``[a-zA-Z_][a-zA-Z0-9_]*``; other characters become ``_``)."""
    name = _LABEL_NAME_BAD.sub("_", key) or "_"
    return "_" + name if name[0].isdigit() else name


def alert_labels(alert: Alert) -> dict[str, str]:
    """The alert's labels as Prometheus sends them: valid names, no empty values."""
    return {label_name(k): v for k, v in alert.all_labels().items() if v != ""}


def alert_annotations(alert: Alert) -> dict[str, str]:
    return {k: v for k, v in alert.annotations().items() if v != ""}


def prometheus_alert(alert: Alert, generator_url: str = "", *, now: int | None = None,
                     valid_for_s: float | None = None) -> dict:
    """One alert of Alertmanager's ``POST /api/v2/alerts`` body, as Prometheus posts it: a firing
    alert's ``endsAt`` is how long it stays valid without being re-sent (``valid_for_s``; omitted:
    Alertmanager's ``resolve_timeout`` applies); a resolved one's is when it resolved."""
    now = now_ms() if now is None else now
    out = {"labels": alert_labels(alert), "annotations": alert_annotations(alert),
           "startsAt": rfc3339(alert.starts_ms or now)}
    if not alert.firing:
        out["endsAt"] = rfc3339(alert.ends_ms or now)
    elif valid_for_s is not None:
        out["endsAt"] = rfc3339(now + int(valid_for_s * 1000))
    url = alert.generator if alert.generator.startswith(("http://", "https://")) else generator_url
    if url:
        out["generatorURL"] = url
    return out


def latest_per_fingerprint(alerts: Iterable[Alert]) -> list[Alert]:
    """The last alert of each fingerprint, in the order the last ones came (a firing alert and its
    resolution in one batch send only the resolution)."""
    latest: dict[str, Alert] = {}
    for a in alerts:
        latest.pop(a.fingerprint, None)
        latest[a.fingerprint] = a
    return list(latest.values())


# -- signing --------------------------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Recpilot-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str | bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` (the received ``X-Recpilot-Signature``) signs ``body`` (the raw bytes
    received) with ``secret``. Constant-time comparison; a missing header is False."""
    if not header:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())


# -- HTTP -----------------------------------------------------------------------------------------


def post_json(url: str, body: bytes, timeout_s: float, headers: dict[str, str] | None = None) -> int:
    """POST ``body`` (JSON) and return the status; :class:`ChannelRejected` for a 4xx other than
    408/425/429, :class:`ChannelError` for anything else that is not a 2xx."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": USER_AGENT,
                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace").strip()
        msg = f"HTTP {exc.code}" + (f": {detail}" if detail else "")
        if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):
            raise ChannelRejected(msg) from None
        raise ChannelError(msg, retry_after=_retry_after(exc.headers.get("Retry-After"))) from None
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timeout, DNS, a broken answer
        reason = getattr(exc, "reason", None) or exc
        raise ChannelError(f"{type(exc).__name__}: {reason}") from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _check_url(url: str, what: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"{what}: an http:// or https:// URL is needed")
    return url


# -- channels -------------------------------------------------------------------------------------


class AlertmanagerChannel:
    """Alertmanager's API: ``POST <url>/api/v2/alerts`` with the labels (``alertname``, ``severity``
    and the alert's own), annotations, ``startsAt``, ``endsAt`` and ``generatorURL`` that a
    Prometheus alert carries. Like Prometheus it re-posts every firing alert every ``resend_s``
    (:meth:`resend`, called by the dispatcher when :meth:`resend_due` says so) with ``endsAt`` four
    re-sends ahead, so Alertmanager keeps it active while the monitor runs, resolves it if the
    monitor goes away, and learns it again after an Alertmanager restart."""

    max_batch = 100

    def __init__(self, url: str, timeout_s: float = 5.0, resend_s: float = 60.0, *, generator_url: str = "",
                 name: str = "alertmanager") -> None:
        self.name = name
        self.endpoint = _check_url(url, "alertmanager_url").rstrip("/") + "/api/v2/alerts"
        self.timeout_s = timeout_s
        self.resend_s = resend_s
        self.generator_url = generator_url
        self._firing: dict[str, Alert] = {}   # delivered and not resolved: re-sent
        self._posted: dict[str, float] = {}   # fingerprint -> monotonic time of its last post

    @property
    def firing(self) -> list[Alert]:
        return list(self._firing.values())

    def payload(self, alerts: list[Alert], now: int | None = None) -> list[dict]:
        return [prometheus_alert(a, self.generator_url, now=now, valid_for_s=4 * self.resend_s) for a in alerts]

    def _post(self, alerts: list[Alert]) -> None:
        post_json(self.endpoint, json.dumps(self.payload(alerts)).encode(), self.timeout_s)
        t = time.monotonic()
        for a in alerts:
            if a.firing:
                self._firing[a.fingerprint] = a
                self._posted[a.fingerprint] = t
            else:
                self._firing.pop(a.fingerprint, None)
                self._posted.pop(a.fingerprint, None)

    def send(self, alerts: list[Alert]) -> None:
        self._post(latest_per_fingerprint(alerts))

    def resend_due(self) -> float | None:
        """Seconds until the oldest firing alert is due again (<= 0: now); None when none fires."""
        if not self._posted:
            return None
        return min(self._posted.values()) + self.resend_s - time.monotonic()

    def resend(self) -> None:
        """Post every firing alert again (one request)."""
        if self._firing:
            self._post(list(self._firing.values()))


_SLACK_COLORS = {"firing": {"page": "#d00000", "ticket": "#e8a317"}, "resolved": "#2eb886"}


def alert_line(alert: Alert) -> str:
    """``[FIRING:page] FeatureDrift model=ranker version=3 feature=price: <summary>``."""
    labels = " ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if v != "")
    head = f"[{alert.status.upper()}:{alert.severity}] {alert.name}" + (f" {labels}" if labels else "")
    return f"{head}: {alert.summary}" if alert.summary else head


class SlackChannel:
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat): one message per batch,
    ``text`` with a line per alert, and an attachment per alert (colour by status and severity,
    the labels and the statistic as fields)."""

    max_batch = 20

    def __init__(self, url: str, timeout_s: float = 5.0, *, name: str = "slack") -> None:
        self.name = name
        self.url = _check_url(url, "slack_webhook_urls")
        self.timeout_s = timeout_s

    @staticmethod
    def payload(alerts: list[Alert]) -> dict:
        firing = sum(a.firing for a in alerts)
        head = (f"{len(alerts)} alerts ({firing} firing, {len(alerts) - firing} resolved)\n"
                if len(alerts) > 1 else "")
        attachments = []
        for a in alerts:
            color = _SLACK_COLORS["firing"].get(a.severity, "#e8a317") if a.firing else _SLACK_COLORS["resolved"]
            fields = [{"title": k, "value": v, "short": True} for k, v in sorted(a.labels.items()) if v != ""]
            if a.statistic:
                fields.append({"title": a.statistic, "value": f"{a.value:.4g} (threshold {a.threshold:.4g})",
                               "short": True})
            att = {"color": color, "fallback": alert_line(a),
                   "title": f"[{a.status.upper()}:{a.severity}] {a.name}",
                   "text": "\n".join(x for x in (a.summary, a.description) if x), "fields": fields,
                   "ts": (a.ends_ms if not a.firing and a.ends_ms else a.starts_ms) // 1000}
            if a.generator:
                att["footer"] = a.generator
            attachments.append(att)
        return {"text": head + "\n".join(alert_line(a) for a in alerts), "attachments": attachments}

    def send(self, alerts: list[Alert]) -> None:
        post_json(self.url, json.dumps(self.payload(alerts)).encode(), self.timeout_s)


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    common = dict(dicts[0])
    for d in dicts[1:]:
        common = {k: v for k, v in common.items() if d.get(k) == v}
    return common


class WebhookChannel:
    """A generic JSON webhook. The body is shaped like Alertmanager's webhook notification
    (``version``, ``status``, ``receiver``, ``alerts[]`` with ``status``, ``labels``,
    ``annotations``, ``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``, and
    ``commonLabels``/``commonAnnotations``), plus ``sentAt``, so a receiver written for
    Alertmanager reads it. With a secret, every request carries ``X-Recpilot-Signature:
    sha256=<hex HMAC-SHA256(secret, body)>`` (:func:`verify_signature`); ``sentAt`` is inside the
    signed body, so a receiver can also refuse old replays."""

    max_batch = 100

    def __init__(self, url: str, secret: str | bytes | None = None, timeout_s: float = 5.0, *,
                 name: str = "webhook", external_url: str = "", receiver: str = "recpilot-monitor") -> None:
        self.name = name
        self.url = _check_url(url, "webhook_urls")
        self.secret = secret
        self.timeout_s = timeout_s
        self.external_url = external_url
        self.receiver = receiver

    def body(self, alerts: list[Alert], now: int | None = None) -> bytes:
        now = now_ms() if now is None else now
        items = []
        for a in alerts:
            item = {"status": a.status, **prometheus_alert(a, self.external_url, now=now), "fingerprint": a.fingerprint}
            item.setdefault("endsAt", "0001-01-01T00:00:00Z")  # as Alertmanager writes "not resolved"
            items.append(item)
        doc = {"version": "4", "receiver": self.receiver,
               "status": "firing" if any(a.firing for a in alerts) else "resolved",
               "alerts": items, "groupLabels": {},
               "commonLabels": _common([i["labels"] for i in items]),
               "commonAnnotations": _common([i["annotations"] for i in items]),
               "externalURL": self.external_url, "truncatedAlerts": 0, "sentAt": rfc3339(now)}
        return json.dumps(doc, separators=(",", ":")).encode()

    def headers(self, body: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: sign(self.secret, body)} if self.secret else {}

    def send(self, alerts: list[Alert]) -> None:
        body = self.body(alerts)
        post_json(self.url, body, self.timeout_s, self.headers(body))


class KafkaAlertsChannel:
    """The ``alerts`` topic: one :class:`AlertsMessage` (``alert``) per alert, keyed by the alert's
    fingerprint, so a fingerprint's firing and resolution stay in order in one partition. A batch
    counts as delivered once the broker acknowledged all of it; a retried batch may publish an
    alert twice (read the topic by fingerprint and status)."""

    max_batch = 500

    def __init__(self, producer, topic: str, timeout_s: float = 10.0, *, name: str = "kafka") -> None:
        self.name = name
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    def send(self, alerts: list[Alert]) -> None:
        errors: list[str] = []

        def delivered(err, _msg) -> None:
            if err is not None:
                errors.append(str(err))

        for a in alerts:
            msg = events_pb2.AlertsMessage(alert=a.to_proto())
            produce_waiting(self.producer, self.topic, msg.SerializeToString(), a.fingerprint, on_delivery=delivered)
        remaining = self.producer.flush(self.timeout_s)
        if errors or remaining:
            raise ChannelError(f"{self.topic}: {len(errors)} failed, {remaining} not acknowledged in "
                               f"{self.timeout_s:g}s" + (f" ({errors[0]})" if errors else ""))


# -- the dispatcher ---------------------------------------------------------------------------------


class _Lane:
    """One channel's bounded queue, its worker thread and its counters."""

    def __init__(self, channel: Channel, queue_size: int, retry_initial_s: float, retry_max_s: float,
                 rng: random.Random) -> None:
        self.channel = channel
        self.name = channel.name
        self.queue_size = queue_size
        self.batch_size = max(1, int(getattr(channel, "max_batch", 100)))
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.rng = rng
        self.cond = threading.Condition()
        self.queue: deque[tuple[int, Alert]] = deque()
        self.seq = itertools.count()
        self.inflight_hi = -1   # the last sequence number of the batch being sent
        self.limbo = 0          # entries dropped while in flight: dropped only if that attempt fails
        self.delivered = self.failures = self.dropped = self.rejected = self.resends = 0
        self.last_error = ""
        self.last_delivery_ms = 0
        self.up = True
        self.closing = False    # deliver what is queued, then stop
        self.abandon = False    # stop now
        self.m_queue = metrics.CHANNEL_QUEUE.labels(self.name)
        self.m_dropped = metrics.CHANNEL_DROPPED.labels(self.name)
        self.m_sends = {o: metrics.CHANNEL_SENDS.labels(self.name, o) for o in metrics.SEND_OUTCOMES}
        self.m_queue.set(0)
        self.thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)

    # -- producer side (any thread) ------------------------------------------------------------
    def put(self, alert: Alert) -> None:
        with self.cond:
            if len(self.queue) >= self.queue_size:
                seq, _ = self.queue.popleft()
                if seq <= self.inflight_hi:
                    self.limbo += 1
                else:
                    self._drop(1)
            self.queue.append((next(self.seq), alert))
            self.m_queue.set(len(self.queue))
            self.cond.notify()

    def _drop(self, n: int) -> None:
        if n:
            self.dropped += n
            self.m_dropped.inc(n)

    def stats(self) -> dict:
        with self.cond:
            return {"delivered": self.delivered, "failures": self.failures, "dropped": self.dropped,
                    "rejected": self.rejected, "resends": self.resends, "queued": len(self.queue),
                    "last_error": self.last_error, "up": self.up, "last_delivery_ms": self.last_delivery_ms}

    # -- the worker ------------------------------------------------------------------------------
    def _resend_due(self) -> float | None:
        due = getattr(self.channel, "resend_due", None)
        return due() if due is not None else None

    def _next(self) -> list[Alert] | None:
        """Wait for work: a batch from the queue head, [] when a re-send is due, None to stop."""
        with self.cond:
            while True:
                if self.abandon:
                    return None
                if self.queue:
                    batch = list(itertools.islice(self.queue, self.batch_size))
                    self.inflight_hi = self.queue[len(batch) - 1][0]
                    return [a for _, a in batch]
                if self.closing:
                    return None
                due = self._resend_due()
                if due is not None and due <= 0:
                    return []
                self.cond.wait(due)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(self.retry_max_s, self.retry_initial_s * (2 ** min(attempt, 30)))
        delay = base / 2 + self.rng.uniform(0, base / 2)  # "equal jitter": never less than half the step
        return max(delay, min(retry_after or 0.0, self.retry_max_s))

    def _run(self) -> None:
        attempt = 0
        while True:
            batch = self._next()
            if batch is None:
                return
            try:
                if batch:
                    self.channel.send(batch)
                else:
                    self.channel.resend()
            except ChannelRejected as exc:
                self._finish(batch, ok=False, rejected=True, error=str(exc))
                attempt = 0
                log.warning("alert channel refused a batch; not retried",
                            extra={"channel": self.name, "alerts": len(batch), "error": str(exc)})
            except Exception as exc:  # the channel is down: back off and try the queue head again
                error = str(exc) or type(exc).__name__
                was_up = self.up
                self._finish(batch, ok=False, rejected=False, error=error)
                if was_up:
                    log.warning("alert channel down; retrying with backoff",
                                extra={"channel": self.name, "error": error, "collapse": True})
                delay = self._backoff(attempt, getattr(exc, "retry_after", None))
                attempt += 1
                with self.cond:
                    self.cond.wait_for(lambda: self.abandon, delay)
            else:
                if not self.up:
                    log.info("alert channel back", extra={"channel": self.name, "failures": self.failures})
                self._finish(batch, ok=True, rejected=False, error="")
                attempt = 0

    def _finish(self, batch: list[Alert], *, ok: bool, rejected: bool, error: str) -> None:
        with self.cond:
            if ok or rejected:
                while self.queue and self.queue[0][0] <= self.inflight_hi:
                    self.queue.popleft()
                if ok:
                    self.delivered += len(batch)
                    if not batch:
                        self.resends += 1
                    self.last_delivery_ms = now_ms()
                    self.up = True
                else:
                    self.rejected += len(batch)
                    self.last_error = error
                self.limbo = 0
            else:
                self._drop(self.limbo)
                self.limbo = 0
                self.failures += 1
                self.last_error = error
                self.up = False
            self.inflight_hi = -1
            self.m_queue.set(len(self.queue))
        self.m_sends["ok" if ok else "rejected" if rejected else "failed"].inc()


class Dispatcher:
    """Fans each alert out to every channel; see the module docstring.

    ``submit`` also de-duplicates: a firing alert whose fingerprint is already firing is not sent
    again (one firing, one resolved per episode), and it counts every alert it passes on in
    ``recpilot_monitor_alerts_total``."""

    def __init__(self, channels: Iterable[Channel], queue_size: int = 1000, retry_initial_s: float = 0.5,
                 retry_max_s: float = 30.0, *, seed: int | None = None) -> None:
        channels = list(channels)
        names = [c.name for c in channels]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"alert channel names must be distinct: {names}")
        rng = random.Random(seed)
        self._lanes = [_Lane(c, queue_size, retry_initial_s, retry_max_s, random.Random(rng.random()))
                       for c in channels]
        self._lock = threading.Lock()
        self._firing: dict[str, Alert] = {}
        self.deduplicated = 0
        self._closed = False
        for lane in self._lanes:
            lane.thread.start()

    @property
    def channels(self) -> list[Channel]:
        return [lane.channel for lane in self._lanes]

    def firing(self) -> list[Alert]:
        """The alerts that fired and have not resolved (as submitted)."""
        with self._lock:
            return list(self._firing.values())

    def submit(self, alert: Alert) -> None:
        """Queue ``alert`` on every channel; never blocks on a channel."""
        with self._lock:
            if self._closed:
                log.warning("alert submitted after close; not sent", extra={"alert": alert.name})
                return
            fp = alert.fingerprint
            if alert.firing:
                if fp in self._firing:
                    self.deduplicated += 1
                    return
                self._firing[fp] = alert
            else:
                self._firing.pop(fp, None)
        metrics.ALERTS.labels(alert.name, alert.status).inc()
        for lane in self._lanes:
            lane.put(alert)

    def stats(self) -> dict[str, dict]:
        """Per channel: delivered, failures (failed attempts), dropped, rejected, resends, queued,
        last_error, up (the last attempt succeeded), last_delivery_ms."""
        return {lane.name: lane.stats() for lane in self._lanes}

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking alerts; give the workers up to ``timeout`` s to deliver what is queued, then
        stop them (what is left is lost, and logged)."""
        with self._lock:
            self._closed = True
        deadline = time.monotonic() + timeout
        for lane in self._lanes:
            with lane.cond:
                lane.closing = True
                lane.cond.notify_all()
        for lane in self._lanes:
            lane.thread.join(max(0.0, deadline - time.monotonic()))
        for lane in self._lanes:
            with lane.cond:
                lane.abandon = True
                lane.cond.notify_all()
                left = len(lane.queue)
            if left:
                log.warning("alert channel closed with alerts undelivered", extra={"channel": lane.name, "alerts": left})
        for lane in self._lanes:
            lane.thread.join(1.0)


def _numbered(kind: str, i: int) -> str:
    return kind if i == 0 else f"{kind}-{i + 1}"


def generator_url(settings) -> str:
    """Where an alert's "source" link points: the monitor's ``/status``."""
    return f"http://{settings.instance_id}:{settings.http_port}/status"


def build_channels(settings, producer) -> list[Channel]:
    """The channels ``settings`` (:class:`services.monitor.settings.MonitorSettings`) configure: the
    alerts topic (when ``producer`` is given), Alertmanager, each JSON webhook (signed with
    ``webhook_secret`` when set) and each Slack-compatible webhook. A URL that is not http(s) is an
    :class:`InvalidArgument`."""
    timeout = settings.channel_timeout_s
    url = generator_url(settings)
    chans: list[Channel] = []
    if producer is not None:
        chans.append(KafkaAlertsChannel(producer, settings.alerts_topic, timeout_s=max(timeout, 10.0)))
    if settings.alertmanager_url:
        chans.append(AlertmanagerChannel(settings.alertmanager_url, timeout, settings.alertmanager_resend_s,
                                         generator_url=url))
    if settings.webhook_urls and not settings.webhook_secret:
        log.warning("webhooks configured without RECPILOT_MONITOR_WEBHOOK_SECRET: requests are not signed")
    for i, hook in enumerate(settings.webhook_urls):
        chans.append(WebhookChannel(hook, settings.webhook_secret, timeout, name=_numbered("webhook", i),
                                    external_url=url))
    for i, hook in enumerate(settings.slack_webhook_urls):
        chans.append(SlackChannel(hook, timeout, name=_numbered("slack", i)))
    return chans
