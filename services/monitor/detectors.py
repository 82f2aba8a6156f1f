"""The monitor's detectors: pure classes fed with parsed values, giving one :class:`Verdict` per key
and window; no Kafka, no clock of their own (the engine passes event times and ``now_ms``).

* :class:`Tracker` turns verdicts into alerts: ``for_windows`` consecutive breaching windows fire
  an alert (once), ``resolve_windows`` consecutive clean windows resolve it (once); a window
  without a verdict (too few samples, no reference yet) leaves both streaks as they are; a key
  silent for ``expire_s`` is forgotten and its firing alert resolved.
* Time-windowed detectors add each observation to the window its event time falls in (every
  instance of a service into the same window) and :meth:`close` the windows whose end plus the
  lateness allowance passed; an observation for a window already closed is counted as ``late``.
* The reward detectors (:class:`CusumDetector`) are sequential: their windows are counts of shown
  items, their verdicts come as the rewards arrive.

Statistics and thresholds: the config module's docstring and monitor.toml.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from services.monitor import stats
from services.monitor.alerts import Alert, fingerprint
from services.monitor.config import (BurnConfig, CanaryConfig, Common, CusumConfig, DataQualityConfig, DriftConfig,
                                     EventMixConfig, FreshnessConfig, LagConfig, ResourceConfig)

Labels = tuple[tuple[str, str], ...]


@dataclass
class Verdict:
    name: str
    labels: Labels
    breach: bool | None          # None: no verdict (too few samples, no reference)
    value: float = 0.0
    threshold: float = 0.0
    statistic: str = ""
    end_ms: int = 0              # the window's end (event time)
    samples: float = 0.0
    summary: str = ""
    details: dict = field(default_factory=dict)
    reason: str = ""             # why there is no verdict


def labels_of(**kw: str) -> Labels:
    return tuple(kw.items())


def _r(x: float) -> float:
    return round(float(x), 6) if math.isfinite(x) else (1e308 if x > 0 else -1e308)


# -- alert state ----------------------------------------------------------------------------------


class _KeyState:
    __slots__ = ("breach_streak", "clean_streak", "firing", "last", "last_seen_ms")

    def __init__(self) -> None:
        self.breach_streak = self.clean_streak = 0
        self.firing: Alert | None = None
        self.last: Verdict | None = None
        self.last_seen_ms = 0


class Tracker:
    """Alert state of one alert name: per label set the streaks and the firing alert."""

    def __init__(self, name: str, cfg: Common, instance: str = "") -> None:
        self.name, self.cfg, self.instance = name, cfg, instance
        self.keys: dict[Labels, _KeyState] = {}
        self.fired = self.resolved = 0
        self.adopted: dict[str, tuple[Alert, int]] = {}  # fingerprint -> (alert, when adopted)

    def firing(self, labels: Labels) -> bool:
        st = self.keys.get(labels)
        return st is not None and st.firing is not None

    def adopt(self, alert: Alert, now_ms: int) -> None:
        """Take ``alert`` as firing (an earlier monitor fired it and never resolved it): its key's
        first verdict finds it firing, so it is not fired again and resolves as usual; a key that
        never comes back resolves it as "no data" after ``expire_ms``."""
        self.adopted[alert.fingerprint] = (alert, now_ms)

    def apply(self, v: Verdict, now_ms: int) -> Alert | None:
        st = self.keys.get(v.labels)
        if st is None:
            st = self.keys[v.labels] = _KeyState()
            if self.adopted:
                got = self.adopted.pop(fingerprint(self.name, dict(v.labels)), None)
                if got is not None:
                    st.firing = got[0]
        st.last_seen_ms = max(st.last_seen_ms, now_ms)
        if v.breach is None:
            if st.last is None or st.last.breach is None:
                st.last = v
            return None
        st.last = v
        if v.breach:
            st.breach_streak += 1
            st.clean_streak = 0
            if st.firing is None and st.breach_streak >= self.cfg.for_windows:
                labels = dict(v.labels)
                st.firing = Alert(name=self.name, labels=labels, severity=self.cfg.severity, value=v.value,
                                  threshold=v.threshold, statistic=v.statistic, starts_ms=now_ms,
                                  summary=v.summary or f"{self.name} {labels}", description=_describe(v, self.cfg),
                                  generator=self.instance, details=dict(v.details, window_end_ms=v.end_ms))
                self.fired += 1
                return st.firing
        else:
            st.clean_streak += 1
            st.breach_streak = 0
            if st.firing is not None and st.clean_streak >= self.cfg.resolve_windows:
                out = st.firing.resolve(now_ms, v.value)
                st.firing = None
                self.resolved += 1
                return out
        return None

    def expire(self, now_ms: int, expire_ms: int) -> list[Alert]:
        out = []
        for fp in [fp for fp, (_, t) in self.adopted.items() if now_ms - t > expire_ms]:
            out.append(_no_data(self.adopted.pop(fp)[0].resolve(now_ms)))
            self.resolved += 1
        for labels in [k for k, st in self.keys.items() if now_ms - st.last_seen_ms > expire_ms]:
            st = self.keys.pop(labels)
            if st.firing is not None:
                out.append(_no_data(st.firing.resolve(now_ms)))
                self.resolved += 1
        return out

    def status(self) -> dict:
        keys = []
        for labels, st in self.keys.items():
            v = st.last
            keys.append({"labels": dict(labels), "breach_streak": st.breach_streak, "clean_streak": st.clean_streak,
                         "firing": st.firing is not None,
                         "last": None if v is None else {
                             "breach": v.breach, "statistic": v.statistic, "value": _r(v.value),
                             "threshold": _r(v.threshold), "window_end_ms": v.end_ms, "samples": _r(v.samples),
                             **({"reason": v.reason} if v.reason else {}),
                             **({"details": v.details} if v.details else {})}})
        return {"for_windows": self.cfg.for_windows, "resolve_windows": self.cfg.resolve_windows,
                "severity": self.cfg.severity, "fired": self.fired, "resolved": self.resolved,
                "firing": [st.firing.to_dict() for st in self.keys.values() if st.firing is not None],
                "keys": keys}


def _no_data(a: Alert) -> Alert:
    return dataclasses.replace(a, summary=f"{a.summary} (no data)", description=f"{a.description} Resolved: no data.")


def _describe(v: Verdict, cfg: Common) -> str:
    return (f"{v.statistic} = {v.value:.4g} against the threshold {v.threshold:.4g} over {cfg.for_windows} "
            f"consecutive window(s); {v.samples:.0f} samples in the last one.")


# -- time windows ---------------------------------------------------------------------------------


class Windowed:
    """Base of the time-windowed detectors: ``self.windows[window_start_ms][key] = accumulator``.
    Every key's window with the same start closes at the same time, so one watermark
    (``closed_before``: the start of the oldest window still open) tells a late observation."""

    def __init__(self, window_s: float, lateness_ms: int) -> None:
        self.window_ms = max(1, int(window_s * 1000))
        self.lateness_ms = lateness_ms
        self.windows: dict[int, dict] = {}
        self.closed_before = -1
        self.late = 0
        self.newest = -1                 # start of the newest window opened
        self._newest_at_tick = -1
        self._advanced_at = 0
        self.effective_now = 0

    def _slot(self, key, ts_ms: int, new: Callable[[], object]):
        start = ts_ms - ts_ms % self.window_ms
        wins = self.windows.get(start)
        if wins is None:
            if start < self.closed_before:
                self.late += 1
                return None
            wins = self.windows[start] = {}
            if start > self.newest:
                self.newest = start
        acc = wins.get(key)
        if acc is None:
            acc = wins[key] = new()
        return acc

    def _add_pair(self, key, ts_ms: int, bad: float, total: float) -> None:
        """Add to a (bad, total) accumulator."""
        acc = self._slot(key, ts_ms, lambda: [0.0, 0.0])
        if acc is not None:
            acc[0] += bad
            acc[1] += total

    def open_windows(self) -> int:
        return sum(len(w) for w in self.windows.values())

    def close_time(self, now_ms: int, catchup_ms: int) -> int:
        """The time to close windows at: ``now_ms``, or while this detector replays a backlog (its
        newest window is more than ``catchup_ms`` behind ``now_ms`` and still advancing from tick to
        tick) the start of its newest window, so that a backlog is windowed as it happened."""
        if self.newest != self._newest_at_tick:
            self._newest_at_tick, self._advanced_at = self.newest, now_ms
        behind = 0 <= self.newest and self.newest + self.window_ms < now_ms - catchup_ms
        self.effective_now = self.newest if behind and now_ms - self._advanced_at < catchup_ms else now_ms
        return self.effective_now

    def due(self, now_ms: int) -> list[tuple]:
        """The (key, start, acc) of the windows to close now, oldest first (removed)."""
        out = []
        for start in sorted(s for s in self.windows if s + self.window_ms + self.lateness_ms <= now_ms):
            out += [(k, start, a) for k, a in self.windows.pop(start).items()]
            self.closed_before = max(self.closed_before, start + self.window_ms)
        return out


class HistogramDrift(Windowed):
    """FeatureDrift / ScoreDrift: a window's histogram (all instances) against the reference.

    ``reference = "training"``: the version's training reference (model.json), on whose bins
    inference counts. ``reference = "serving"`` (default): the sum of the version's first
    ``serving_windows`` windows with ``min_samples`` each, on the same bins (the spread for the
    Wasserstein distance stays the training reference's): a drift is then a change since the
    version began serving, not the difference between the items it shows and the rows it was
    trained on (another population: a ranker picks what it shows). The engine saves the complete
    ones (a restart during a drift must not take the drifted windows as the reference)."""

    def __init__(self, name: str, cfg: DriftConfig, lateness_ms: int,
                 reference: Callable[[tuple], dict | None], label: str) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.name, self.cfg, self.reference, self.label = name, cfg, reference, label
        self.serving: dict[tuple, list] = {}   # ref_key -> [counts, windows taken, end of its last window (ms)]
        self.on_serving_reference: Callable[[], None] | None = None  # called when the complete ones change

    def serving_references(self) -> list[list]:
        """The complete serving references: ``[model, version, what, counts, last window end ms]`` each."""
        return [[*k, v[0].tolist(), v[2]] for k, v in self.serving.items() if v[1] >= self.cfg.serving_windows]

    def load_serving_references(self, saved: list) -> None:
        """``saved``: :meth:`serving_references`' rows (a row without the last window's end, from
        before it was kept, counts as used at the next prune)."""
        for model, version, what, counts, *last in saved:
            self.serving[(model, version, what)] = [np.asarray(counts, dtype=np.float64), self.cfg.serving_windows,
                                                    int(last[0]) if last and last[0] is not None else None]

    def prune_serving(self, now_ms: int) -> int:
        """Forget the serving references of versions without a window for ``serving_ttl_s`` (retired
        versions; one that serves again builds a new one); how many were forgotten."""
        horizon = now_ms - self.cfg.serving_ttl_s * 1000
        for v in self.serving.values():
            if v[2] is None:
                v[2] = now_ms
        old = [k for k, v in self.serving.items() if v[2] < horizon]
        complete = any(self.serving[k][1] >= self.cfg.serving_windows for k in old)
        for k in old:
            del self.serving[k]
        if complete and self.on_serving_reference is not None:
            self.on_serving_reference()
        return len(old)

    def _serving_reference(self, ref_key, cur: np.ndarray, n: float,
                           end_ms: int) -> tuple[np.ndarray | None, int]:
        """The serving reference of ``ref_key`` once complete (None while the current window is
        still one of the first ``serving_windows``: it is added to it), and how many it holds."""
        got = self.serving.get(ref_key)
        if got is not None and got[1] >= self.cfg.serving_windows:
            got[2] = end_ms if got[2] is None else max(got[2], end_ms)
            return got[0], got[1]
        if n >= self.cfg.min_samples:
            if got is None or len(got[0]) != len(cur):
                got = self.serving[ref_key] = [np.zeros(len(cur)), 0, end_ms]
            got[0] += cur
            got[1] += 1
            got[2] = max(got[2], end_ms)
            if got[1] >= self.cfg.serving_windows and self.on_serving_reference is not None:
                self.on_serving_reference()
        return None, got[1] if got is not None else 0

    def add(self, key: tuple, ts_ms: int, counts, bounds) -> None:
        acc = self._slot(key, ts_ms, list)
        if acc is not None:
            if not acc:
                acc.append(list(bounds))
            acc.append(counts)

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        for key, start, acc in self.due(now_ms):
            model, version, what = key   # what: the feature, or the score's variant
            labels = labels_of(model=model, version=version, **{self.label: what})
            ref_key = (model, version, what if self.label == "feature" else "score")
            out.append(self._verdict(labels, ref_key, start + self.window_ms, acc[0], acc[1:]))
        if self.cfg.reference == "serving":
            self.prune_serving(now_ms)
        return out

    def _verdict(self, labels: Labels, ref_key, end_ms: int, bounds, parts: list) -> Verdict:
        cfg = self.cfg
        ref = self.reference(ref_key)
        nb = len(bounds)
        rows = [p for p in parts if len(p) in (nb, nb + 1)]
        cur = np.zeros(nb + 1)
        for p in rows:
            cur[: len(p)] += p
        n = float(cur.sum())
        v = Verdict(self.name, labels, None, end_ms=end_ms, samples=n, statistic="psi", threshold=cfg.psi)
        if ref is None or not (ref.get("histogram") or {}).get("counts"):
            v.reason = "no reference histogram for this model version"
            return v
        rb = ref["histogram"]["bounds"]
        rc = ref["histogram"]["counts"]
        if len(rb) != nb or (nb and not np.allclose(rb, bounds, rtol=1e-6, atol=1e-9)):
            v.reason = f"the window's {nb} bucket bounds are not the reference's {len(rb)}"
            return v
        if cfg.reference == "serving":
            served, taken = self._serving_reference(ref_key, cur, n, end_ms)
            if served is None:
                v.reason = (f"the serving reference: {taken} of {cfg.serving_windows} windows with "
                            f">= {cfg.min_samples} samples")
                return v
            rc = served.tolist()
        if n < cfg.min_samples:
            v.reason = f"{n:.0f} samples < min_samples {cfg.min_samples}"
            return v
        psi = stats.psi(rc, cur)
        js = stats.js_distance(rc, cur)
        std = float(ref.get("std") or 0.0)
        lower = ref.get("min")
        w = stats.wasserstein_binned(rb, rc, cur, lower=lower) / std if std > 0 else 0.0
        ratios = {"psi": (psi, cfg.psi), "js": (js, cfg.js), "wasserstein_sigma": (w, cfg.wasserstein_sigma)}
        stat, (val, thr) = max(ratios.items(), key=lambda kv: kv[1][0] / kv[1][1] if kv[1][1] > 0 else 0.0)
        v.breach = any(t > 0 and x >= t for x, t in ratios.values())
        v.statistic, v.value, v.threshold = stat, val, thr
        v.details = {"psi": _r(psi), "js": _r(js), "wasserstein_sigma": _r(w)}
        what = ", ".join(f"{k}={x}" for k, x in labels)
        v.summary = f"{self.name} on {what}: {stat} {val:.3g} >= {thr:.3g}"
        return v


class EventMix(Windowed):
    """EventMixDrift{field}: a window's category counts against the trailing clean windows."""

    def __init__(self, cfg: EventMixConfig, lateness_ms: int, firing: Callable[[Labels], bool]) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.cfg, self.firing = cfg, firing
        self.reference: dict[str, deque] = {f: deque(maxlen=cfg.reference_windows) for f in cfg.fields}
        self._breaching: dict[str, bool] = {}

    def window(self, ts_ms: int) -> dict | None:
        """The {field: {category: count}} accumulator of the window of ``ts_ms`` (None: late)."""
        return self._slot("events", ts_ms, lambda: {f: {} for f in self.cfg.fields})

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        for _, start, acc in self.due(now_ms):
            for f, counts in acc.items():
                out.append(self._verdict(f, counts, start + self.window_ms))
        return out

    def _verdict(self, f: str, counts: dict, end_ms: int) -> Verdict:
        cfg = self.cfg
        labels = labels_of(field=f)
        n = float(sum(counts.values()))
        v = Verdict("EventMixDrift", labels, None, end_ms=end_ms, samples=n, statistic="js", threshold=cfg.js)
        refq = self.reference[f]
        if n < cfg.min_samples:
            v.reason = f"{n:.0f} events < min_samples {cfg.min_samples}"
            return v
        if len(refq) < cfg.min_reference_windows:
            refq.append(dict(counts))
            v.reason = f"{len(refq)} reference windows < {cfg.min_reference_windows}"
            return v
        ref: dict[str, float] = {}
        for w in refq:
            for k, c in w.items():
                ref[k] = ref.get(k, 0.0) + c
        keys, r, c = stats.categorical(ref, counts)
        psi, js = stats.psi(r, c), stats.js_distance(r, c)
        v.breach = (cfg.psi > 0 and psi >= cfg.psi) or (cfg.js > 0 and js >= cfg.js)
        if (psi / cfg.psi if cfg.psi else 0) > (js / cfg.js if cfg.js else 0):
            v.statistic, v.value, v.threshold = "psi", psi, cfg.psi
        else:
            v.value = js
        rs, cs = r / max(r.sum(), 1), c / max(c.sum(), 1)
        top = sorted(zip(keys, rs, cs), key=lambda t: -abs(t[2] - t[1]))[:5]
        v.details = {"psi": _r(psi), "js": _r(js),
                     "largest_changes": {k: [round(float(a), 4), round(float(b), 4)] for k, a, b in top}}
        v.summary = f"EventMixDrift on {f}: {v.statistic} {v.value:.3g} >= {v.threshold:.3g}"
        if not v.breach and not self.firing(labels):
            refq.append(dict(counts))   # the reference stays frozen while breaching or firing
        return v


class BurnRate(Windowed):
    """LatencySLOBurn / ErrorSLOBurn{service,method}: (bad, total) per step of window_s, burn rates
    over the short and the long window (the SRE workbook's multiwindow alert)."""

    def __init__(self, name: str, cfg: BurnConfig, lateness_ms: int) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.name, self.cfg = name, cfg
        self.history: dict[tuple, deque] = {}
        self.n_short = max(1, round(cfg.short_window_s / cfg.window_s))
        self.n_long = max(self.n_short, round(cfg.long_window_s / cfg.window_s))
        self.hints: dict[tuple, str] = {}

    def threshold_ms(self, method: str) -> float:
        return self.cfg.methods.get(method, self.cfg.threshold_ms)

    def add(self, key: tuple, ts_ms: int, bad: float, total: float) -> None:
        self._add_pair(key, ts_ms, bad, total)

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        cfg = self.cfg
        budget = 1.0 - cfg.objective
        for key, start, acc in self.due(now_ms):
            h = self.history.get(key)
            if h is None:
                h = self.history[key] = deque(maxlen=self.n_long)
            # steps with no events (a replica that stopped publishing) count as empty
            while h and h[-1][0] + self.window_ms < start:
                h.append((h[-1][0] + self.window_ms, 0.0, 0.0))
            h.append((start, acc[0], acc[1]))
            short = list(h)[-self.n_short:]
            bs, ts = sum(x[1] for x in short), sum(x[2] for x in short)
            bl, tl = sum(x[1] for x in h), sum(x[2] for x in h)
            service, method = key
            labels = labels_of(service=service, method=method)
            v = Verdict(self.name, labels, None, end_ms=start + self.window_ms, samples=ts,
                        statistic="burn_rate", threshold=cfg.burn_factor)
            if ts < cfg.min_samples:
                v.reason = f"{ts:.0f} requests in the short window < min_samples {cfg.min_samples}"
            else:
                burn_s = bs / ts / budget
                burn_l = bl / tl / budget if tl else 0.0
                v.breach = burn_s >= cfg.burn_factor and burn_l >= cfg.burn_factor
                v.value = min(burn_s, burn_l)
                v.details = {"burn_rate_short": _r(burn_s), "burn_rate_long": _r(burn_l),
                             "bad_share_short": _r(bs / ts), "objective": cfg.objective}
                if self.name == "LatencySLOBurn":
                    v.details["threshold_ms"] = self.threshold_ms(method)
                what = "slower than %g ms" % self.threshold_ms(method) if self.name == "LatencySLOBurn" else "failed"
                v.summary = (f"{self.name} {service}/{method}: {bs / ts:.2%} of requests {what} "
                             f"(burn rate {burn_s:.3g} short, {burn_l:.3g} long >= {cfg.burn_factor:g})")
            out.append(v)
        return out


class Freshness(Windowed):
    def __init__(self, cfg: FreshnessConfig, lateness_ms: int) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.cfg = cfg

    def add(self, service: str, ts_ms: int, p99_ms: float) -> None:
        acc = self._slot(service, ts_ms, lambda: [0.0, 0])
        if acc is not None:
            acc[0] = max(acc[0], p99_ms)
            acc[1] += 1

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        for service, start, acc in self.due(now_ms):
            v = Verdict("FeatureFreshness", labels_of(service=service), acc[0] >= self.cfg.threshold_ms, acc[0],
                        self.cfg.threshold_ms, "freshness_p99_ms", start + self.window_ms, acc[1])
            v.summary = f"FeatureFreshness {service}: p99 {acc[0]:.0f} ms >= {self.cfg.threshold_ms:.0f} ms"
            out.append(v)
        return out


class Lag(Windowed):
    def __init__(self, cfg: LagConfig, lateness_ms: int) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.cfg = cfg

    def add(self, service: str, instance: str, ts_ms: int, lag: float) -> None:
        acc = self._slot(service, ts_ms, dict)
        if acc is not None:
            prev = acc.get(instance)
            if prev is None or ts_ms >= prev[0]:
                acc[instance] = (ts_ms, lag)

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        for service, start, acc in self.due(now_ms):
            total = float(sum(x[1] for x in acc.values()))
            v = Verdict("ConsumerLag", labels_of(service=service), total >= self.cfg.max_messages, total,
                        float(self.cfg.max_messages), "consumer_lag_messages", start + self.window_ms, len(acc))
            v.summary = f"ConsumerLag {service}: {total:.0f} messages >= {self.cfg.max_messages}"
            v.details = {"instances": len(acc)}
            out.append(v)
        return out


class DataQuality(Windowed):
    """DataQuality{service,check}: (bad, total) per check over the window, from counter increments."""

    def __init__(self, cfg: DataQualityConfig, lateness_ms: int) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.cfg = cfg

    def add(self, service: str, check: str, ts_ms: int, bad: float, total: float) -> None:
        self._add_pair((service, check), ts_ms, bad, total)

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        for (service, check), start, acc in self.due(now_ms):
            thr = float(getattr(self.cfg, check, 0.0))
            bad, total = acc
            v = Verdict("DataQuality", labels_of(service=service, check=check), None, statistic=check,
                        threshold=thr, end_ms=start + self.window_ms, samples=total)
            if total < self.cfg.min_samples or thr <= 0:
                v.reason = f"{total:.0f} events < min_samples {self.cfg.min_samples}" if thr > 0 else "check off"
            else:
                v.value = bad / total
                v.breach = v.value >= thr
                v.summary = f"DataQuality {service} {check}: {v.value:.2%} >= {thr:.2%}"
            out.append(v)
        return out


class Resources(Windowed):
    """ResourceSaturation{service,instance,resource} and the provisioning hints."""

    def __init__(self, cfg: ResourceConfig, lateness_ms: int) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.cfg = cfg
        self.hints: dict[tuple, dict] = {}

    def add(self, service: str, instance: str, ts_ms: int, name: str, value: float) -> None:
        acc = self._slot((service, instance), ts_ms, dict)
        if acc is not None:
            s = acc.get(name)
            acc[name] = (value, value, 1) if s is None else (s[0] + value, max(s[1], value), s[2] + 1)

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        cfg = self.cfg
        for (service, instance), start, acc in self.due(now_ms):
            end = start + self.window_ms
            cpu, limit = acc.get("cpu_cores"), acc.get("cpu_limit_cores")
            if cpu is not None and limit is not None and limit[1] > 0:
                share = (cpu[0] / cpu[2]) / limit[1]
                v = Verdict("ResourceSaturation", labels_of(service=service, instance=instance, resource="cpu"),
                            share >= cfg.cpu_saturation, share, cfg.cpu_saturation, "cpu_share", end, cpu[2])
                v.summary = f"ResourceSaturation {service}/{instance}: {share:.0%} of {limit[1]:g} cores"
                out.append(v)
                hint = ("under-provisioned: uses %.0f%% of %g cores" % (share * 100, limit[1]) if share > cfg.hint_high
                        else "over-provisioned: uses %.0f%% of %g cores" % (share * 100, limit[1])
                        if share < cfg.hint_low else "")
                self.hints[(service, instance)] = {"service": service, "instance": instance,
                                                   "cpu_cores": _r(cpu[0] / cpu[2]), "cpu_limit_cores": limit[1],
                                                   "hint": hint, "window_end_ms": end}
            for name, resource, lim in (("memory_rss_bytes", "memory", cfg.memory_limit_bytes),
                                        ("gpu_memory_bytes", "gpu_memory", cfg.gpu_memory_limit_bytes)):
                s = acc.get(name)
                if s is None:
                    continue
                h = self.hints.setdefault((service, instance), {"service": service, "instance": instance, "hint": ""})
                h[name] = s[1]
                if lim > 0:
                    v = Verdict("ResourceSaturation", labels_of(service=service, instance=instance, resource=resource),
                                s[1] >= lim, s[1], float(lim), name, end, s[2])
                    v.summary = f"ResourceSaturation {service}/{instance}: {resource} {s[1]:.3g} >= {lim:.3g} bytes"
                    out.append(v)
        return out


# -- rewards ----------------------------------------------------------------------------------------


class _Seq:
    """One key's sequential test state (a CUSUM on clicks or purchases per shown item)."""

    __slots__ = ("items", "hits", "s", "s_max", "a", "b", "p0", "p1", "baseline", "own_n", "own_k",
                 "window_n", "trail", "trail_n", "trail_k", "chunk_n", "chunk_k", "last_seen_ms", "items_at_tick",
                 "touched_ms", "test_n", "test_k")

    def __init__(self) -> None:
        self.items = self.hits = 0
        self.s = self.s_max = 0.0
        self.a = self.b = 0.0
        self.p0 = self.p1 = 0.0
        self.baseline: dict | None = None
        self.own_n = self.own_k = 0
        self.window_n = 0
        self.trail: deque = deque()
        self.trail_n = self.trail_k = 0
        self.chunk_n = self.chunk_k = 0
        self.last_seen_ms = 0
        self.items_at_tick = -1
        self.touched_ms = 0
        self.test_n = self.test_k = 0    # items (hits) tested against the baseline


class CusumDetector:
    """CtrRegression / ConversionRegression / PolicyCtrRegression: per (model, version) a one-sided
    Bernoulli log-likelihood-ratio CUSUM against a baseline (monitor.toml ``[ctr_regression]``).

    ``group`` of a key is its model: a new version's baseline is the trailing rate of the version of
    the same model seen last before it (when it has ``baseline_min_items``), else its own first
    ``baseline_items`` items."""

    CHUNK = 1000

    def __init__(self, name: str, cfg: CusumConfig, label: str, what: str = "CTR") -> None:
        self.name, self.cfg, self.label, self.what = name, cfg, label, what
        self.keys: dict[tuple[str, str], _Seq] = {}
        self.last_version: dict[str, str] = {}
        self.pending: list[Verdict] = []
        self.max_chunks = max(1, cfg.baseline_items // self.CHUNK)

    def observe(self, model: str, version: str, hit: bool, ts_ms: int) -> None:
        st = self.keys.get((model, version))
        if st is None:
            st = self._new(model, version)
        st.last_seen_ms = ts_ms if ts_ms > st.last_seen_ms else st.last_seen_ms
        st.items += 1
        st.chunk_n += 1
        if hit:
            st.hits += 1
            st.chunk_k += 1
        if st.chunk_n >= self.CHUNK:
            self._roll(st)
        if st.baseline is None:
            st.own_n += 1
            st.own_k += hit
            if st.own_n >= self.cfg.baseline_items:
                self._set_baseline(st, st.own_k, st.own_n, "own first items")
            return
        st.test_n += 1
        st.test_k += hit
        s = st.s + (st.a if hit else st.b)
        s = 0.0 if s < 0.0 else (2.0 * self.cfg.cusum_h if s > 2.0 * self.cfg.cusum_h else s)
        st.s = s
        if s > st.s_max:
            st.s_max = s
        st.window_n += 1
        if st.window_n >= self.cfg.window_items:
            self._verdict(model, version, st)

    def _new(self, model: str, version: str) -> _Seq:
        st = self.keys[(model, version)] = _Seq()
        prev = self.last_version.get(model)
        self.last_version[model] = version
        if prev is not None and prev != version:
            p = self.keys.get((model, prev))
            if p is not None and p.trail_n + p.chunk_n >= self.cfg.baseline_min_items:
                self._set_baseline(st, p.trail_k + p.chunk_k, p.trail_n + p.chunk_n, f"previous version {prev}")
        return st

    def _roll(self, st: _Seq) -> None:
        st.trail.append((st.chunk_n, st.chunk_k))
        st.trail_n += st.chunk_n
        st.trail_k += st.chunk_k
        st.chunk_n = st.chunk_k = 0
        while len(st.trail) > self.max_chunks:
            n, k = st.trail.popleft()
            st.trail_n -= n
            st.trail_k -= k

    def _set_baseline(self, st: _Seq, k: int, n: int, source: str) -> None:
        cfg = self.cfg
        p_hat = (k + 0.5) / (n + 1.0)
        se = math.sqrt(p_hat * (1 - p_hat) / max(n, 1))
        p0 = max(p_hat - cfg.z_baseline * se, 1e-6)
        p1 = p0 * (1.0 - cfg.min_effect)
        st.p0, st.p1 = p0, p1
        st.a, st.b = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
        st.baseline = {"source": source, "rate": _r(p_hat), "items": n, "std_error": _r(se), "p0": _r(p0),
                       "p1": _r(p1)}

    def _verdict(self, model: str, version: str, st: _Seq) -> None:
        cfg = self.cfg
        labels = labels_of(model=model, **{self.label: version})
        breach = st.s_max >= cfg.cusum_h
        v = Verdict(self.name, labels, breach, st.s_max, cfg.cusum_h, "cusum_llr", st.last_seen_ms, st.window_n)
        rate = st.test_k / st.test_n if st.test_n else 0.0
        drop = 1.0 - rate / st.baseline["rate"] if st.baseline["rate"] > 0 else 0.0
        v.details = {"baseline": st.baseline, "items": st.items, "tested_items": st.test_n, "rate": _r(rate),
                     "relative_drop": _r(drop),
                     "min_effect": cfg.min_effect, "cusum": _r(st.s)}
        v.summary = (f"{self.name} {model} {self.label} {version}: {self.what} {rate:.3%} vs baseline "
                     f"{st.baseline['rate']:.3%} (CUSUM {st.s_max:.3g} >= {cfg.cusum_h:g}, sized for a "
                     f"{cfg.min_effect:.0%} drop)")
        st.window_n = 0
        st.s_max = st.s
        self.pending.append(v)

    def take(self) -> list[Verdict]:
        out, self.pending = self.pending, []
        return out

    def expire(self, now_ms: int, expire_ms: int) -> None:
        """Forget the sequences that got no item for ``expire_ms`` of tick time (not event time: a
        backlog being replayed keeps its sequences)."""
        for k, st in list(self.keys.items()):
            if st.items != st.items_at_tick:
                st.items_at_tick, st.touched_ms = st.items, now_ms
            elif now_ms - st.touched_ms > expire_ms:
                del self.keys[k]

    def status(self) -> list[dict]:
        return [{"model": m, self.label: v, "items": st.items, "rate": _r(st.hits / st.items) if st.items else None,
                 "cusum": _r(st.s), "baseline": st.baseline,
                 **({} if st.baseline else {"baseline_items_needed": self.cfg.baseline_items - st.own_n})}
                for (m, v), st in self.keys.items()]


class Canary(Windowed):
    """CanaryCtrRegression{model,version}: canary CTR vs production CTR, same windows, cumulative."""

    def __init__(self, cfg: CanaryConfig, lateness_ms: int) -> None:
        super().__init__(cfg.window_s, lateness_ms)
        self.cfg = cfg
        self.totals: dict[tuple[str, str], list[float]] = {}   # (model, canary version) -> [nc, kc, np, kp]

    def observe(self, model: str, version: str, canary: bool, clicked: bool, ts_ms: int) -> None:
        acc = self._slot(model, ts_ms, lambda: [{}, 0, 0])
        if acc is None:
            return
        if canary:
            c = acc[0].get(version)
            if c is None:
                c = acc[0][version] = [0, 0]
            c[0] += 1
            c[1] += clicked
        else:
            acc[1] += 1
            acc[2] += clicked

    def close(self, now_ms: int) -> list[Verdict]:
        out = []
        cfg = self.cfg
        for model, start, (canaries, n_p, k_p) in self.due(now_ms):
            for version, (n_c, k_c) in canaries.items():
                t = self.totals.setdefault((model, version), [0.0, 0.0, 0.0, 0.0])
                if n_p > 0:
                    t[0] += n_c
                    t[1] += k_c
                    t[2] += n_p
                    t[3] += k_p
                v = Verdict("CanaryCtrRegression", labels_of(model=model, version=version), None, 0.0, -cfg.z,
                            "z", start + self.window_ms, t[0])
                if t[0] < cfg.min_items or t[2] <= 0:
                    v.reason = f"{t[0]:.0f} canary items (with production alongside) < min_items {cfg.min_items}"
                else:
                    pc, pp = t[1] / t[0], t[3] / t[2]
                    pool = (t[1] + t[3]) / (t[0] + t[2])
                    se = math.sqrt(max(pool * (1 - pool), 1e-12) * (1 / t[0] + 1 / t[2]))
                    z = (pc - pp) / se
                    drop = 1 - pc / pp if pp > 0 else 0.0
                    v.breach = z <= -cfg.z and drop >= cfg.min_effect
                    v.value = z
                    v.details = {"canary_ctr": _r(pc), "production_ctr": _r(pp), "relative_drop": _r(drop),
                                 "canary_items": t[0], "production_items": t[2], "min_effect": cfg.min_effect}
                    v.summary = (f"CanaryCtrRegression {model} canary {version}: CTR {pc:.3%} vs production "
                                 f"{pp:.3%} ({drop:.0%} lower, z {z:.2f})")
                out.append(v)
        return out

    def expire(self, live: set) -> None:
        for k in [k for k in self.totals if k not in live]:
            del self.totals[k]
