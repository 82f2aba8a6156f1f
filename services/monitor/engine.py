"""The monitor's engine: every input message in, alerts out. Pure (no Kafka, no clock: event times
from the messages, ``now_ms`` from the caller), single-threaded.

    engine = Engine(load_config(), references)       # references(model, version) -> model.json "reference"
    engine.observe_metric_bytes(value)               # metrics.* (MetricEvent)
    engine.observe_reward_bytes(value)               # rewards (Reward, one per shown item)
    engine.observe_event_bytes(value)                # a sample of events.clean (UserEvent)
    for alert in engine.tick(now_ms): ...            # firing / resolved transitions
    engine.status()                                  # JSON-able: what each detector sees now

A message that does not parse, or parses with impossible values, is counted in ``malformed`` and
skipped; the ``observe_*_bytes`` methods never raise. Metric events the detectors do not use are
counted in ``ignored``. A metric event is stamped at the end of the interval it describes, so it
counts in the window that holds the millisecond before its timestamp. Each metric event is routed by its name (``inputs`` in the status says how
many of each kind arrived); aggregation happens per window (counts added up, one list per event), so
the per-event cost is one parse plus a few dictionary operations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import DecodeError

from recpilot.pb import events_pb2
from services.monitor import detectors as D
from services.monitor.alerts import Alert
from services.monitor.config import MonitorConfig

log = logging.getLogger(__name__)

References = Callable[[str, str], "dict | None"]
_REF_RETRY_MS = 30_000


class Engine:
    def __init__(self, config: MonitorConfig, references: References, instance: str = "",
                 serving_path: Path | None = None) -> None:
        """``serving_path``: where the drift detectors' serving references are kept across restarts
        (JSON, rewritten when one is complete; None: in memory only)."""
        self.config, self._references, self.instance = config, references, instance
        self.serving_path = serving_path
        c = config
        late = int(c.engine.lateness_s * 1000)
        self.expire_ms = int(c.engine.expire_s * 1000)
        self.catchup_ms = int(c.engine.catchup_s * 1000)
        self.processed = self.malformed = self.ignored = 0
        self.inputs: dict[str, int] = {}
        self._refs: dict[tuple[str, str], tuple[int, dict | None]] = {}
        self._now_ms = 0

        self.trackers: dict[str, D.Tracker] = {}

        def tracker(name: str, cfg) -> D.Tracker:
            t = self.trackers[name] = D.Tracker(name, cfg, instance)
            return t

        tracker("FeatureDrift", c.feature_drift)
        tracker("ScoreDrift", c.score_drift)
        ev_tracker = tracker("EventMixDrift", c.event_mix)
        for name, cfg in (("CtrRegression", c.ctr_regression), ("ConversionRegression", c.conversion_regression),
                          ("PolicyCtrRegression", c.policy_ctr_regression),
                          ("CanaryCtrRegression", c.canary_ctr_regression), ("LatencySLOBurn", c.latency_slo),
                          ("ErrorSLOBurn", c.error_slo), ("FeatureFreshness", c.freshness),
                          ("ConsumerLag", c.consumer_lag), ("DataQuality", c.data_quality),
                          ("ResourceSaturation", c.resource)):
            tracker(name, cfg)

        self.feature = D.HistogramDrift("FeatureDrift", c.feature_drift, late, self._reference, "feature")
        self.score = D.HistogramDrift("ScoreDrift", c.score_drift, late, self._reference, "variant")
        self._load_serving_references()
        self.feature.on_serving_reference = self.score.on_serving_reference = self._save_serving_references
        self.event_mix = D.EventMix(c.event_mix, late, lambda labels: ev_tracker.firing(labels))
        self.latency = D.BurnRate("LatencySLOBurn", c.latency_slo, late)
        self.errors = D.BurnRate("ErrorSLOBurn", c.error_slo, late)
        self.freshness = D.Freshness(c.freshness, late)
        self.lag = D.Lag(c.consumer_lag, late)
        self.quality = D.DataQuality(c.data_quality, late)
        self.resources = D.Resources(c.resource, late)
        self.canary = D.Canary(c.canary_ctr_regression, late)
        self.ctr = D.CusumDetector("CtrRegression", c.ctr_regression, "version")
        self.conversion = D.CusumDetector("ConversionRegression", c.conversion_regression, "version", "conversion")
        self.policy = D.CusumDetector("PolicyCtrRegression", c.policy_ctr_regression, "policy_version")
        self._windowed = [d for d, cfg in ((self.feature, c.feature_drift), (self.score, c.score_drift),
                                           (self.event_mix, c.event_mix), (self.latency, c.latency_slo),
                                           (self.errors, c.error_slo), (self.freshness, c.freshness),
                                           (self.lag, c.consumer_lag), (self.quality, c.data_quality),
                                           (self.resources, c.resource), (self.canary, c.canary_ctr_regression))
                          if cfg.enabled]
        self._cusums = [d for d in (self.ctr, self.conversion, self.policy) if d.cfg.enabled]
        self._counters: dict[tuple[str, str, str], float] = {}   # (service, instance, name) -> last cumulative
        self._received_delta: dict[tuple[str, str], float] = {}
        self._event_types = {v.number: v.name for v in events_pb2.EventType.DESCRIPTOR.values}

        h: dict[str, Callable] = {}
        if c.feature_drift.enabled:
            h["feature"] = self._on_feature
        if c.score_drift.enabled:
            h["score"] = self._on_score
        if c.latency_slo.enabled:
            h["latency_ms"] = self._on_latency
        if c.error_slo.enabled:
            h["requests"] = self._on_requests
            h["failures"] = self._on_failures
        if c.freshness.enabled:
            h["freshness_ms"] = self._on_freshness
        if c.consumer_lag.enabled:
            h["consumer_lag"] = h["consumer_lag_messages"] = self._on_lag
        if c.data_quality.enabled:
            for n in ("received_total", "rejected_total", "duplicates_total", "missing_field_rate",
                      "events_applied_total", "events_invalid_total"):
                h[n] = self._on_quality
        if c.resource.enabled:
            for n in ("cpu_cores", "cpu_limit_cores", "memory_rss_bytes", "gpu_memory_bytes"):
                h[n] = self._on_resource
        self._handlers = h

    # -- references ---------------------------------------------------------------------------------
    def _load_serving_references(self) -> None:
        if self.serving_path is None or not self.serving_path.exists():
            return
        try:
            saved = json.loads(self.serving_path.read_text())
            self.feature.load_serving_references(saved.get("FeatureDrift") or [])
            self.score.load_serving_references(saved.get("ScoreDrift") or [])
        except (OSError, ValueError, TypeError) as exc:  # unreadable: rebuilt from the next windows
            log.warning("serving references not read", extra={"path": str(self.serving_path), "error": repr(exc)})

    def _save_serving_references(self) -> None:
        if self.serving_path is None:
            return
        doc = {"FeatureDrift": self.feature.serving_references(), "ScoreDrift": self.score.serving_references()}
        tmp = self.serving_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.serving_path)
        except OSError as exc:
            log.warning("serving references not saved", extra={"path": str(self.serving_path), "error": repr(exc)})

    def _reference(self, key: tuple[str, str, str]) -> dict | None:
        model, version, what = key
        got = self._refs.get((model, version))
        if got is None or (got[1] is None and self._now_ms - got[0] >= _REF_RETRY_MS):
            try:
                ref = self._references(model, version)
            except Exception as exc:  # a repository hiccup gives no verdict, never a crash
                log.warning("model reference not read", extra={"model": model, "version": version,
                                                               "error": repr(exc), "collapse": True})
                ref = None
            got = self._refs[(model, version)] = (self._now_ms, ref if isinstance(ref, dict) else None)
        return None if got[1] is None else got[1].get(what)

    # -- inputs -------------------------------------------------------------------------------------
    def _parse(self, cls, value: bytes):
        try:
            return cls.FromString(value)
        except (DecodeError, TypeError, ValueError):
            self.malformed += 1
            return None

    def observe_metric_bytes(self, value: bytes) -> None:
        msg = self._parse(events_pb2.MetricEvent, value)
        if msg is not None:
            self.observe_metric(msg)

    def observe_metric(self, ev: events_pb2.MetricEvent) -> None:
        name = ev.name
        h = self._handlers.get(name)
        if h is None:
            self.processed += 1
            self.ignored += 1
            return
        ts = ev.timestamp_ms - 1   # stamped at the end of its interval: it counts in the window before
        try:
            if ts < 0:
                raise ValueError("no event time")
            h(ev, ts)
        except Exception:  # impossible contents (wrong shapes, NaN): counted, never raised
            self.malformed += 1
            return
        self.processed += 1
        inputs = self.inputs
        inputs[name] = inputs.get(name, 0) + 1

    def _on_feature(self, ev, ts: int) -> None:
        s = ev.summary
        counts = s.bucket_counts
        if counts:
            lab = ev.labels
            key = (lab.get("model", ""), lab.get("version", ""), lab.get("feature", ""))
            if not all(key):
                raise ValueError("a feature histogram without model, version or feature")
            self.feature.add(key, ts, list(counts), s.bucket_bounds)

    def _on_score(self, ev, ts: int) -> None:
        s = ev.summary
        counts = s.bucket_counts
        if counts:
            lab = ev.labels
            model, version = lab.get("model", ""), lab.get("version", "")
            if not (model and version):
                raise ValueError("a score histogram without model or version")
            self.score.add((model, version, lab.get("variant", "")), ts, list(counts), s.bucket_bounds)

    def _on_latency(self, ev, ts: int) -> None:
        s = ev.summary
        counts, bounds = s.bucket_counts, s.bucket_bounds
        if not counts:
            return
        method = ev.labels.get("method", "")
        i = bisect_left(bounds, self.latency.threshold_ms(method))   # the threshold's bucket: not bad
        total = sum(counts)
        bad = sum(counts[i + 1:]) if i + 1 < len(counts) else 0
        if min(counts) < 0:
            raise ValueError("negative bucket count")
        self.latency.add((ev.service, method), ts, bad, total)

    def _on_requests(self, ev, ts: int) -> None:
        if not ev.value >= 0:
            raise ValueError("negative count")
        self.errors.add((ev.service, ev.labels.get("method", "")), ts, 0.0, ev.value)

    def _on_failures(self, ev, ts: int) -> None:
        if not ev.value >= 0:
            raise ValueError("negative count")
        self.errors.add((ev.service, ev.labels.get("method", "")), ts, ev.value, 0.0)

    def _on_freshness(self, ev, ts: int) -> None:
        if not math.isfinite(ev.value):
            raise ValueError("non-finite")
        self.freshness.add(ev.service, ts, ev.value)

    def _on_lag(self, ev, ts: int) -> None:
        if not math.isfinite(ev.value):
            raise ValueError("non-finite")
        self.lag.add(ev.service, ev.instance, ts, ev.value)

    def _delta(self, ev) -> float | None:
        key = (ev.service, ev.instance, ev.name)
        prev = self._counters.get(key)
        self._counters[key] = ev.value
        if prev is None:
            return None
        return ev.value if ev.value < prev else ev.value - prev   # a restart starts the counter afresh

    def _on_quality(self, ev, ts: int) -> None:
        if not math.isfinite(ev.value) or ev.value < 0:
            raise ValueError("not a count or share")
        name, svc, q = ev.name, ev.service, self.quality
        if name == "missing_field_rate":
            d = self._received_delta.get((svc, ev.instance))
            if d:
                q.add(svc, "missing_field_rate", ts, ev.value * d, 0.0)
            return
        if name == "rejected_total" and len(ev.labels):
            return   # per reason; the unlabelled total counts
        d = self._delta(ev)
        if d is None:
            return
        if name == "received_total":
            self._received_delta[(svc, ev.instance)] = d
            for check in ("reject_rate", "duplicate_rate", "missing_field_rate"):
                q.add(svc, check, ts, 0.0, d)
        elif name == "rejected_total":
            q.add(svc, "reject_rate", ts, d, 0.0)
        elif name == "duplicates_total":
            q.add(svc, "duplicate_rate", ts, d, 0.0)
        elif name == "events_applied_total":
            q.add(svc, "invalid_rate", ts, 0.0, d)
        elif name == "events_invalid_total":
            q.add(svc, "invalid_rate", ts, d, d)

    def _on_resource(self, ev, ts: int) -> None:
        if not math.isfinite(ev.value) or ev.value < 0:
            raise ValueError("not a resource amount")
        self.resources.add(ev.service, ev.instance, ts, ev.name, ev.value)

    def observe_reward_bytes(self, value: bytes) -> None:
        msg = self._parse(events_pb2.Reward, value)
        if msg is not None:
            self.observe_reward(msg)

    def observe_reward(self, r: events_pb2.Reward) -> None:
        ts = r.impression_ts_ms
        if ts <= 0 or not r.model_version:
            self.malformed += 1
            return
        self.processed += 1
        self.inputs["reward"] = self.inputs.get("reward", 0) + 1
        model, version, clicked = r.model_name, r.model_version, r.clicked
        if r.variant == "canary":
            if self.canary in self._windowed:
                self.canary.observe(model, version, True, clicked, ts)
        elif r.variant in ("production", ""):
            if self.ctr.cfg.enabled:
                self.ctr.observe(model, version, clicked, ts)
            if self.conversion.cfg.enabled:
                self.conversion.observe(model, version, r.purchased, ts)
            if self.canary in self._windowed:
                self.canary.observe(model, version, False, clicked, ts)
        if self.policy.cfg.enabled and r.policy_version and r.policy_variant in ("production", ""):
            self.policy.observe(model, r.policy_version, clicked, ts)

    def observe_event_bytes(self, value: bytes) -> None:
        msg = self._parse(events_pb2.UserEvent, value)
        if msg is not None:
            self.observe_event(msg)

    def observe_event(self, e: events_pb2.UserEvent) -> None:
        if e.timestamp_ms <= 0:
            self.malformed += 1
            return
        self.processed += 1
        self.inputs["event"] = self.inputs.get("event", 0) + 1
        if self.event_mix not in self._windowed:
            return
        acc = self.event_mix.window(e.timestamp_ms)
        if acc is None:
            return
        ctx = e.context
        for f, counts in acc.items():
            if f == "event_type":
                cat = self._event_types.get(e.event_type, str(e.event_type))
            else:
                cat = ctx.get(f, "(none)")
            counts[cat] = counts.get(cat, 0) + 1

    # -- evaluation -----------------------------------------------------------------------------------
    def tick(self, now_ms: int) -> list[Alert]:
        """Close the windows due at ``now_ms``; the alerts that fired or resolved, in order."""
        self._now_ms = now_ms
        verdicts: list[D.Verdict] = []
        for d in self._windowed:
            verdicts += d.close(d.close_time(now_ms, self.catchup_ms))
        for d in self._cusums:
            verdicts += d.take()
        verdicts.sort(key=lambda v: v.end_ms)
        out = []
        for v in verdicts:
            a = self.trackers[v.name].apply(v, now_ms)
            if a is not None:
                out.append(a)
        for t in self.trackers.values():
            out += t.expire(now_ms, self.expire_ms)
        self._expire(now_ms)
        return out

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self.expire_ms
        for d in self._cusums:
            d.expire(now_ms, self.expire_ms)
        for d in (self.latency, self.errors):
            for k in [k for k, h in d.history.items() if not h or h[-1][0] < d.effective_now - self.expire_ms]:
                del d.history[k]
        live = {tuple(v for _, v in labels) for labels in self.trackers["CanaryCtrRegression"].keys}
        self.canary.expire(live)
        for k in [k for k, (t, _) in self._refs.items() if t < horizon]:
            del self._refs[k]

    def firing(self) -> list[Alert]:
        return ([st.firing for t in self.trackers.values() for st in t.keys.values() if st.firing is not None]
                + [a for t in self.trackers.values() for a, _ in t.adopted.values()])

    def adopt_firing(self, alerts: list[Alert], now_ms: int) -> None:
        """Alerts an earlier monitor fired and did not resolve (the ``alerts`` topic): they count as
        firing, so they are not announced again, and resolve like any other (or after ``expire_s``
        without data). Unknown alert names are ignored."""
        for a in alerts:
            t = self.trackers.get(a.name)
            if t is not None and a.firing:
                t.adopt(a, now_ms)

    def status(self) -> dict:
        """What every detector sees now (JSON-able)."""
        c = self.config
        cfgs = {"FeatureDrift": c.feature_drift, "ScoreDrift": c.score_drift, "EventMixDrift": c.event_mix,
                "CtrRegression": c.ctr_regression, "ConversionRegression": c.conversion_regression,
                "PolicyCtrRegression": c.policy_ctr_regression, "CanaryCtrRegression": c.canary_ctr_regression,
                "LatencySLOBurn": c.latency_slo, "ErrorSLOBurn": c.error_slo, "FeatureFreshness": c.freshness,
                "ConsumerLag": c.consumer_lag, "DataQuality": c.data_quality, "ResourceSaturation": c.resource}
        det = {}
        for name, t in self.trackers.items():
            cfg = dataclasses.asdict(cfgs[name])
            det[name] = {"enabled": cfg.pop("enabled"), "config": cfg, **t.status()}
        for d in (self.ctr, self.conversion, self.policy):
            det[d.name]["sequences"] = d.status()
        late = sum(d.late for d in self._windowed)
        return {"instance": self.instance, "now_ms": self._now_ms, "processed": self.processed,
                "malformed": self.malformed, "ignored": self.ignored, "late": late, "inputs": dict(self.inputs),
                "open_windows": sum(d.open_windows() for d in self._windowed),
                "firing": [a.to_dict() for a in self.firing()],
                "hints": [h for h in self.resources.hints.values() if h.get("hint")],
                "resources": list(self.resources.hints.values()),
                "detectors": det}
