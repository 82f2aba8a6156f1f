"""The engine end to end on serialised messages (bytes in, alerts out)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recpilot.metricevents import metric_event, summary
from recpilot.pb import events_pb2
from services.monitor.config import load_config
from services.monitor.engine import Engine

LAT = [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000]
T0 = 1_800_000_000_000
BOUNDS = [float(b) for b in np.linspace(-3, 3, 11)[1:]]


def _hist(x, bounds):
    return np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds) + 1)


@pytest.fixture
def reference():
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0, 1, 50_000), -3, 3)
    counts = np.bincount(np.minimum(np.searchsorted(BOUNDS, x, side="left"), 9), minlength=10)
    one = {"mean": 0.0, "std": 1.0, "min": -3.0, "max": 3.0, "histogram": {"bounds": BOUNDS, "counts": counts.tolist()}}
    return {"f1": one, "f2": one, "score": one}


def engine(reference, serving_path=None, **sections):
    cfg = load_config()
    for name, values in sections.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)})
    return Engine(cfg, lambda model, version: reference if model == "m" else None, instance="test",
                  serving_path=serving_path)


def feature_event(ts, instance, feature, x, version="1"):
    return metric_event("inference", instance, "feature", float(np.mean(x)), {"model": "m", "version": version,
                        "feature": feature}, timestamp_ms=ts,
                        summary=summary(len(x), x.sum(), x.min(), x.max(), None, BOUNDS, _hist(x, BOUNDS))
                        ).SerializeToString()


def run_drift(eng, rng, windows, shift, instances=("r0", "r1"), rows=300, start=0):
    """One inference interval (5 s) per instance; ``shift(window)`` sigmas on f1; ticks every second."""
    alerts = []
    for k in range(start * 12, (start + windows) * 12):
        base = T0 + k * 5000
        for j, inst in enumerate(instances):
            ts = base + 100 * (j + 1)
            eng.observe_metric_bytes(feature_event(ts, inst, "f1", rng.normal(shift(k // 12), 1, rows)))
            eng.observe_metric_bytes(feature_event(ts, inst, "f2", rng.normal(0, 1, rows)))
        for now in range(base, base + 5000, 1000):
            alerts += [(k // 12, a) for a in eng.tick(now)]
    return alerts


def test_a_half_sigma_shift_fires_one_alert_within_two_windows_then_resolves_once(reference):
    eng = engine(reference)
    rng = np.random.default_rng(1)
    alerts = run_drift(eng, rng, 15, lambda w: 0.5 if 3 <= w < 7 else 0.0)
    assert [(a.name, a.status, a.labels["feature"]) for _, a in alerts] == [
        ("FeatureDrift", "firing", "f1"), ("FeatureDrift", "resolved", "f1")]
    (wf, fired), (wr, resolved) = alerts
    # window 3 breaches (for_windows 1 by default); it closes (plus lateness) in window 4
    assert wf == 4 and fired.labels == {"model": "m", "version": "1", "feature": "f1"}
    assert fired.value >= fired.threshold and fired.statistic in ("psi", "js", "wasserstein_sigma")
    # resolve_windows 5: clean windows 7..11, the fifth closes in window 12
    assert resolved.fingerprint == fired.fingerprint and wr == 12
    st = eng.status()
    json.dumps(st)
    fd = st["detectors"]["FeatureDrift"]
    assert fd["fired"] == 1 and fd["resolved"] == 1 and fd["firing"] == []
    assert {k["labels"]["feature"] for k in fd["keys"]} == {"f1", "f2"}


def test_a_restarted_engine_adopts_a_firing_alert_never_refires_it_and_resolves_it(reference, tmp_path):
    saved = tmp_path / "serving_references.json"
    first = engine(reference, serving_path=saved)
    rng = np.random.default_rng(4)
    ((_, fired),) = run_drift(first, rng, 5, lambda w: 0.0 if w < 3 else 1.0)  # windows 0-2: the serving reference
    assert fired.firing and saved.exists()
    from services.monitor.alerts import Alert

    restored = Alert.from_proto(fired.to_proto())   # as read back from the alerts topic
    # the saved serving reference, not the drifted windows after the restart, is what it compares with
    second = engine(reference, serving_path=saved)
    second.adopt_firing([restored, dataclasses.replace(restored, name="NoSuchAlert")], T0 + 5 * 60_000)
    assert [a.fingerprint for a in second.firing()] == [fired.fingerprint]
    alerts = run_drift(second, rng, 4, lambda w: 1.0, start=5)     # the drift goes on: nothing new
    assert alerts == [] and [a.fingerprint for a in second.firing()] == [fired.fingerprint]
    alerts = run_drift(second, rng, 7, lambda w: 0.0, start=9)     # it stops: one resolution
    assert [(a.status, a.fingerprint) for _, a in alerts] == [("resolved", fired.fingerprint)]
    # an adopted alert whose key never comes back resolves as "no data" after expire_s
    third = engine(reference)
    third.adopt_firing([restored], T0)
    out = third.tick(T0 + int(third.config.engine.expire_s * 1000) + 1)
    assert [(a.status, a.fingerprint) for a in out] == [("resolved", fired.fingerprint)] and third.firing() == []


def test_instances_are_aggregated_into_one_window(reference):
    # 300 rows per instance and interval; min_samples above one instance's whole window
    eng = engine(reference, feature_drift={"min_samples": 5000, "reference": "training"})
    rng = np.random.default_rng(2)
    run_drift(eng, rng, 2, lambda w: 0.0, instances=("r0",))
    keys = eng.status()["detectors"]["FeatureDrift"]["keys"]
    assert all(k["last"]["breach"] is None for k in keys)   # 3,600 rows: no verdict
    eng = engine(reference, feature_drift={"min_samples": 5000, "reference": "training"})
    run_drift(eng, rng, 2, lambda w: 0.0, instances=("r0", "r1"))
    keys = eng.status()["detectors"]["FeatureDrift"]["keys"]
    assert all(k["last"]["breach"] is False and k["last"]["samples"] == 7200 for k in keys)


def test_a_stationary_stream_raises_nothing(reference):
    eng = engine(reference)
    alerts = run_drift(eng, np.random.default_rng(3), 20, lambda w: 0.0)
    assert alerts == [] and eng.malformed == 0


def test_an_unknown_model_gives_no_verdict_and_says_why(reference):
    eng = engine(reference)
    for k in range(30):
        eng.observe_metric_bytes(metric_event("inference", "r0", "feature", 0.0, {"model": "other", "version": "1",
                                 "feature": "f1"}, timestamp_ms=T0 + k * 5000, summary=summary(
                                     1000, 0, 0, 0, None, BOUNDS, [100] * 11)).SerializeToString())
    assert eng.tick(T0 + 10 * 60_000) == []
    (key,) = eng.status()["detectors"]["FeatureDrift"]["keys"]
    assert key["last"]["breach"] is None and "reference" in key["last"]["reason"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_malformed_bytes_are_counted_and_never_raise(data):
    eng = Engine(load_config(), lambda m, v: None)
    for observe in (eng.observe_metric_bytes, eng.observe_reward_bytes, eng.observe_event_bytes):
        observe(data)
    assert eng.malformed + eng.processed == 3
    eng.tick(T0)


def test_impossible_contents_are_malformed_not_crashes(reference):
    eng = engine(reference)
    bad = [
        metric_event("inference", "r0", "feature", 0.0, {"model": "m", "version": "1"}, timestamp_ms=T0,
                     summary=summary(1, 0, 0, 0, None, BOUNDS, [1] * 11)),          # no feature label
        metric_event("inference", "r0", "latency_ms", 0.0, {"method": "X"}, timestamp_ms=T0,
                     summary=summary(1, 0, 0, 0, None, LAT, [-5] * 19)),            # negative counts
        metric_event("inference", "r0", "requests", float("nan"), {"method": "X"}, timestamp_ms=T0),
        metric_event("features", "f0", "freshness_ms", float("inf"), timestamp_ms=T0),
        metric_event("inference", "r0", "requests", 5.0, {"method": "X"}, timestamp_ms=0),   # no event time
    ]
    for ev in bad:
        eng.observe_metric_bytes(ev.SerializeToString())
    eng.observe_metric_bytes(metric_event("x", "y", "not_a_metric_we_use", 1.0, timestamp_ms=T0).SerializeToString())
    eng.observe_reward_bytes(events_pb2.Reward(model_name="m", impression_ts_ms=T0).SerializeToString())  # no version
    assert eng.malformed == 6 and eng.ignored == 1 and eng.processed == 1
    assert eng.tick(T0 + 10**6) == []


def latency_event(ts, instance, scale, rng, n=500, method="Recommend"):
    lat = rng.lognormal(np.log(20), 0.5, n) * scale
    return metric_event("inference", instance, "latency_ms", float(lat.mean()), {"method": method}, timestamp_ms=ts,
                        summary=summary(n, lat.sum(), lat.min(), lat.max(), None, LAT, _hist(lat, LAT))
                        ).SerializeToString()


def test_a_latency_doubling_fires_within_30_seconds_and_stationary_latency_never_does(reference):
    eng = engine(reference)
    rng = np.random.default_rng(4)
    onset = T0 + 120_000 + 2_500
    fired = []
    for k in range(60):
        base = T0 + k * 5000
        for j, inst in enumerate(("r0", "r1")):
            ts = base + 1000 + 1500 * j
            # the interval (ts - 5 s, ts]: the part after the onset twice as slow
            share = min(1.0, max(0.0, (ts - onset) / 5000))
            n_slow = int(500 * share)
            for scale, n in ((1.0, 500 - n_slow), (2.0, n_slow)):
                if n:
                    eng.observe_metric_bytes(latency_event(ts, inst, scale, rng, n))
        for now in range(base, base + 5000, 1000):
            fired += [(now, a) for a in eng.tick(now)]
    assert [(a.name, a.status, a.labels) for _, a in fired] == [
        ("LatencySLOBurn", "firing", {"service": "inference", "method": "Recommend"})]
    assert 0 < fired[0][0] - onset <= 30_000
    assert fired[0][1].statistic == "burn_rate" and fired[0][1].severity == "page"


def test_rewards_drive_the_ctr_policy_and_canary_detectors(reference):
    eng = engine(reference, ctr_regression={"baseline_items": 20_000, "baseline_min_items": 10_000},
                 policy_ctr_regression={"enabled": False}, conversion_regression={"enabled": False})
    rng = np.random.default_rng(5)
    r = events_pb2.Reward(model_name="m", variant="production", policy_version="p1", policy_variant="production")
    fired = []
    t = T0
    for version, p, n in (("1", 0.03, 40_000), ("2", 0.015, 20_000)):
        r.model_version = version
        for c in (rng.random(n) < p).tolist():
            t += 2
            r.clicked = c
            r.impression_ts_ms = t
            eng.observe_reward_bytes(r.SerializeToString())
            if t % 1000 == 0:
                fired += eng.tick(t)
    assert [(a.name, a.labels) for a in fired] == [("CtrRegression", {"model": "m", "version": "2"})]
    seqs = eng.status()["detectors"]["CtrRegression"]["sequences"]
    assert {s["version"]: s["baseline"]["source"] for s in seqs} == {"1": "own first items", "2": "previous version 1"}


def test_event_mix_and_data_quality_from_bytes(reference):
    eng = engine(reference, event_mix={"min_samples": 200, "min_reference_windows": 2, "fields": ["event_type", "device"]})
    rng = np.random.default_rng(6)
    fired = []
    for w in range(8):
        p = [0.7, 0.3] if w < 4 else [0.3, 0.7]
        for i in range(1000):
            e = events_pb2.UserEvent(event_id="e", user_id="u", timestamp_ms=T0 + w * 60_000 + i * 50,
                                     event_type=events_pb2.VIEW if rng.random() < 0.7 else events_pb2.CLICK,
                                     context={"device": "mobile" if rng.random() < p[0] else "desktop"})
            eng.observe_event_bytes(e.SerializeToString())
        # ingest: 2 instances; one starts rejecting 20% in window 5
        for j in range(12):
            ts = T0 + w * 60_000 + j * 5000 + 10
            for inst in ("i0", "i1"):
                n = (w * 12 + j + 1) * 1000
                rej = (w * 12 + j + 1) * (200 if inst == "i1" and w >= 5 else 1)
                for name, v in (("received_total", n), ("rejected_total", rej), ("duplicates_total", 0),
                                ("missing_field_rate", 0.0)):
                    eng.observe_metric_bytes(metric_event("ingest", inst, name, v, timestamp_ms=ts).SerializeToString())
        fired += eng.tick(T0 + (w + 1) * 60_000 + 3000)
    names = [(a.name, a.labels) for a in fired]
    assert ("EventMixDrift", {"field": "device"}) in names
    assert ("EventMixDrift", {"field": "event_type"}) not in names
    assert ("DataQuality", {"service": "ingest", "check": "reject_rate"}) in names
    assert len(names) == 2


def test_a_backlog_replayed_after_a_restart_is_windowed_by_event_time(reference):
    # an hour-old stream replayed fast: the clock (now) is far ahead of the events
    eng = engine(reference)
    rng = np.random.default_rng(7)
    wall = T0 + 3_600_000
    alerts = []
    for k in range(12 * 8):
        base = T0 + k * 5000
        for j, inst in enumerate(("r0", "r1")):
            x = rng.normal(0.5 if k >= 12 * 4 else 0.0, 1, 300)
            eng.observe_metric_bytes(feature_event(base + 100 * (j + 1), inst, "f1", x))
        wall += 200   # 25x faster than real time
        alerts += eng.tick(wall)
    st = eng.status()
    assert st["late"] == 0
    assert [(a.name, a.status) for a in alerts] == [("FeatureDrift", "firing")]
    (key,) = st["detectors"]["FeatureDrift"]["keys"]
    assert key["last"]["samples"] == 7200   # whole windows, not the parts that had arrived by a tick
    # the stream then stops: after catchup_s of ticks without progress the last windows close on the clock
    for _ in range(70):
        wall += 1000
        eng.tick(wall)
    assert eng.status()["open_windows"] == 0


def test_ctr_sequences_survive_a_backlog_and_expire_on_the_clock(reference):
    eng = engine(reference, ctr_regression={"baseline_items": 1000, "baseline_min_items": 500})
    r = events_pb2.Reward(model_name="m", model_version="1", variant="production", impression_ts_ms=T0)
    for i in range(2000):
        r.impression_ts_ms = T0 + i
        eng.observe_reward(r)
    now = T0 + 10 * 3_600_000          # ten hours later
    eng.tick(now)
    assert ("m", "1") in eng.ctr.keys   # event time is old, but it just got items
    eng.tick(now + 901_000)
    assert ("m", "1") not in eng.ctr.keys


def test_the_serving_reference_is_the_versions_first_windows_not_its_training_rows(reference):
    """A version whose shown items sit 1 sigma off its training rows from the start: against the
    training reference every window breaches; against its first serving windows none does, until
    its inputs move from there."""
    shifted = lambda w: 1.0 if w < 8 else 1.6  # noqa: E731  (moves by 0.6 sigma at window 8)
    training = run_drift(engine(reference, feature_drift={"reference": "training"}), np.random.default_rng(5), 4,
                         shifted)
    assert [(w, a.status) for w, a in training] == [(1, "firing")]  # window 0 breaches already
    eng = engine(reference)
    alerts = run_drift(eng, np.random.default_rng(5), 11, shifted)
    assert [(w, a.status, a.labels["feature"]) for w, a in alerts] == [(9, "firing", "f1")]
    keys = {k["labels"]["feature"]: k for k in eng.status()["detectors"]["FeatureDrift"]["keys"]}
    assert keys["f2"]["last"]["breach"] is False
    first = engine(reference)
    run_drift(first, np.random.default_rng(5), 2, shifted)
    keys = first.status()["detectors"]["FeatureDrift"]["keys"]
    assert all(k["last"]["breach"] is None and "serving reference: " in k["last"]["reason"] for k in keys)


def test_a_retired_versions_serving_reference_is_forgotten_after_serving_ttl_s(reference, tmp_path):
    """Version 1 serves 4 windows (its serving reference complete and saved), then version 2 alone:
    ``serving_ttl_s`` (5 windows) after version 1's last window its reference is gone, from memory
    and from the saved file; version 1 serving again builds a new one."""
    saved = tmp_path / "serving_references.json"
    eng = engine(reference, serving_path=saved, feature_drift={"serving_ttl_s": 300.0})
    rng = np.random.default_rng(8)

    def serve(version, windows, start):
        for k in range(start * 12, (start + windows) * 12):
            base = T0 + k * 5000
            for f in ("f1", "f2"):
                eng.observe_metric_bytes(feature_event(base + 100, "r0", f, rng.normal(0, 1, 600), version=version))
            for now in range(base, base + 5000, 1000):
                eng.tick(now)

    def saved_versions():
        return sorted({row[1] for row in json.loads(saved.read_text())["FeatureDrift"]})

    serve("1", 4, 0)
    assert saved_versions() == ["1"]
    serve("2", 6, 4)   # version 1's last window ended at 4 min; at 9 min + lateness it is 5 min old
    assert saved_versions() == ["2"] and {k[1] for k in eng.feature.serving} == {"2"}
    serve("1", 3, 10)
    # windows 10 and 11 closed: a new reference, 2 of its 3 windows (the old one had 3)
    assert {k: v[1] for k, v in eng.feature.serving.items() if k[1] == "1"} == {("m", "1", "f1"): 2, ("m", "1", "f2"): 2}
    # a file from before the last window's end was kept: its rows count as used at the next prune
    eng2 = engine(reference, serving_path=saved, feature_drift={"serving_ttl_s": 300.0})
    rows = json.loads(saved.read_text())["FeatureDrift"]
    eng2.feature.load_serving_references([r[:4] for r in rows])
    assert eng2.feature.prune_serving(T0) == 0 and eng2.feature.prune_serving(T0 + 300_001) == len(rows)
