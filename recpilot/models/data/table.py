"""Source: an exported Parquet/CSV table (``--data PATH``).

The columns tell what the table holds. With an ``event_type`` column it is raw events
(:mod:`.events`). Otherwise it is logged impressions, the exported form of what serving logged:
columns ``request_id, user_id, item_id, position, timestamp_ms`` + the ``featurespec.DENSE_FEATURES``
by name, optional ``category`` and optional ``label`` (else labels come from an events table
joined by request_id). The Kafka source and the synthetic impressions produce rows of this same
format, and :func:`examples_from_impressions` turns any of them into a dataset (feature_set
"recpilot", grouped by request).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recpilot import featurespec
from recpilot.models.data.dataset import POSITIVE_TYPES, DataError, DataNotFound, Dataset
from recpilot.models.data.events import events_from_table, examples_from_events


def read_table(path: Path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataNotFound(f"data file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a .parquet or .csv file")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            df = pd.read_parquet(path)
        elif suffix.endswith(".csv") or suffix.endswith(".csv.gz"):
            df = pd.read_csv(path)
        else:
            raise DataError(f"{path}: unknown file type (expected .parquet or .csv)")
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read {path}: {exc}") from exc
    if df.empty:
        raise DataError(f"{path}: the dataset is empty (0 rows)")
    return df


def examples_from_impressions(df, outcomes: list[dict] | None = None, source: str = "impressions") -> Dataset:
    """Rows (request_id, user_id, item_id, position, timestamp_ms, DENSE_FEATURES..., [category], [label])."""
    need = {"request_id", "user_id", "item_id", "timestamp_ms"}
    missing = need - set(df.columns)
    if missing:
        raise DataError(f"{source}: impressions table lacks columns {sorted(missing)}")
    miss_f = [f for f in featurespec.DENSE_FEATURES if f not in df.columns]
    if miss_f:
        raise DataError(f"{source}: impressions table lacks dense feature columns {miss_f}")
    if len(df) == 0:
        raise DataError(f"{source}: the dataset is empty (0 impressions)")
    req = df["request_id"].astype(str).to_numpy()
    item = df["item_id"].astype(str).to_numpy()
    user = df["user_id"].astype(str).to_numpy()
    if "label" in df.columns:
        labels = df["label"].to_numpy(dtype=np.float32)
    else:
        if outcomes is None:
            raise DataError(f"{source}: no 'label' column and no outcome events to join by request_id")
        pos = {(o["request_id"], o["item_id"]) for o in outcomes
               if o.get("request_id") and o["event_type"] in POSITIVE_TYPES}
        labels = np.array([1.0 if (r, i) in pos else 0.0 for r, i in zip(req, item)], dtype=np.float32)
    cats = df["category"].fillna("").astype(str).to_numpy() if "category" in df.columns else np.full(len(df), "")
    dense = df[list(featurespec.DENSE_FEATURES)].to_numpy(dtype=np.float32)
    (uname, ub), (iname, ib), (cname, cb) = featurespec.ID_FEATURES
    h = featurespec.stable_hash
    ids = np.stack([
        np.array([h(u, ub) for u in user]), np.array([h(i, ib) for i in item]), np.array([h(c, cb) for c in cats]),
    ], axis=1)
    return Dataset(dense, ids, labels, df["timestamp_ms"].to_numpy(dtype=np.int64), req, item,
                   featurespec.DENSE_FEATURES, featurespec.ID_FEATURES, "recpilot", source,
                   extra={"ranking_groups": "request"})


def load_table(path: Path, attribution_ms: int, events_path: str | None = None) -> Dataset:
    """The dataset of a table: raw events, or logged impressions labelled by their ``label``
    column or by the outcome events in ``events_path``."""
    df = read_table(Path(path))
    if "event_type" in df.columns:
        return examples_from_events(events_from_table(df), attribution_ms, source=str(path))
    outcomes = None
    if events_path:
        outcomes = events_from_table(read_table(Path(events_path)))
    return examples_from_impressions(df, outcomes, source=str(path))
