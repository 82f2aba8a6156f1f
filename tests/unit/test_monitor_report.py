"""`recpilot report drift` from synthetic histograms (no Kafka) and `recpilot monitor status`
formatting on a /status document shaped as the monitor serves it."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from recpilot import cli
from recpilot.errors import Unavailable
from recpilot.metricevents import metric_event, summary
from services.monitor import commands, report

BOUNDS = [float(b) for b in np.linspace(-2.0, 2.0, 11)]


def counts_of(values: np.ndarray) -> list[int]:
    """As inference counts them: the first bucket whose bound >= v, overflow last."""
    idx = np.searchsorted(BOUNDS, values, side="left")
    return np.bincount(idx, minlength=len(BOUNDS) + 1).tolist()


def reference(rng) -> dict:
    ref = {}
    for name in ("price", "item_ctr", "score"):
        v = rng.normal(0.0, 0.5, 20_000)
        c = counts_of(v)
        ref[name] = {"mean": 0.0, "std": 0.5, "min": -2.0, "max": 2.0,
                     "histogram": {"bounds": BOUNDS, "counts": c[: len(BOUNDS)]}}   # model.json: one per bound
    return ref


def events(rng, model="ranker", version="2", shift=0.0, n_per=400, intervals=3, instances=("a", "b"), t0=10_000):
    out = []
    for i in range(intervals):
        for inst in instances:
            for name, s in (("price", shift), ("item_ctr", 0.0)):
                v = rng.normal(s, 0.5, n_per)
                out.append(metric_event("inference", inst, "feature", float(v.mean()),
                                        {"feature": name, "model": model, "version": version},
                                        timestamp_ms=t0 + i * 5000,
                                        summary=summary(len(v), v.sum(), v.min(), v.max(), bucket_bounds=BOUNDS,
                                                        bucket_counts=counts_of(v))))
            v = rng.normal(0.0, 0.5, n_per)
            out.append(metric_event("inference", inst, "score", float(v.mean()),
                                    {"model": model, "version": version, "variant": "production"},
                                    timestamp_ms=t0 + i * 5000,
                                    summary=summary(len(v), v.sum(), v.min(), v.max(), bucket_bounds=BOUNDS,
                                                    bucket_counts=counts_of(v))))
    return out


def test_aggregate_sums_instances_and_intervals_and_skips_others():
    rng = np.random.default_rng(1)
    ref = reference(rng)
    evs = events(rng) + events(rng, version="1") + events(rng, model="other")
    odd = metric_event("inference", "a", "feature", 0.0, {"feature": "price", "model": "ranker", "version": "2"},
                       timestamp_ms=20_000, summary=summary(3, 0, 0, 0, bucket_bounds=[0.0, 1.0], bucket_counts=[1, 1, 1]))
    early = events(rng, t0=1_000, intervals=1)
    cur = report.aggregate(evs + [odd] + early, "ranker", "2", ref, since_ms=5_000)
    assert cur.histograms["price"].n == 400 * 2 * 3 and cur.histograms["price"].events == 6
    assert cur.histograms["score"].n == 2400 and len(cur.histograms["score"].counts) == len(BOUNDS) + 1
    assert cur.events == 18 and cur.skipped == 1
    assert cur.first_ms == 10_000 and cur.last_ms == 20_000


def test_compare_flags_the_shifted_feature_only():
    rng = np.random.default_rng(2)
    ref = reference(rng)
    cur = report.aggregate(events(rng, shift=0.5), "ranker", "2", ref)   # price shifted by one reference std
    rows = {r.feature: r for r in report.compare(ref, cur)}
    assert list(rows) == ["item_ctr", "price", "score"]
    assert rows["price"].verdict == "drift" and rows["price"].psi > 0.2 and 0.8 < rows["price"].wasserstein_sigma < 1.2
    assert set(rows["price"].breaches) == {"psi", "js", "wasserstein_sigma"}
    assert rows["item_ctr"].verdict == "no drift" and rows["item_ctr"].psi < 0.05
    assert rows["score"].verdict == "no drift"
    few = report.compare(ref, cur, min_samples=10_000)
    assert {r.verdict for r in few} == {"too few samples"}
    missing = report.compare({**ref, "other": ref["price"]}, cur)
    assert [r.verdict for r in missing if r.feature == "other"] == ["no data"]


def test_html_is_self_contained_with_a_picture_per_feature():
    rng = np.random.default_rng(3)
    ref = reference(rng)
    cur = report.aggregate(events(rng, shift=0.5), "ranker", "2", ref)
    rows = report.compare(ref, cur)
    page = report.render_html("ranker", "2", 15, rows, cur, generated_ms=0)
    assert page.startswith("<!DOCTYPE html>") and "Drift report: ranker version 2" in page
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) == 3
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Drift in 1 of 3: price" in page and "PSI &gt; 0.2" in page
    row = re.search(r"<tr><td><a href=\"#f-price\">price</a></td>(.*?)</tr>", page).group(1)
    assert 'class="breach"' in row and "drift (psi, js, wasserstein_sigma)" in row
    assert "1970-01-01 00:00:00 UTC" in page


STATUS = {
    "processed": 123456, "malformed": 3, "actions_enabled": True,
    "detectors": {
        "FeatureDrift": {"enabled": True, "threshold": 0.2, "statistic": "psi",
                         "keys": {"ranker/2/price": {"psi": 0.31, "streak": 2}, "ranker/2/item_ctr": {"psi": 0.01, "streak": 0}},
                         "firing": [{"name": "FeatureDrift", "labels": {"model": "ranker", "version": "2", "feature": "price"},
                                     "statistic": "psi", "value": 0.31, "threshold": 0.2, "starts_ms": 1_700_000_000_000}]},
        "ResourceSaturation": {"enabled": True, "firing": [], "hints": ["inference uses 0.2 of 4 cores: over-provisioned"]},
    },
    "channels": {"webhook": {"delivered": 4, "failures": 2, "dropped": 0, "queued": 1, "last_error": "connection refused",
                             "up": False},
                 "kafka": {"delivered": 5, "failures": 0, "dropped": 0, "queued": 0, "last_error": None, "up": True}},
    "actions": [{"action": "rollback", "model_name": "ranker", "version": "2", "outcome": "executed",
                 "alert_name": "CtrRegression", "detail": "rolled ranker back from 2 to 1", "command_id": "abc",
                 "timestamp_ms": 1_700_000_100_000}],
}


def test_status_summary_says_what_detectors_see_what_fired_and_what_was_done():
    text = commands.format_status(STATUS)
    assert "123456 events processed, 3 malformed" in text and "actions enabled" in text
    assert "FeatureDrift: statistic psi, threshold 0.2, 2 keys, 1 firing" in text
    assert "ranker/2/price: psi 0.31, streak 2" in text
    assert "FIRING FeatureDrift{feature=price,model=ranker,version=2} psi 0.31 > 0.2 since 2023-11-14T22:13:20Z" in text
    assert "hint: inference uses 0.2 of 4 cores" in text
    assert "firing alerts: 1" in text
    assert "webhook: DOWN, delivered 4, failures 2, queued 1, dropped 0; last error: connection refused" in text
    assert "rollback ranker/2: EXECUTED (alert CtrRegression) - rolled ranker back from 2 to 1 [command abc]" in text
    assert "actions DISABLED" in commands.format_status({**STATUS, "actions_enabled": False})
    bare = commands.format_status({})
    assert "(none reported)" in bare and "(none configured)" in bare and "actions: 0 recorded" in bare


def test_status_when_the_monitor_is_not_running(capsys, monkeypatch):
    from recpilot.stack import process

    monkeypatch.setattr(process, "http_get", lambda url, timeout: (0, "ConnectionRefusedError()"))
    with pytest.raises(Unavailable, match="the monitor is not running"):
        commands.fetch_status("http://127.0.0.1:9/status")
    rc = cli.main(["monitor", "status", "--url", "http://127.0.0.1:9/status"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "the monitor is not running (nothing answers at http://127.0.0.1:9/status" in err
    monkeypatch.setattr(process, "http_get", lambda url, timeout: (200, json.dumps(STATUS)))
    assert cli.main(["monitor", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    assert cli.main(["monitor", "status"]) == 0
    assert "firing alerts: 1" in capsys.readouterr().out


def test_status_url_from_settings(monkeypatch):
    from services.monitor.settings import MonitorSettings

    assert commands.status_url(MonitorSettings(http_port=9999, http_host="0.0.0.0")) == "http://127.0.0.1:9999/status"
    assert commands.status_url(MonitorSettings(http_port=1, http_host="10.0.0.5")) == "http://10.0.0.5:1/status"


def test_actions_cli_enable_disable_status(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RECPILOT_MONITOR_STATE_DIR", str(tmp_path / "mon"))
    assert cli.main(["monitor", "actions", "--status"]) == 0
    assert capsys.readouterr().out.strip() == "monitor actions enabled"
    assert cli.main(["monitor", "actions", "--disable", "--reason", "release freeze"]) == 0
    assert (tmp_path / "mon" / "actions-disabled.json").exists()
    capsys.readouterr()
    assert cli.main(["monitor", "actions"]) == 0
    out = capsys.readouterr().out
    assert "DISABLED at run time" in out and "release freeze" in out
    assert cli.main(["monitor", "actions", "--enable"]) == 0
    assert not (tmp_path / "mon" / "actions-disabled.json").exists()
    monkeypatch.setenv("RECPILOT_MONITOR_ACTIONS_ENABLED", "false")
    capsys.readouterr()
    assert cli.main(["monitor", "actions", "--status"]) == 0
    assert "RECPILOT_MONITOR_ACTIONS_ENABLED=false" in capsys.readouterr().out


def test_no_usable_reference_is_a_clear_error(tmp_path):
    from recpilot.errors import FailedPrecondition
    from recpilot.models.repository import ModelRepository
    from tests.support.repository import tiny_writer

    repo = ModelRepository(tmp_path / "models")
    repo.create_version("ranker", tiny_writer(reference={}))
    bad = {"histogram": {"bounds": [0.0, 0.5, 1.0], "counts": [3, 4]}}   # counts fit no bounds
    repo.create_version("ranker", tiny_writer(reference={"item_ctr": bad}))
    for version in ("1", "2"):
        with pytest.raises(FailedPrecondition, match=f"ranker/{version} has no drift reference"):
            report.drift_report(None, repo, "ranker", version)   # decided before any Kafka read
    assert report.compare({"item_ctr": bad}, report.Current()) == []


def test_status_summary_of_a_real_engine_document():
    """The formatter on what the service serves: Engine.status()'s detectors, firing alerts and hints."""
    import numpy as np

    from recpilot.metricevents import metric_event, summary
    from recpilot.models.evaluate import distribution
    from services.monitor.config import load_config
    from services.monitor.engine import Engine

    rng = np.random.default_rng(0)
    ref = distribution(rng.normal(0, 1, 20_000))
    bounds = ref["histogram"]["bounds"]
    import dataclasses

    cfg = load_config()
    eng = Engine(dataclasses.replace(cfg, feature_drift=dataclasses.replace(cfg.feature_drift, reference="training")),
                 lambda m, v: {"f1": ref})
    t0 = 1_700_000_000_000
    for k in range(30):  # 2.5 minutes of 5 s intervals, shifted by 1 sigma after the first minute
        x = rng.normal(1.0 if k >= 12 else 0.0, 1, 400)
        counts = np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds) + 1)
        eng.observe_metric(metric_event("inference", "r0", "feature", float(x.mean()),
                                        {"model": "ranker", "version": "2", "feature": "f1"}, timestamp_ms=t0 + k * 5000,
                                        summary=summary(x.size, x.sum(), x.min(), x.max(), None, bounds, counts)))
        eng.tick(t0 + k * 5000 + 4000)
    st = eng.status()
    text = commands.format_status({"processed": st["processed"], "malformed": 0, "actions_enabled": True,
                                   "detectors": st["detectors"], "hints": st["hints"], "channels": {}, "actions": []})
    assert "FeatureDrift: 1 keys, 1 firing" in text
    assert "feature=f1,model=ranker,version=2: " in text and "breaching; streaks breach" in text
    assert "FIRING FeatureDrift{feature=f1,model=ranker,version=2}" in text and "firing alerts: 1" in text
