"""`recpilot bench monitor`: the monitor's engine (services.monitor.engine) in one process, fed the
messages the services publish, serialised as on the topics (bytes in, as the service reads them).

* **throughput**: metric events/s through ``Engine.observe_metric_bytes`` plus a ``tick`` every
  simulated second, on an interval mix as the services publish it: per inference replica every 5 s
  latency/requests/failures/fallbacks per method, served-score histograms per variant, one histogram
  per dense input (2,000 sampled rows, on the reference bounds) and the resource events; ingest's
  data-quality counters; the feature pipeline's freshness and lag; the reward joiner's counters.
  Also rewards/s and events.clean events/s through their ``observe_*_bytes``.
* **delays**: windows (or items, or seconds) from the onset of an injected change to the alert:
  a 0.5 sigma mean shift of one dense input (onset at a window start and in mid-window), a mix
  change of events.clean (event type and device), CTR 3.0% -> 2.4% on a newly promoted production
  version (items of the new version until CtrRegression fires; the baseline is the previous
  version's trailing CTR), and a p99 latency doubling (seconds from onset; replicas publish at
  random phases).
* **false alarms**: 1,000,000 stationary messages (metric events of 8 inference replicas, 2 ingest
  instances, the feature pipeline and the joiner, rewards with a canary and events.clean) through
  every detector; every alert counts.
* **peer**: Evidently's ``DataDriftPreset`` on the same windows (the raw sampled rows the histograms
  were made of, against the reference rows): its detections per window and its seconds per window.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from bench.machine import cpu_probe, machine
from recpilot.featurespec import DENSE_FEATURES
from recpilot.metricevents import metric_event, summary
from recpilot.pb import events_pb2

LAT_BOUNDS = [1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000]
INTERVAL_MS = 5_000
T0 = 1_800_000_000_000          # a multiple of every window length used here
DRIFT_FEATURE = "item_ctr"
MODEL = "ranker"


def _distribution(values: np.ndarray) -> dict:
    from recpilot.models.evaluate import distribution

    return distribution(values)


def _hist(x: np.ndarray, bounds) -> np.ndarray:
    return np.bincount(np.searchsorted(np.asarray(bounds), x, side="left"), minlength=len(bounds) + 1)


class World:
    """The synthetic platform: a model version's reference (as model.json has it) and generators of
    the services' interval messages."""

    def __init__(self, seed: int = 0, ref_rows: int = 20_000) -> None:
        self.rng = np.random.default_rng(seed)
        # dense inputs: each feature its own location/scale (normal); the score a logistic of a mix
        self.loc = self.rng.uniform(-1, 3, len(DENSE_FEATURES))
        self.scale = self.rng.uniform(0.5, 2.0, len(DENSE_FEATURES))
        self.ref_rows = self.rows(ref_rows)
        self.ref_scores = self.scores(self.ref_rows)
        self.reference = {f: _distribution(self.ref_rows[:, j]) for j, f in enumerate(DENSE_FEATURES)}
        self.reference["score"] = _distribution(self.ref_scores)

    def rows(self, n: int, shift_sigma: float = 0.0, feature: str = DRIFT_FEATURE) -> np.ndarray:
        m = self.rng.normal(self.loc, self.scale, (n, len(DENSE_FEATURES)))
        if shift_sigma:
            j = DENSE_FEATURES.index(feature)
            m[:, j] += shift_sigma * self.scale[j]
        return m

    def scores(self, rows: np.ndarray) -> np.ndarray:
        z = (rows - self.loc) / self.scale
        return 1 / (1 + np.exp(-(z[:, :4].sum(1) * 0.3 - 3.4)))

    def references(self, model: str, version: str) -> dict | None:
        return self.reference if model == MODEL else None

    # -- one interval of each service -----------------------------------------------------------
    def inference(self, ts: int, instance: str, rows: np.ndarray, *, rps: float = 200.0,
                  latency_scale: float = 1.0, versions=(("1", "production"),)) -> list:
        rng, out = self.rng, []
        for method, share in (("Recommend", 0.8), ("Search", 0.2)):
            n = max(1, int(rps * share * INTERVAL_MS / 1000))
            lat = rng.lognormal(np.log(20.0), 0.5, n) * latency_scale
            q = {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}
            out.append(metric_event("inference", instance, "latency_ms", float(lat.mean()), {"method": method},
                                    timestamp_ms=ts, summary=summary(n, lat.sum(), lat.min(), lat.max(), q,
                                                                     LAT_BOUNDS, _hist(lat, LAT_BOUNDS))))
            out.append(metric_event("inference", instance, "requests", n, {"method": method}, timestamp_ms=ts))
            out.append(metric_event("inference", instance, "fallbacks", int(rng.poisson(0.5)),
                                    {"method": method, "reason": "features_unavailable"}, timestamp_ms=ts))
        out.append(metric_event("inference", instance, "failures", 0, {"method": "Recommend", "code": "UNAVAILABLE"},
                                timestamp_ms=ts))
        scores = self.scores(rows)
        sb = self.reference["score"]["histogram"]["bounds"]
        for version, variant in versions:
            out.append(metric_event("inference", instance, "score", float(scores.mean()),
                                    {"model": MODEL, "version": version, "variant": variant}, timestamp_ms=ts,
                                    summary=summary(len(scores), scores.sum(), scores.min(), scores.max(), None,
                                                    sb, _hist(scores, sb))))
        version = versions[0][0]
        for j, f in enumerate(DENSE_FEATURES):
            x = rows[:, j]
            b = self.reference[f]["histogram"]["bounds"]
            out.append(metric_event("inference", instance, "feature", float(x.mean()),
                                    {"feature": f, "model": MODEL, "version": version}, timestamp_ms=ts,
                                    summary=summary(len(x), x.sum(), x.min(), x.max(), None, b, _hist(x, b))))
        out += self.resources("inference", instance, ts)
        return out

    def resources(self, service: str, instance: str, ts: int) -> list:
        return [metric_event(service, instance, "cpu_cores", float(self.rng.uniform(0.4, 0.7)), timestamp_ms=ts),
                metric_event(service, instance, "memory_rss_bytes", 8e8, timestamp_ms=ts),
                metric_event(service, instance, "cpu_limit_cores", 2.0, timestamp_ms=ts)]

    def ingest(self, ts: int, instance: str, state: dict) -> list:
        n = int(self.rng.poisson(5000))
        rej, dup = int(self.rng.binomial(n, 0.002)), int(self.rng.binomial(n, 0.004))
        st = state.setdefault(instance, [0, 0, 0])
        st[0] += n
        st[1] += rej
        st[2] += dup
        ev = lambda name, v, labels=None: metric_event("ingest", instance, name, v, labels, timestamp_ms=ts)  # noqa: E731
        return [ev("received_total", st[0]), ev("accepted_total", st[0] - st[1] - st[2]), ev("duplicates_total", st[2]),
                ev("rejected_total", st[1]), ev("missing_field_rate", 0.001), ev("reject_rate", rej / n),
                ev("duplicate_rate", dup / n), ev("events_per_s", n / 5), ev("dedup_evictions_total", 0),
                ev("rejected_total", st[1], {"reason": "invalid"}), ev("consumer_lag", int(self.rng.poisson(300))),
                ev("dedup_entries", 100_000), *self.resources("ingest", instance, ts)]

    def features(self, ts: int, state: dict) -> list:
        st = state.setdefault("features", [0, 0])
        st[0] += int(self.rng.poisson(5000))
        st[1] += int(self.rng.binomial(5000, 0.0005))
        fr = self.rng.lognormal(np.log(300), 0.3, 200)
        labels = {"topic": "events.clean"}
        return [metric_event("features", "f0", "events_applied_total", st[0], labels, timestamp_ms=ts),
                metric_event("features", "f0", "events_invalid_total", st[1], labels, timestamp_ms=ts),
                metric_event("features", "f0", "consumer_lag_messages", int(self.rng.poisson(200)), labels,
                             timestamp_ms=ts),
                metric_event("features", "f0", "freshness_ms", float(np.percentile(fr, 99)), labels, timestamp_ms=ts,
                             summary=summary(len(fr), fr.sum(), fr.min(), fr.max(),
                                             {"p50": float(np.median(fr)), "p99": float(np.percentile(fr, 99))})),
                *self.resources("features", "f0", ts)]

    def rl_feedback(self, ts: int, state: dict) -> list:
        st = state.setdefault("rl", [0, 0])
        st[0] += 100
        st[1] += 1000
        ev = lambda name, v, labels=None: metric_event("rl_feedback", "j0", name, v, labels, timestamp_ms=ts)  # noqa: E731
        return [ev("impressions_total", st[0]), ev("rewards_total", st[1]), ev("rewards_with_outcome_total", st[1] // 30),
                *[ev("outcomes_total", st[0] // 3, {"fate": f}) for f in ("joined", "duplicate", "late", "unmatched",
                                                                         "not_shown")],
                ev("reward_latency_ms", 1500.0, None), *self.resources("rl_feedback", "j0", ts)]


def _engine(world: World, **overrides):
    import dataclasses

    from services.monitor.config import load_config
    from services.monitor.engine import Engine

    cfg = load_config()
    for section, values in overrides.items():
        cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
    return Engine(cfg, world.references, "bench")


# -- throughput ------------------------------------------------------------------------------------


def throughput(seconds_simulated: int, replicas: int, seed: int) -> dict:
    world = World(seed)
    state: dict = {}
    msgs: list[tuple[int, bytes]] = []
    phases = {f"r{i}": int(world.rng.integers(0, INTERVAL_MS)) for i in range(replicas)}
    for k in range(seconds_simulated * 1000 // INTERVAL_MS):
        base = T0 + k * INTERVAL_MS
        for inst, ph in phases.items():
            msgs += [(base + ph, e.SerializeToString()) for e in world.inference(base + ph, inst, world.rows(2000))]
        for inst in ("i0", "i1"):
            msgs += [(base, e.SerializeToString()) for e in world.ingest(base, inst, state)]
        msgs += [(base, e.SerializeToString()) for e in world.features(base, state)]
        msgs += [(base, e.SerializeToString()) for e in world.rl_feedback(base, state)]
    msgs.sort(key=lambda m: m[0])
    eng = _engine(world)
    # as the service runs it: the engine ticks once per (wall) second, with the stream's event time
    next_tick = time.perf_counter() + 1.0
    t = time.perf_counter()
    cpu = time.process_time()
    ticks = 0
    for ts, b in msgs:
        eng.observe_metric_bytes(b)
        if time.perf_counter() >= next_tick:
            eng.tick(ts)
            ticks += 1
            next_tick += 1.0
    eng.tick(msgs[-1][0] + 120_000)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    kinds = dict(eng.inputs)
    # rewards and events.clean, each on its own
    rewards = [_reward(T0 + i, "1", "production", "p1", i % 33 == 0).SerializeToString() for i in range(100_000)]
    e2 = _engine(world)
    t2 = time.perf_counter()
    for b in rewards:
        e2.observe_reward_bytes(b)
    e2.tick(T0 + 200_000)
    rewards_s = len(rewards) / (time.perf_counter() - t2)
    events = [_event(T0 + i * 10, i % 4, "mobile" if i % 3 else "desktop").SerializeToString() for i in range(100_000)]
    t3 = time.perf_counter()
    for b in events:
        e2.observe_event_bytes(b)
    e2.tick(T0 + 2_000_000)
    events_s = len(events) / (time.perf_counter() - t3)
    return {"metric_events": len(msgs), "simulated_s": seconds_simulated, "inference_replicas": replicas,
            "metric_events_per_s": round(len(msgs) / wall), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "ticks": ticks + 1, "mix": kinds, "rewards_per_s": round(rewards_s), "clean_events_per_s": round(events_s),
            "malformed": eng.malformed, "alerts": len(eng.firing())}


def _reward(ts: int, version: str, variant: str, policy: str, clicked: bool, purchased: bool = False):
    return events_pb2.Reward(request_id="r", user_id="u", item_id="i", model_name=MODEL, model_version=version,
                             variant=variant, policy_version=policy, policy_variant="production", clicked=clicked,
                             purchased=purchased, impression_ts_ms=ts)


def _event(ts: int, etype: int, device: str):
    types = (events_pb2.VIEW, events_pb2.CLICK, events_pb2.ADD_TO_CART, events_pb2.PURCHASE)
    return events_pb2.UserEvent(event_id="e", user_id="u", event_type=types[etype], item_id="i", timestamp_ms=ts,
                                context={"device": device, "page": "home"})


# -- detection delays -------------------------------------------------------------------------------


def _evidently(ref, cur, columns, cat: bool = False) -> tuple[dict, float]:
    import pandas as pd

    _pandas3_shim()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    r = pd.DataFrame(ref, columns=columns)
    c = pd.DataFrame(cur, columns=columns)
    t = time.perf_counter()
    if cat:
        dd = DataDefinition(categorical_columns=list(columns))
        r, c = Dataset.from_pandas(r, data_definition=dd), Dataset.from_pandas(c, data_definition=dd)
    snap = Report([DataDriftPreset()]).run(c, r)
    dt = time.perf_counter() - t
    out = {"drifted_columns": [], "dataset_drift_share": None}
    for m in snap.dict()["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith("ValueDrift"):
            # distance methods (the defaults above 1,000 rows) drift at >= threshold, p-value tests below it
            p_value = "p_value" in cfg.get("method", "").lower()
            if (m["value"] < cfg["threshold"]) if p_value else (m["value"] >= cfg["threshold"]):
                out["drifted_columns"].append(cfg["column"])
        elif cfg["type"].endswith("DriftedColumnsCount"):
            out["dataset_drift_share"] = m["value"]["share"]
            out["dataset_drift"] = m["value"]["share"] >= cfg["drift_share"]
    return out, dt


def _pandas3_shim() -> None:
    """evidently 0.7 imports pandas.core.dtypes.common.infer_dtype_from_object, which pandas 3 removed."""
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        common.infer_dtype_from_object = lambda d: d if isinstance(d, type) else np.dtype(d).type


def feature_drift(seed: int, replicas: int, rows: int, pre_windows: int, onset_offset_s: float, peer: bool,
                  max_windows: int = 6) -> dict:
    """Windows until FeatureDrift fires for a 0.5 sigma shift of one input (0.5 sigma over the
    whole window); the Evidently peer on the same windows' rows."""
    world = World(seed)
    eng = _engine(world)
    win = int(eng.config.feature_drift.window_s * 1000)
    onset = T0 + pre_windows * win + int(onset_offset_s * 1000)
    end = onset + max_windows * win
    phases = {f"r{i}": int(world.rng.integers(1, INTERVAL_MS)) for i in range(replicas)}
    window_rows: dict[int, list] = {}
    fired_ms = None
    ev_rows = []
    k = 0
    while True:
        base = T0 + k * INTERVAL_MS
        if base > end:
            break
        for inst, ph in sorted(phases.items(), key=lambda x: x[1]):
            ts = base + ph
            # this interval's rows: those from after the onset shifted
            share = min(1.0, max(0.0, (ts - onset) / INTERVAL_MS))
            n_new = int(round(rows * share))
            m = np.concatenate([world.rows(rows - n_new), world.rows(n_new, 0.5)]) if n_new else world.rows(rows)
            window_rows.setdefault((ts - 1) // win, []).append(m)
            for e in world.inference(ts, inst, m):
                eng.observe_metric_bytes(e.SerializeToString())
        for now in range(base, base + INTERVAL_MS, 1000):
            for a in eng.tick(now):
                if a.name == "FeatureDrift" and a.firing and a.labels.get("feature") == DRIFT_FEATURE and fired_ms is None:
                    fired_ms = now
                elif a.firing:
                    ev_rows.append(("other", a.name, a.labels))
        k += 1
    out = {"onset_offset_s": onset_offset_s, "window_s": win / 1000,
           "windows_to_alert": None if fired_ms is None else round((fired_ms - onset) / win, 2),
           "seconds_to_alert": None if fired_ms is None else round((fired_ms - onset) / 1000, 1),
           "other_alerts": len(ev_rows), "rows_per_window": rows * replicas * win // INTERVAL_MS}
    st = eng.trackers["FeatureDrift"].status()
    for key in st["keys"]:
        if key["labels"].get("feature") == DRIFT_FEATURE and key["last"]:
            out["last_statistics"] = key["last"].get("details")
    if peer:
        per = []
        first = onset // win
        for w in sorted(window_rows):
            if w < first - 2 or w > first + 2:
                continue
            cur = np.concatenate(window_rows[w])
            res, dt = _evidently(world.ref_rows, cur, list(DENSE_FEATURES))
            per.append({"window": int(w - first), "shifted_share": round(float(np.clip(((w + 1) * win - onset) / win, 0, 1)), 2),
                        "drift_detected_on_feature": DRIFT_FEATURE in res["drifted_columns"],
                        "drifted_columns": len(res["drifted_columns"]), "dataset_drift": res.get("dataset_drift"),
                        "seconds": round(dt, 3)})
        out["evidently"] = per
    return out


def event_mix(seed: int, rate: float, pre_windows: int, peer: bool, max_windows: int = 6) -> dict:
    """Windows until EventMixDrift fires after the event mix changes at a window start."""
    from services.monitor import stats

    rng = np.random.default_rng(seed)
    world = World(seed, ref_rows=100)
    eng = _engine(world)
    win = int(eng.config.event_mix.window_s * 1000)
    before = ([0.70, 0.20, 0.07, 0.03], [0.6, 0.4])
    after = ([0.55, 0.30, 0.10, 0.05], [0.45, 0.55])
    onset = T0 + pre_windows * win
    n = int((pre_windows + max_windows) * win / 1000 * rate)
    ts = T0 + np.sort(rng.integers(0, (pre_windows + max_windows) * win, n))
    fired: dict[str, int] = {}
    rows_by_window: dict[int, list] = {}
    next_tick = T0 + 1000
    for t in ts.tolist():
        while t >= next_tick:
            for a in eng.tick(next_tick):
                if a.firing and a.name == "EventMixDrift":
                    fired.setdefault(a.labels["field"], next_tick)
            next_tick += 1000
        mix = after if t >= onset else before
        et = int(rng.choice(4, p=mix[0]))
        dev = "mobile" if rng.random() < mix[1][0] else "desktop"
        rows_by_window.setdefault(t // win, []).append((str(et), dev))
        eng.observe_event_bytes(_event(t, et, dev).SerializeToString())
    for k in range(10):
        for a in eng.tick(next_tick + k * 1000):
            if a.firing and a.name == "EventMixDrift":
                fired.setdefault(a.labels["field"], next_tick + k * 1000)
    js_et = stats.js_distance(np.array(before[0]), np.array(after[0]))
    js_dev = stats.js_distance(np.array(before[1]), np.array(after[1]))
    out = {"window_s": win / 1000, "events_per_window": int(rate * win / 1000),
           "change": {"event_type": [before[0], after[0], round(js_et, 4)], "device": [before[1], after[1], round(js_dev, 4)]},
           "windows_to_alert": {f: round((t - onset) / win, 2) for f, t in fired.items()}}
    if peer:
        per = []
        first = onset // win
        ref = [r for w in range(first - 3, first) for r in rows_by_window.get(w, [])]
        for w in range(first - 1, first + 2):
            res, dt = _evidently(ref, rows_by_window.get(w, []), ["event_type", "device"], cat=True)
            per.append({"window": int(w - first), "drifted_columns": res["drifted_columns"],
                        "dataset_drift": res.get("dataset_drift"), "seconds": round(dt, 3)})
        out["evidently"] = per
    return out


def ctr(seed: int, before_items: int, max_items: int, rate_per_s: float = 1000.0,
        p_before: float = 0.03, p_after: float = 0.024) -> dict:
    """Items of a newly promoted production version (CTR p_after) until CtrRegression fires; the
    previous version served at p_before for ``before_items``."""
    rng = np.random.default_rng(seed)
    world = World(seed, ref_rows=100)
    eng = _engine(world)
    spacing = 1000.0 / rate_per_s
    msgs = [_reward(0, "1", "production", "p1", False), _reward(0, "1", "production", "p1", True),
            _reward(0, "2", "production", "p1", False), _reward(0, "2", "production", "p1", True)]
    clicks_a = rng.random(before_items) < p_before
    clicks_b = rng.random(max_items) < p_after
    t = float(T0)
    next_tick = T0 + 1000
    fired = {}
    for phase, clicks in ((0, clicks_a), (1, clicks_b)):
        for i, c in enumerate(clicks.tolist()):
            t += spacing
            ts = int(t)
            if ts >= next_tick:
                for a in eng.tick(next_tick):
                    if a.firing:
                        fired.setdefault(a.name, (phase, i))
                next_tick += 1000
                if phase == 1 and all(fired.get(n, (0,))[0] == 1 for n in ("CtrRegression", "PolicyCtrRegression")):
                    break
            r = msgs[phase * 2 + int(c)]
            r.impression_ts_ms = ts
            eng.observe_reward(r)
        else:
            continue
        break
    for a in eng.tick(next_tick):
        if a.firing:
            fired.setdefault(a.name, (1, max_items))
    after = {k: v[1] for k, v in fired.items() if v[0] == 1}
    return {"items_to_alert": after.get("CtrRegression"), "policy_items_to_alert": after.get("PolicyCtrRegression"),
            "alerts_before_change": sorted(k for k, v in fired.items() if v[0] == 0)}


def ctr_stationary(seed: int, items: int, p: float = 0.03) -> dict:
    """``items`` shown items of one production version at a constant CTR through CtrRegression (its
    own first items the baseline): breaching windows and the largest CUSUM value."""
    from services.monitor.config import load_config
    from services.monitor.detectors import CusumDetector

    det = CusumDetector("CtrRegression", load_config().ctr_regression, "version")
    rng = np.random.default_rng(10_000 + seed)
    for i, c in enumerate((rng.random(items) < p).tolist()):
        det.observe(MODEL, "1", c, T0 + i)
    vs = det.take()
    return {"items": items, "breaching_windows": sum(1 for v in vs if v.breach),
            "max_cusum": round(max((v.value for v in vs), default=0.0), 2), "threshold": det.cfg.cusum_h}


def latency(seed: int, replicas: int, rps: float, pre_s: int, max_s: int = 90) -> dict:
    """Seconds from the onset of a latency doubling (every request twice as slow) to LatencySLOBurn."""
    world = World(seed, ref_rows=100)
    eng = _engine(world)
    rng = np.random.default_rng(seed)
    onset = T0 + pre_s * 1000 + int(rng.integers(0, INTERVAL_MS))
    phases = {f"r{i}": int(rng.integers(1, INTERVAL_MS)) for i in range(replicas)}
    fired = None
    old = world.rng.lognormal(np.log(20.0), 0.5, 200_000)
    for k in range((pre_s + max_s) * 1000 // INTERVAL_MS):
        base = T0 + k * INTERVAL_MS
        for inst, ph in phases.items():
            ts = base + ph
            share = min(1.0, max(0.0, (ts - onset) / INTERVAL_MS))
            # this interval's requests: the part after the onset twice as slow
            evs = world.inference(ts, inst, world.rows(50), rps=rps, latency_scale=1.0)
            if share > 0:
                slow = world.inference(ts, inst, world.rows(50), rps=rps, latency_scale=2.0)
                for e, s in zip(evs, slow):
                    if e.name == "latency_ms":
                        counts = np.array(e.summary.bucket_counts) * (1 - share) + np.array(s.summary.bucket_counts) * share
                        del e.summary.bucket_counts[:]
                        e.summary.bucket_counts.extend(int(round(c)) for c in counts)
            for e in evs:
                eng.observe_metric_bytes(e.SerializeToString())
        for now in range(base, base + INTERVAL_MS, 1000):
            for a in eng.tick(now):
                if a.firing and a.name == "LatencySLOBurn" and fired is None:
                    fired = now
                    method = a.labels["method"]
        if fired is not None:
            break
    thr = eng.config.latency_slo.threshold_ms
    return {"seconds_to_alert": None if fired is None else round((fired - onset) / 1000, 1),
            "method": method if fired else None, "threshold_ms": thr,
            "p99_before_ms": round(float(np.percentile(old, 99)), 1),
            "p99_after_ms": round(float(np.percentile(old * 2, 99)), 1),
            "bad_share_before": round(float((old > thr).mean()), 5),
            "bad_share_after": round(float((old * 2 > thr).mean()), 5)}


# -- false alarms ------------------------------------------------------------------------------------


def stationary(total: int, seed: int, peer_windows: int) -> dict:
    """``total`` messages of a stationary platform through every detector; every alert counted."""
    world = World(seed)
    eng = _engine(world)
    rng = np.random.default_rng(seed + 1)
    state: dict = {}
    replicas = 8
    phases = {f"r{i}": int(rng.integers(1, INTERVAL_MS)) for i in range(replicas)}
    rewards_per_s, events_per_s = 200, 80
    per_interval_rows = 1000
    counts = {"metric": 0, "reward": 0, "event": 0}
    alerts = []
    msgs_r = {(v, c): _reward(0, "1" if v == "production" else "2", v, "p1", c) for v in ("production", "canary")
              for c in (False, True)}
    types_p, dev_p = [0.70, 0.20, 0.07, 0.03], 0.6
    k = 0
    win_rows: dict[int, list] = {}
    t_start = time.perf_counter()
    while sum(counts.values()) < total:
        base = T0 + k * INTERVAL_MS
        for inst, ph in phases.items():
            m = world.rows(per_interval_rows)
            w = (base + ph - 1) // 60_000 - T0 // 60_000
            if 1 <= w <= peer_windows:
                win_rows.setdefault(w, []).append(m)
            for e in world.inference(base + ph, inst, m, versions=(("1", "production"), ("2", "canary"))):
                eng.observe_metric_bytes(e.SerializeToString())
                counts["metric"] += 1
        for e in [*world.ingest(base, "i0", state), *world.ingest(base, "i1", state), *world.features(base, state),
                  *world.rl_feedback(base, state)]:
            eng.observe_metric_bytes(e.SerializeToString())
            counts["metric"] += 1
        n_r = rewards_per_s * INTERVAL_MS // 1000
        rts = base + np.sort(rng.integers(0, INTERVAL_MS, n_r))
        canary = rng.random(n_r) < 0.1
        clicks = rng.random(n_r) < 0.03
        buys = rng.random(n_r) < 0.004
        for t, cv, c, p in zip(rts.tolist(), canary.tolist(), clicks.tolist(), buys.tolist()):
            r = msgs_r[("canary" if cv else "production", c)]
            r.impression_ts_ms = t
            r.purchased = p
            eng.observe_reward(r)
        counts["reward"] += n_r
        n_e = events_per_s * INTERVAL_MS // 1000
        ets = base + np.sort(rng.integers(0, INTERVAL_MS, n_e))
        et = rng.choice(4, n_e, p=types_p)
        dev = rng.random(n_e) < dev_p
        for t, a, d in zip(ets.tolist(), et.tolist(), dev.tolist()):
            eng.observe_event_bytes(_event(t, a, "mobile" if d else "desktop").SerializeToString())
        counts["event"] += n_e
        for now in range(base, base + INTERVAL_MS, 1000):
            alerts += eng.tick(now)
        k += 1
    alerts += eng.tick(T0 + k * INTERVAL_MS + 120_000)
    st = eng.status()
    verdicts = {name: sum(1 for key in d["keys"] if key["last"] and key["last"]["breach"] is not None)
                for name, d in st["detectors"].items()}
    out = {"messages": sum(counts.values()), **counts, "simulated_s": k * INTERVAL_MS // 1000,
           "alerts": [a.to_dict() for a in alerts], "alert_count": len(alerts),
           "keys_with_verdicts": verdicts, "malformed": eng.malformed, "late": st["late"],
           "wall_s": round(time.perf_counter() - t_start, 1)}
    if peer_windows:
        per = []
        for w in sorted(win_rows):
            cur = np.concatenate(win_rows[w])
            res, dt = _evidently(world.ref_rows, cur, list(DENSE_FEATURES))
            per.append({"drifted_columns": len(res["drifted_columns"]), "dataset_drift": res.get("dataset_drift"),
                        "seconds": round(dt, 3), "rows": len(cur)})
        out["evidently"] = per
    return out


# -- the program -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    probe0 = cpu_probe()
    res: dict = {"machine": machine(), "cpu_probe_s": [round(probe0, 3)]}
    parts = set(args.parts.split(","))
    seeds = list(range(args.seed, args.seed + args.seeds))
    peer = not args.no_peer
    if peer:
        import importlib.util

        if importlib.util.find_spec("evidently") is None:
            res["peer"] = "Evidently is not installed (pip install 'evidently>=0.7.23,<0.8'): no peer figures"
            peer = False
    if "throughput" in parts:
        res["throughput"] = throughput(args.throughput_seconds, args.throughput_replicas, args.seed)
    if "drift" in parts:
        res["feature_drift"] = {
            "window_start": [feature_drift(s, 2, 1000, 3, 0.0, peer and s == seeds[0]) for s in seeds],
            "mid_window": [feature_drift(s, 2, 1000, 3, 30.0, False) for s in seeds]}
    if "mix" in parts:
        res["event_mix"] = [event_mix(s, args.events_rate, 4, peer and s == seeds[0]) for s in seeds]
    if "ctr" in parts:
        res["ctr"] = [ctr(s, args.ctr_before_items, args.ctr_max_items) for s in range(args.seed, args.seed + args.ctr_seeds)]
        res["ctr_stationary"] = [ctr_stationary(s, args.ctr_stationary_items) for s in seeds]
    if "latency" in parts:
        res["latency"] = [latency(s, args.replicas, 200.0, 120) for s in seeds]
    if "stationary" in parts:
        res["stationary"] = stationary(args.stationary_messages, args.seed, 3 if peer else 0)
    if "rollback" in parts:  # the real stack: Kafka must be running
        from bench.monitor_rollback import rollback

        res["rollback"] = [rollback(s, args.rollback_rate) for s in seeds]
    res["cpu_probe_s"].append(round(cpu_probe(), 3))
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    _print(res)
    return 0


def _q(xs: list) -> str:
    v = [x for x in xs if x is not None]
    if not v:
        return "none"
    a = np.asarray(v, float)
    missed = len(xs) - len(v)
    return (f"median {np.median(a):.4g}, min {a.min():.4g}, max {a.max():.4g} over {len(xs)} runs"
            + (f" ({missed} not detected)" if missed else ""))


def _print(res: dict) -> None:
    print(f"machine: {res['machine']}; cpu probe {res['cpu_probe_s']} s (start, end)")
    for r in res.get("rollback", []):
        print(f"rollback (seed {r['seed']}, {r['rate_items_per_s']:g} items/s, CTR {r['ctr'][0]} -> {r['ctr'][1]}): "
              f"detectable at item {r['detectable_item']} of version 2; ROLLBACK by {r['actor']} "
              f"{r.get('command_after_detectable_s')} s and version 1 serving again "
              f"{r.get('serving_v1_after_detectable_s')} s after that item was published")
    if "peer" in res:
        print(res["peer"])
    if "throughput" in res:
        t = res["throughput"]
        print(f"throughput: {t['metric_events_per_s']:,} metric events/s ({t['metric_events']:,} events, "
              f"{t['inference_replicas']} inference replicas + ingest x2 + features + rl_feedback, {t['simulated_s']} s "
              f"simulated, cpu {t['cpu_s']} s); rewards {t['rewards_per_s']:,}/s; events.clean {t['clean_events_per_s']:,}/s")
    if "feature_drift" in res:
        fd = res["feature_drift"]
        print("feature drift 0.5 sigma, windows to alert: onset at a window start: "
              + _q([r["windows_to_alert"] for r in fd["window_start"]]) + "; onset in mid-window: "
              + _q([r["windows_to_alert"] for r in fd["mid_window"]]))
        for r in fd["window_start"]:
            for e in r.get("evidently", []):
                print(f"   evidently window {e['window']:+d} (shifted share {e['shifted_share']}): feature drift "
                      f"{e['drift_detected_on_feature']}, drifted columns {e['drifted_columns']}, dataset drift "
                      f"{e['dataset_drift']}, {e['seconds']} s")
    if "event_mix" in res:
        for r in res["event_mix"]:
            print(f"event mix change (JS event_type {r['change']['event_type'][2]}, device {r['change']['device'][2]}): "
                  f"windows to alert {r['windows_to_alert']}")
            for e in r.get("evidently", []):
                print(f"   evidently window {e['window']:+d}: drifted {e['drifted_columns']}, dataset drift "
                      f"{e['dataset_drift']}, {e['seconds']} s")
    if "ctr" in res:
        print("CTR 3.0% -> 2.4%, shown items of the new version until CtrRegression: "
              + _q([r["items_to_alert"] for r in res["ctr"]]) + "; PolicyCtrRegression: "
              + _q([r["policy_items_to_alert"] for r in res["ctr"]]))
    if "ctr_stationary" in res:
        cs = res["ctr_stationary"]
        print(f"CTR stationary at 3.0%, {cs[0]['items']:,} items x {len(cs)} runs: breaching windows "
              f"{[r['breaching_windows'] for r in cs]}, largest CUSUM {[r['max_cusum'] for r in cs]} "
              f"(threshold {cs[0]['threshold']})")
    if "latency" in res:
        r0 = res["latency"][0]
        print(f"p99 latency doubling ({r0['p99_before_ms']} -> {r0['p99_after_ms']} ms, threshold {r0['threshold_ms']} ms, "
              f"bad share {r0['bad_share_before']} -> {r0['bad_share_after']}): seconds to alert "
              + _q([r["seconds_to_alert"] for r in res["latency"]]))
    if "stationary" in res:
        s = res["stationary"]
        print(f"stationary: {s['messages']:,} messages ({s['metric']:,} metric, {s['reward']:,} rewards, "
              f"{s['event']:,} events.clean; {s['simulated_s']} s simulated): {s['alert_count']} alerts")
        for a in s["alerts"]:
            print(f"   {a['name']} {a['status']} {a['labels']} {a['statistic']}={a['value']:.4g}")
        for e in s.get("evidently", []):
            print(f"   evidently stationary window ({e['rows']} rows): drifted columns {e['drifted_columns']}, "
                  f"dataset drift {e['dataset_drift']}, {e['seconds']} s")
