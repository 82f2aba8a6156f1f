"""The detectors and the alert tracker (services.monitor.detectors), fed directly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.monitor import detectors as D
from services.monitor.config import BurnConfig, CanaryConfig, Common, CusumConfig, EventMixConfig

L = D.labels_of(model="m", version="1")


def verdict(breach, value=1.0):
    return D.Verdict("X", L, breach, value, 0.5, "stat", 0)


def test_an_alert_needs_for_windows_consecutive_breaches_fires_once_and_resolves_once():
    t = D.Tracker("X", Common(for_windows=2, resolve_windows=2), "mon-1")
    seq = [True, False, True, None, True, True, True, False, True, False, False, False, True]
    out = [(i, a) for i, b in enumerate(seq) if (a := t.apply(verdict(b), 1000 + i)) is not None]
    # breach, clean (streak reset), breach, no verdict (streak kept), breach -> fires at index 4
    assert [(i, a.status) for i, a in out] == [(4, "firing"), (10, "resolved"), ]
    fired, resolved = out[0][1], out[1][1]
    assert fired.fingerprint == resolved.fingerprint and fired.labels == {"model": "m", "version": "1"}
    assert fired.generator == "mon-1" and fired.starts_ms == 1004 and resolved.ends_ms == 1010
    assert t.fired == 1 and t.resolved == 1 and not t.firing(L)


def test_a_silent_key_expires_and_its_firing_alert_resolves():
    t = D.Tracker("X", Common(for_windows=1, resolve_windows=1))
    assert t.apply(verdict(True), 1000).firing
    assert t.expire(5000, 10_000) == []
    (a,) = t.expire(20_000, 10_000)
    assert a.status == "resolved" and "no data" in a.summary and t.keys == {}


def _drift(window_rows, shift_sigma, rng, ref_counts, bounds):
    x = rng.normal(shift_sigma, 1.0, window_rows)
    return list(np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds) + 1))


@pytest.fixture
def reference():
    rng = np.random.default_rng(1)
    bounds = list(np.linspace(-3, 3, 11)[1:])
    x = np.clip(rng.normal(0, 1, 50_000), -3, 3)
    counts = np.bincount(np.minimum(np.searchsorted(bounds, x, side="left"), 9), minlength=10)
    return {"mean": 0.0, "std": 1.0, "min": -3.0, "max": 3.0, "histogram": {"bounds": bounds, "counts": list(counts)}}


def test_histogram_drift_aggregates_instances_and_needs_min_samples(reference):
    from services.monitor.config import DriftConfig

    rng = np.random.default_rng(2)
    bounds = reference["histogram"]["bounds"]
    d = D.HistogramDrift("FeatureDrift", DriftConfig(window_s=60, min_samples=500, reference="training"), 0,
                         lambda k: reference, "feature")
    key = ("m", "1", "f")
    # window 1: two instances of 300 rows each (neither alone has min_samples); window 2: 200 rows
    for _ in range(2):
        d.add(key, 10_000, _drift(300, 0.0, rng, None, bounds), bounds)
    d.add(key, 70_000, _drift(200, 0.0, rng, None, bounds), bounds)
    d.add(key, 130_000, _drift(3000, 0.5, rng, None, bounds), bounds)
    v1, v2, v3 = d.close(200_000)
    assert v1.samples == 600 and v1.breach is False and v1.details["psi"] < 0.1
    assert v1.labels == (("model", "m"), ("version", "1"), ("feature", "f"))
    assert v2.breach is None and "min_samples" in v2.reason
    assert v3.breach is True and v3.details["wasserstein_sigma"] == pytest.approx(0.5, abs=0.1)
    # a late observation for a closed window is counted, not added
    d.add(key, 10_000, _drift(300, 0.0, rng, None, bounds), bounds)
    assert d.late == 1 and d.windows == {}


def test_histogram_drift_without_a_reference_or_on_other_bounds_gives_no_verdict(reference):
    from services.monitor.config import DriftConfig

    d = D.HistogramDrift("ScoreDrift", DriftConfig(min_samples=1, reference="training"), 0, lambda k: None, "variant")
    d.add(("m", "1", "production"), 1, [5] * 11, reference["histogram"]["bounds"])
    (v,) = d.close(10**9)
    assert v.breach is None and "reference" in v.reason
    d = D.HistogramDrift("ScoreDrift", DriftConfig(min_samples=1, reference="training"), 0, lambda k: reference, "variant")
    d.add(("m", "1", "production"), 1, [5] * 6, [1, 2, 3, 4, 5])
    (v,) = d.close(10**9)
    assert v.breach is None and "bounds" in v.reason


def test_event_mix_reference_is_frozen_while_breaching():
    firing = set()
    d = D.EventMix(EventMixConfig(window_s=60, min_samples=100, fields=("event_type",), reference_windows=5,
                                  min_reference_windows=2), 0, lambda labels: labels in firing)
    rng = np.random.default_rng(3)
    verdicts = []
    for w in range(8):
        p = [0.7, 0.2, 0.1] if w < 4 else [0.4, 0.4, 0.2]
        acc = d.window(w * 60_000 + 5)
        for c in rng.choice(["VIEW", "CLICK", "PURCHASE"], 2000, p=p):
            acc["event_type"][c] = acc["event_type"].get(c, 0) + 1
        verdicts += d.close((w + 1) * 60_000)
    assert [v.breach for v in verdicts] == [None, None, False, False, True, True, True, True]
    assert len(d.reference["event_type"]) == 4   # the changed windows never entered the reference


def _cusum(**kw):
    return D.CusumDetector("CtrRegression", CusumConfig(**{"baseline_items": 50_000, "baseline_min_items": 20_000,
                                                           **kw}), "version")


def _feed(det, version, p, n, rng, t0=1):
    for i, c in enumerate((rng.random(n) < p).tolist()):
        det.observe("m", version, c, t0 + i)
    return det.take()


def test_cusum_on_a_new_version_uses_the_previous_versions_ctr_and_catches_a_20_percent_drop():
    rng = np.random.default_rng(4)
    det = _cusum()
    assert not any(v.breach for v in _feed(det, "1", 0.03, 80_000, rng))
    vs = _feed(det, "2", 0.024, 40_000, rng)
    assert vs[0].details["baseline"]["source"] == "previous version 1"
    first = next(i for i, v in enumerate(vs) if v.breach)
    assert (first + 1) * det.cfg.window_items <= 40_000
    assert vs[first].statistic == "cusum_llr" and vs[first].value >= det.cfg.cusum_h
    assert vs[first].labels == (("model", "m"), ("version", "2"))
    assert 0.1 < vs[first].details["relative_drop"] < 0.5 and vs[first].details["tested_items"] <= 40_000


def test_cusum_uses_its_own_first_items_without_a_previous_version_and_stays_quiet_when_stationary():
    rng = np.random.default_rng(5)
    det = _cusum()
    vs = _feed(det, "1", 0.03, 300_000, rng)
    assert vs and all(v.details["baseline"]["source"] == "own first items" for v in vs)
    assert not any(v.breach for v in vs)
    assert len(vs) == (300_000 - 50_000) // det.cfg.window_items


def test_cusum_recovers_below_its_threshold_after_the_rate_returns():
    rng = np.random.default_rng(6)
    det = _cusum()
    _feed(det, "1", 0.03, 60_000, rng)
    bad = _feed(det, "1", 0.015, 30_000, rng)
    good = _feed(det, "1", 0.03, 120_000, rng)
    assert any(v.breach for v in bad) and good[-1].breach is False
    assert det.keys[("m", "1")].s <= 2 * det.cfg.cusum_h


def test_canary_against_production_on_the_same_windows():
    rng = np.random.default_rng(7)
    d = D.Canary(CanaryConfig(window_s=10, min_items=2000, min_effect=0.2, z=3.5), 0)
    out = []
    for w in range(12):
        for i in range(4000):
            ts = w * 10_000 + i
            canary = i % 4 == 0
            d.observe("m", "2" if canary else "1", canary, bool(rng.random() < (0.015 if canary else 0.03)), ts)
        out += d.close((w + 1) * 10_000)
    assert out[0].breach is None   # 1,000 canary items < min_items
    assert out[-1].breach is True and out[-1].details["relative_drop"] > 0.3
    assert out[-1].labels == (("model", "m"), ("version", "2"))


def test_burn_rate_needs_both_windows():
    cfg = BurnConfig(window_s=5, short_window_s=10, long_window_s=20, objective=0.99, burn_factor=2.0, min_samples=50)
    d = D.BurnRate("LatencySLOBurn", cfg, 0)
    out = []
    bad_share = [0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.0, 0.0]
    for k, b in enumerate(bad_share):
        d.add(("inference", "Recommend"), k * 5000 + 1, 1000 * b, 1000)
        out += d.close((k + 1) * 5000)
    # step 4: short 5% (burn 5), long 2.5% (burn 2.5) -> breach; step 6: short 5%, long 5%; step 7: short 0
    assert [v.breach for v in out] == [False, False, False, False, True, True, True, False]
    assert out[4].details["burn_rate_long"] == pytest.approx(2.5)
    # a gap (no events for a step) counts as an empty step, not as a missing one
    d.add(("inference", "Recommend"), 100_000 + 1, 10, 10)
    (v,) = d.close(105_000)
    assert v.breach is None and v.samples == 10


def test_config_dataclasses_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Common().for_windows = 3
