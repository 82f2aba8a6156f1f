"""Source: raw events replayed through the offline feature store (feature_set "recpilot").

Events (UserEvent dicts, from a Parquet/CSV table with UserEvent columns or from the simulator)
are replayed in event-time order through ``featurespec.OfflineFeatureStore``; every VIEW becomes an
example whose features are computed from the events *before* it (point in time, no leakage) with
``featurespec.build_batch``, exactly as serving builds them; label 1 if the same user clicked /
bought that item within ``attribution_ms`` after the view (or with the same request_id), else 0
(viewed, not clicked).
"""

from __future__ import annotations

import math

import numpy as np

from recpilot import featurespec
from recpilot.models.data.dataset import POSITIVE_TYPES, DataError, Dataset


def examples_from_events(events: list[dict], attribution_ms: int = 30 * 60 * 1000, source: str = "events") -> Dataset:
    """Replay events in time order; every VIEW of an item is an example (features before the view)."""
    if not events:
        raise DataError(f"{source}: the dataset is empty (0 events)")
    events = sorted(events, key=lambda e: (int(e["timestamp_ms"]), str(e.get("event_id") or "")))
    positives: dict[tuple[str, str], list[int]] = {}
    by_request: set[tuple[str, str]] = set()
    for e in events:
        if e["event_type"] in POSITIVE_TYPES and e.get("item_id"):
            positives.setdefault((e["user_id"], e["item_id"]), []).append(int(e["timestamp_ms"]))
            if e.get("request_id"):
                by_request.add((e["request_id"], e["item_id"]))
    store = featurespec.OfflineFeatureStore()
    dense_rows, id_rows, labels, ts, groups, items = [], [], [], [], [], []
    for e in events:
        if e["event_type"] == "VIEW" and e.get("item_id"):
            now = int(e["timestamp_ms"])
            uid, iid = e["user_id"], e["item_id"]
            user = store.user(uid)
            item = store.item(iid, now)
            if not item["category"] and (e.get("context") or {}).get("category"):
                item["category"] = e["context"]["category"]  # the catalogue knows it at serving time
            d, i = featurespec.build_batch(user, [item], now)
            later = positives.get((uid, iid), ())
            lab = any(now <= t <= now + attribution_ms for t in later) or (
                bool(e.get("request_id")) and (e["request_id"], iid) in by_request)
            dense_rows.append(d[0])
            id_rows.append(i[0])
            labels.append(1.0 if lab else 0.0)
            ts.append(now)
            groups.append(e.get("request_id") or e.get("session_id") or f"{uid}:{now // 3_600_000}")
            items.append(iid)
        store.apply(e)
    if not labels:
        raise DataError(f"{source}: no VIEW events with an item_id, so no examples")
    return Dataset(np.array(dense_rows), np.array(id_rows), np.array(labels), np.array(ts), np.array(groups),
                   np.array(items), featurespec.DENSE_FEATURES, featurespec.ID_FEATURES, "recpilot", source,
                   extra={"ranking_groups": "request (else session)"})


def _event_type_name(v) -> str:
    if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.isdigit()):
        return featurespec.EVENT_NAMES.get(int(v), str(v))
    if isinstance(v, float) and not math.isnan(v):
        return featurespec.EVENT_NAMES.get(int(v), str(v))
    return str(v).upper()


def events_from_table(df) -> list[dict]:
    """UserEvent dicts from a table with UserEvent columns; ``category`` / ``context`` column -> context."""
    need = {"user_id", "event_type", "timestamp_ms"}
    missing = need - set(df.columns)
    if missing:
        raise DataError(f"events table lacks columns {sorted(missing)} (has {list(df.columns)})")
    out = []
    cols = list(df.columns)
    for row in df.itertuples(index=False, name=None):
        r = dict(zip(cols, row))
        ctx = r.get("context")
        if isinstance(ctx, str):
            import json

            try:
                ctx = json.loads(ctx) if ctx else {}
            except ValueError:
                ctx = {}
        elif isinstance(ctx, (list, tuple)):  # parquet map -> list of (k, v)
            ctx = dict(ctx)
        elif not isinstance(ctx, dict):
            ctx = {}
        if r.get("category") is not None and not (isinstance(r["category"], float) and math.isnan(r["category"])):
            ctx = {**ctx, "category": str(r["category"])}
        out.append({
            "event_id": str(r.get("event_id") or ""), "user_id": str(r["user_id"]),
            "session_id": _s(r.get("session_id")), "event_type": _event_type_name(r["event_type"]),
            "item_id": _s(r.get("item_id")), "price": float(r.get("price") or 0.0) if _num_ok(r.get("price")) else 0.0,
            "timestamp_ms": int(r["timestamp_ms"]), "request_id": _s(r.get("request_id")), "context": ctx,
        })
    return out


def _s(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _num_ok(v) -> bool:
    try:
        return v is not None and not math.isnan(float(v))
    except (TypeError, ValueError):
        return False
