"""``recpilot report drift``: one self-contained HTML page comparing what a model version is served
now with its training reference, per input feature and for the score.

* the version: the model's production version, replayed from the control topic (as ``recpilot
  policy status`` does), unless named;
* now: the last ``minutes`` of the inference replicas' ``feature`` and ``score`` metric events for
  that version on ``metrics.inference`` (read without a consumer group, from the offsets of that
  time to the end), their bucket counts summed over replicas and intervals;
* the reference: ``reference`` in the version's ``model.json`` (the model repository);
* per feature: PSI and Jensen-Shannon distance on the reference buckets, the binned Wasserstein
  distance in reference standard deviations (:mod:`services.monitor.stats`), each against its
  threshold, and the verdict; a picture of the reference and current bucket shares (matplotlib,
  embedded as a base64 PNG).

The pure parts (:func:`aggregate`, :func:`compare`, :func:`render_html`) take no Kafka; the
readers (:func:`production_version`, :func:`read_inference`) do.
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from recpilot.errors import FailedPrecondition, NotFound
from recpilot.pb import events_pb2

from services.monitor import stats

# Until the monitor's config file gives them (the FeatureDrift section), the report's defaults:
DEFAULT_THRESHOLDS = {"psi": 0.2, "js": 0.1, "wasserstein_sigma": 0.25}
DEFAULT_MIN_SAMPLES = 200
SCORE = "score"


@dataclass
class Histogram:
    """Bucket counts summed over events (on ``bounds``; ``len(counts) == len(bounds) + 1``)."""

    bounds: list[float]
    counts: np.ndarray
    events: int = 0

    @property
    def n(self) -> int:
        return int(self.counts.sum())


@dataclass
class Current:
    """What :func:`aggregate` made of the events."""

    histograms: dict[str, Histogram] = field(default_factory=dict)   # feature (or "score") -> histogram
    events: int = 0            # feature/score events of the version used
    skipped: int = 0           # of the version, but on other bounds or malformed
    first_ms: int = 0
    last_ms: int = 0


def thresholds() -> tuple[dict[str, float], int]:
    """(thresholds, min samples) of the feature-drift detector: the monitor's config when it has
    them, else :data:`DEFAULT_THRESHOLDS`."""
    try:
        from services.monitor.config import load_config
    except ImportError:
        return dict(DEFAULT_THRESHOLDS), DEFAULT_MIN_SAMPLES
    cfg = load_config()
    sec = getattr(cfg, "feature_drift", None)
    got = dict(DEFAULT_THRESHOLDS)
    th = getattr(sec, "thresholds", None) if sec is not None else None
    if isinstance(th, dict):
        got.update({k: float(v) for k, v in th.items() if k in got})
    min_samples = getattr(sec, "min_samples", None) if sec is not None else None
    return got, int(min_samples) if min_samples else DEFAULT_MIN_SAMPLES


def _padded(counts: Iterable[int], n_bounds: int) -> np.ndarray | None:
    c = np.asarray(list(counts), dtype=np.float64)
    if len(c) == n_bounds:
        return np.append(c, 0.0)
    return c if len(c) == n_bounds + 1 else None


def usable(entry) -> bool:
    """A reference entry with a histogram this report can compare against (counts per bound, or
    one more for the overflow)."""
    h = (entry.get("histogram") or {}) if isinstance(entry, dict) else {}
    bounds, counts = h.get("bounds") or [], h.get("counts") or []
    return bool(bounds) and len(counts) in (len(bounds), len(bounds) + 1) and sum(counts) > 0


def aggregate(events: Iterable[events_pb2.MetricEvent], model: str, version: str, reference: dict,
              since_ms: int = 0) -> Current:
    """Sum the bucket counts of ``model``/``version``'s ``feature`` and ``score`` events at or after
    ``since_ms``; an event on bounds other than the reference's is skipped and counted."""
    cur = Current()
    for ev in events:
        if ev.name not in ("feature", SCORE) or ev.labels.get("model") != model or ev.labels.get("version") != version:
            continue
        if ev.timestamp_ms < since_ms:
            continue
        key = ev.labels.get("feature", "") if ev.name == "feature" else SCORE
        ref_bounds = (((reference.get(key) or {}).get("histogram")) or {}).get("bounds")
        bounds = list(ev.summary.bucket_bounds)
        if not key or not ref_bounds or len(bounds) != len(ref_bounds) or not np.allclose(bounds, ref_bounds):
            cur.skipped += 1
            continue
        counts = _padded(ev.summary.bucket_counts, len(bounds))
        if counts is None:
            cur.skipped += 1
            continue
        h = cur.histograms.get(key)
        if h is None:
            h = cur.histograms[key] = Histogram(list(ref_bounds), np.zeros(len(bounds) + 1))
        h.counts += counts
        h.events += 1
        cur.events += 1
        cur.first_ms = min(cur.first_ms or ev.timestamp_ms, ev.timestamp_ms)
        cur.last_ms = max(cur.last_ms, ev.timestamp_ms)
    return cur


@dataclass
class Row:
    feature: str
    n: int
    psi: float | None
    js: float | None
    wasserstein_sigma: float | None
    verdict: str                      # "drift", "no drift", "too few samples", "no data"
    breaches: list[str]
    ref_counts: np.ndarray | None = None
    cur_counts: np.ndarray | None = None
    bounds: list[float] | None = None


def compare(reference: dict, current: Current, limits: dict[str, float] | None = None,
            min_samples: int = DEFAULT_MIN_SAMPLES) -> list[Row]:
    """One row per feature of the reference (the score last): statistics, breaches, verdict."""
    limits = limits or DEFAULT_THRESHOLDS
    keys = sorted(k for k in reference if k != SCORE and usable(reference[k]))
    if usable(reference.get(SCORE)):
        keys.append(SCORE)
    rows = []
    for key in keys:
        ref = reference[key]
        bounds = list(ref["histogram"]["bounds"])
        ref_counts = _padded(ref["histogram"]["counts"], len(bounds))
        h = current.histograms.get(key)
        if h is None:
            rows.append(Row(key, 0, None, None, None, "no data", [], ref_counts, None, bounds))
            continue
        psi = stats.psi(ref_counts, h.counts)
        js = stats.js_distance(ref_counts, h.counts)
        std = float(ref.get("std") or 0.0)
        w = stats.wasserstein_binned(bounds, ref_counts, h.counts, lower=ref.get("min"))
        ws = w / std if std > 0 else None
        values = {"psi": psi, "js": js, "wasserstein_sigma": ws}
        breaches = [k for k, v in values.items() if v is not None and v > limits[k]]
        if h.n < min_samples:
            verdict = "too few samples"
        else:
            verdict = "drift" if breaches else "no drift"
        rows.append(Row(key, h.n, psi, js, ws, verdict, breaches, ref_counts, h.counts, bounds))
    return rows


def _picture(row: Row) -> str:
    """Reference and current bucket shares, as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ref = row.ref_counts / max(row.ref_counts.sum(), 1.0)
    cur = row.cur_counts / max(row.cur_counts.sum(), 1.0) if row.cur_counts is not None else np.zeros_like(ref)
    labels = [f"<={b:.3g}" for b in row.bounds] + [f">{row.bounds[-1]:.3g}"]
    x = np.arange(len(ref))
    fig, ax = plt.subplots(figsize=(7.0, 2.6), dpi=80)
    ax.bar(x - 0.2, ref, width=0.4, label="reference", color="#7f8c8d")
    ax.bar(x + 0.2, cur, width=0.4, label="current", color="#c0392b" if row.verdict == "drift" else "#2980b9")
    step = max(1, len(x) // 12)
    ax.set_xticks(x[::step], labels[::step], rotation=30, fontsize=7)
    ax.set_ylabel("share")
    ax.set_title(row.feature, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _cell(v: float | None, limit: float) -> str:
    if v is None:
        return "<td>-</td>"
    mark = " class=\"breach\"" if v > limit else ""
    return f"<td{mark}>{v:.4f}</td>"


def render_html(model: str, version: str, minutes: float, rows: list[Row], current: Current,
                limits: dict[str, float] | None = None, min_samples: int = DEFAULT_MIN_SAMPLES,
                generated_ms: int | None = None) -> str:
    """The whole report as one HTML document (pictures embedded)."""
    limits = limits or DEFAULT_THRESHOLDS
    e = html.escape
    at_ms = time.time() * 1000 if generated_ms is None else generated_ms
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at_ms / 1000))
    drifted = [r.feature for r in rows if r.verdict == "drift"]
    head = (f"<h1>Drift report: {e(model)} version {e(version)}</h1>"
            f"<p>Generated {e(when)}; the last {minutes:g} minutes of metrics.inference: {current.events} "
            f"feature/score events" + (f" ({current.skipped} on other bounds skipped)" if current.skipped else "")
            + f". Thresholds: PSI &gt; {limits['psi']:g}, Jensen-Shannon distance &gt; {limits['js']:g}, "
            f"Wasserstein &gt; {limits['wasserstein_sigma']:g} reference std; a verdict needs at least "
            f"{min_samples} samples.</p>"
            + (f"<p class=\"summary drift\">Drift in {len(drifted)} of {len(rows)}: {e(', '.join(drifted))}</p>"
               if drifted else f"<p class=\"summary\">No drift in {len(rows)} compared.</p>"))
    table = ["<table><tr><th>feature</th><th>samples</th><th>PSI</th><th>JS distance</th>"
             "<th>Wasserstein / std</th><th>verdict</th></tr>"]
    for r in rows:
        cells = "".join(_cell(v, limits[k]) for k, v in (("psi", r.psi), ("js", r.js), ("wasserstein_sigma", r.wasserstein_sigma)))
        table.append(f"<tr><td><a href=\"#f-{e(r.feature)}\">{e(r.feature)}</a></td><td>{r.n}</td>{cells}"
                     f"<td class=\"v-{r.verdict.replace(' ', '-')}\">{e(r.verdict)}"
                     + (f" ({e(', '.join(r.breaches))})" if r.breaches else "") + "</td></tr>")
    table.append("</table>")
    sections = []
    for r in rows:
        pic = (f"<img alt=\"{e(r.feature)}: reference vs current shares\" src=\"data:image/png;base64,{_picture(r)}\">"
               if r.ref_counts is not None and r.cur_counts is not None else "<p>no current data for this feature</p>")
        sections.append(f"<section id=\"f-{e(r.feature)}\"><h2>{e(r.feature)}: {e(r.verdict)}</h2>{pic}</section>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:first-child{text-align:left}.breach{color:#c0392b;font-weight:bold}"
             ".v-drift{color:#c0392b;font-weight:bold}.summary.drift{color:#c0392b}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Drift report {e(model)}/{e(version)}"
            f"</title><style>{style}</style></head><body>{head}{''.join(table)}{''.join(sections)}</body></html>")


# --------------------------------------------------------------------------------------------
# readers (Kafka)
# --------------------------------------------------------------------------------------------
def production_version(platform, model: str, *, topic: str | None = None, repository=None,
                       timeout: float = 10.0) -> str:
    """The production version of ``model`` replayed from the control topic; NotFound when none."""
    from recpilot.models.deployments import DeploymentSettings, replay
    from recpilot.settings import load

    book = replay(platform, topic or load(DeploymentSettings).topic, timeout=timeout, repository=repository)
    version = book.state(model).production_version
    if not version:
        raise NotFound(f"{model} has no production version in the deployment control; name one with --version")
    return version


def read_inference(platform, since_ms: int, *, topic: str | None = None, timeout: float = 60.0
                   ) -> list[events_pb2.MetricEvent]:
    """The metric events of ``topic`` (default ``metrics.inference``) written at or after
    ``since_ms`` (by the broker's timestamps), up to the end offsets seen at start."""
    from recpilot.kafka import TopicReader
    from recpilot.topics import metrics_topic

    topic = topic or metrics_topic("inference")
    out: list[events_pb2.MetricEvent] = []

    def take(m) -> None:
        ev = events_pb2.MetricEvent()
        try:
            ev.ParseFromString(m.value())
        except Exception:  # a malformed event is not this report's to judge
            return
        out.append(ev)

    with TopicReader(platform, topic, group_id="recpilot-report") as r:
        parts = r.partitions()
        if not parts:
            raise NotFound(f"topic {topic} does not exist at {platform.kafka_bootstrap}")
        ends = r.end_offsets(parts)
        starts = {p: o for p, o in r.offsets_for_time(since_ms, parts).items() if o >= 0}
        r.read(starts, take, timeout=timeout, until=ends)
    return out


def drift_report(platform, repository, model: str, version: str | None = None, minutes: float = 15.0, *,
                 topic: str | None = None, control_topic: str | None = None, now_ms: int | None = None,
                 timeout: float = 60.0) -> tuple[str, list[Row], Current, str]:
    """(html, rows, current, version) for ``model``; errors: NotFound (no production version, no
    version), FailedPrecondition (no reference in model.json, no events in the window)."""
    version = version or production_version(platform, model, topic=control_topic, repository=repository.root)
    meta = repository.meta(model, version)
    reference = meta.get("reference") or {}
    if not any(usable(v) for v in reference.values()):
        raise FailedPrecondition(f"{model}/{version} has no drift reference (model.json 'reference' with histograms); "
                                 "it was trained before references were written: retrain it")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = now_ms - int(minutes * 60_000)
    current = aggregate(read_inference(platform, since, topic=topic, timeout=timeout), model, version, reference, since)
    if not current.events:
        raise FailedPrecondition(f"no feature or score events of {model}/{version} on "
                                 f"{topic or 'metrics.inference'} in the last {minutes:g} minutes"
                                 + (f" ({current.skipped} on other bounds)" if current.skipped else "")
                                 + ": is inference serving it and publishing metrics?")
    limits, min_samples = thresholds()
    rows = compare(reference, current, limits, min_samples)
    return render_html(model, version, minutes, rows, current, limits, min_samples, now_ms), rows, current, version
