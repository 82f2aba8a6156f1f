"""Training datasets for the ranker: one :class:`Dataset` shape, three sources.

(a) **Open Bandit sample** (``obd``, feature_set "obd"): each log row joined with the
    item_context.csv beside it. dense = [item_feature_0, the user-item affinity for the shown item,
    position one-hot (3), item_ctr]; ids = hashed user_feature_0..3, item_id, item_feature_1..3.
    ``item_ctr`` is the item's smoothed click rate point in time (:func:`point_in_time_ctr`: only rows
    with an earlier timestamp); :meth:`Dataset.split_time` freezes it on the later side at the earlier
    side's counts, so a holdout row knows exactly what the popularity baseline knows.
(b) **recpilot logged impressions** (feature_set "recpilot"): one row per shown item with the dense
    feature snapshot by name (``featurespec.DENSE_FEATURES``), labelled by later CLICK / PURCHASE
    events with the same request_id. Read from Kafka (``impressions`` + ``events.clean``, bounded
    read up to the high watermarks at start) or from an exported Parquet/CSV table.
(c) **raw events** (Parquet/CSV with UserEvent columns, feature_set "recpilot"): replayed in event-time
    order through ``featurespec.OfflineFeatureStore``; every VIEW becomes an example whose features
    are computed from the events *before* it (point in time, no leakage) with ``featurespec.build_batch``,
    exactly as serving builds them; label 1 if the same user clicked / bought that item within
    ``attribution_ms`` after the view (or with the same request_id), else 0 (viewed, not clicked).

Every dataset carries timestamps (for the time-based holdout split), a group key per row (request,
session or user segment, for recall@K / NDCG@K) and the item id (for the popularity baseline).

Exported logged-impression table (b): columns ``request_id, user_id, item_id, position,
timestamp_ms`` + the DENSE_FEATURES by name, optional ``category`` and optional ``label`` (else
labels come from an events table / topic). The Kafka ``Impression.features`` snapshot is read as
``"<position>:<feature>"`` (as services/inference logs it) per shown item; the category id comes from
the events' ``context["category"]``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import Field

from recpilot import featurespec
from recpilot.paths import CACHE_DIR, SHARED_DIR
from pydantic_settings import SettingsConfigDict

from recpilot.settings import RecpilotSettings

log = logging.getLogger(__name__)

OBD_ID_FEATURES = (
    ("user_feature_0", 1_000), ("user_feature_1", 1_000), ("user_feature_2", 1_000), ("user_feature_3", 1_000),
    ("item_id", 1_000), ("item_feature_1", 1_000), ("item_feature_2", 1_000), ("item_feature_3", 1_000),
)
OBD_DENSE_FEATURES = ("item_feature_0", "user_item_affinity", "position_1", "position_2", "position_3", "item_ctr")
OBD_CTR_FEATURE = "item_ctr"  # the point-in-time item click rate (see point_in_time_ctr)
OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")  # the dataset's three campaigns: 80, 34 and 46 items
OBD_SAMPLE_DIR = CACHE_DIR / "obd-sample"  # `recpilot setup --obd-sample` (recpilot.models.obd_sample)
OUTCOME_TYPES = {"CLICK", "ADD_TO_CART", "PURCHASE"}
POSITIVE_TYPES = {"CLICK", "PURCHASE"}


class DataError(ValueError):
    """The training data is missing, unreadable or empty; the message says which and why."""


class TrainSettings(RecpilotSettings):
    """Training defaults. Environment prefix ``RECPILOT_TRAIN_``."""

    model_config = SettingsConfigDict(env_prefix="RECPILOT_TRAIN_", extra="forbid", case_sensitive=False)

    obd_dir: Path = Field(default=SHARED_DIR / "data" / "obd")
    impressions_topic: str = "impressions"
    events_topic: str = "events.clean"
    kafka_read_timeout_s: float = Field(default=60.0, gt=0)
    attribution_ms: int = Field(default=30 * 60 * 1000, ge=0, description="raw events: a click this soon after a view labels it")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    intra_op_threads: int = Field(default=2, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)


def _str_column(values) -> np.ndarray:
    """A column of strings: an object array of str is kept as it is (8 bytes a row, equal strings
    may share one object), anything else becomes str. A fixed-width numpy str array would cost
    4 bytes per character of the longest value on every row (552 bytes a row for OBD segments)."""
    from pandas.api.types import infer_dtype  # a C loop; a Python one costs ~1 s per 20M rows

    arr = np.asarray(values)
    if arr.dtype == object and infer_dtype(arr, skipna=False) == "string":
        return arr
    return arr.astype(str)


@dataclass
class Dataset:
    dense: np.ndarray                # float32 [N, D]
    ids: np.ndarray                  # int64 [N, K]
    labels: np.ndarray               # float32 [N]
    ts_ms: np.ndarray                # int64 [N]
    groups: np.ndarray               # str [N]  request / session / segment
    items: np.ndarray                # str [N]  item id (popularity baseline)
    dense_features: tuple[str, ...]
    id_features: tuple[tuple[str, int], ...]
    feature_set: str
    source: str
    extra: dict = field(default_factory=dict)
    # the dense column holding the item's smoothed click rate from earlier rows only (point in time);
    # split_time recomputes it on the later side from the earlier side's rows alone. None: no such column
    ctr_feature: str | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.dense = np.ascontiguousarray(self.dense, dtype=np.float32).reshape(n, len(self.dense_features))
        self.ids = np.ascontiguousarray(self.ids, dtype=np.int64).reshape(n, len(self.id_features))
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.ts_ms = np.asarray(self.ts_ms, dtype=np.int64)
        self.groups = _str_column(self.groups)
        self.items = _str_column(self.items)
        for name, arr in (("ts_ms", self.ts_ms), ("groups", self.groups), ("items", self.items)):
            if len(arr) != n:
                raise ValueError(f"dataset column {name} has {len(arr)} rows, labels {n}")
        if n and not np.isfinite(self.dense).all():
            raise DataError(f"{self.source}: dense features contain NaN/inf")
        if self.ctr_feature is not None and self.ctr_feature not in self.dense_features:
            raise ValueError(f"ctr_feature {self.ctr_feature!r} is not a dense feature")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def positives(self) -> int:
        return int((self.labels > 0.5).sum())

    def take(self, idx: np.ndarray, source: str | None = None) -> Dataset:
        return Dataset(self.dense[idx], self.ids[idx], self.labels[idx], self.ts_ms[idx], self.groups[idx],
                       self.items[idx], self.dense_features, self.id_features, self.feature_set,
                       source or self.source, dict(self.extra), self.ctr_feature)

    def window(self) -> dict:
        return {"start_ms": int(self.ts_ms.min()) if len(self) else 0, "end_ms": int(self.ts_ms.max()) if len(self) else 0}

    def last(self, days: float) -> Dataset:
        """Only the rows of the latest ``days`` (by the newest timestamp in the data)."""
        if not len(self):
            return self
        cut = int(self.ts_ms.max() - days * 86_400_000)
        keep = np.flatnonzero(self.ts_ms >= cut)
        out = self.take(keep, f"{self.source} (last {days:g} days)")
        if len(out) == 0:
            raise DataError(f"{self.source}: no rows in the last {days:g} days: the dataset is empty")
        return out

    def split_time(self, holdout_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
        """Time-based split: the latest ``holdout_fraction`` of rows (by timestamp) are the holdout.
        Rows with the same timestamp as the cut stay on the same side, so a request never straddles.

        With a ``ctr_feature`` the holdout's item click rates are frozen at the end of the training
        window: every holdout row gets its item's smoothed rate over the training rows only (exactly
        the popularity baseline's score), never counts from earlier holdout rows."""
        check_not_empty(self)
        order = np.argsort(self.ts_ms, kind="mergesort")
        cut = int(round(len(self) * (1 - holdout_fraction)))
        cut = min(max(cut, 1), len(self) - 1) if len(self) > 1 else 1
        cut_ts = self.ts_ms[order[cut]] if cut < len(self) else None
        if cut_ts is not None:
            cut = int(np.searchsorted(self.ts_ms[order], cut_ts, side="left"))
        train, test = order[:cut], order[cut:]
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"{self.source}: cannot split {len(self)} rows into a training window and a holdout "
                            "(all rows share one timestamp?)")
        before, after = self.take(train, self.source + " [train]"), self.take(test, self.source + " [holdout]")
        if self.ctr_feature is not None:
            j = self.dense_features.index(self.ctr_feature)
            after.dense[:, j] = frozen_ctr(before.items, before.labels, after.items)
        return before, after


def check_not_empty(ds: Dataset, need_both_classes: bool = True) -> None:
    if len(ds) == 0:
        raise DataError(f"{ds.source}: the dataset is empty (0 examples)")
    if need_both_classes:
        pos = ds.positives
        if pos == 0 or pos == len(ds):
            raise DataError(f"{ds.source}: {len(ds)} examples but {pos} positives; "
                            "training needs both clicked and not-clicked examples")


# --------------------------------------------------------------------------------------------
# item click rates: point in time, and frozen at the end of a training window

CTR_PRIOR_CLICKS = 1.0
CTR_PRIOR_VIEWS = 20.0


def frozen_ctr(train_items: np.ndarray, train_labels: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Each of ``items``' smoothed click rate over the training rows alone: the popularity baseline's
    score (``evaluate.popularity_scores``, one definition), as float32."""
    from recpilot.models.evaluate import popularity_scores

    return popularity_scores(train_items, train_labels, items, CTR_PRIOR_CLICKS, CTR_PRIOR_VIEWS).astype(np.float32)


def point_in_time_ctr(items: np.ndarray, labels: np.ndarray, ts_ms: np.ndarray) -> np.ndarray:
    """Per row, its item's smoothed click rate from the rows with a *strictly earlier* timestamp only
    (never the row's own label, nor rows at the same moment or later), with the popularity baseline's
    smoothing: global = (C + 1) / (N + 20) over the earlier rows, item = (c + 1) / (v + 1 / global),
    where c / v are the item's earlier clicks / rows. A row with no history gets 1 / 20 (no rows
    before it) or the global rate (an item not seen before). float32 [N]."""
    items = np.asarray(items).astype(str)
    y = np.asarray(labels, dtype=np.float64)
    ts = np.asarray(ts_ms, dtype=np.int64)
    n = len(y)
    if n == 0:
        return np.zeros(0, np.float32)
    _, t_rank = np.unique(ts, return_inverse=True)      # dense time rank: equal timestamps, equal rank
    _, code = np.unique(items, return_inverse=True)
    t_rank, code = t_rank.astype(np.int64).ravel(), code.astype(np.int64).ravel()
    # all rows: how many rows / clicks have a smaller time rank
    order = np.argsort(t_rank, kind="mergesort")
    cum = np.concatenate(([0.0], np.cumsum(y[order])))
    n_before = np.searchsorted(t_rank[order], t_rank, side="left")
    c_before = cum[n_before]
    # per item: the same over the key (item, time rank)
    span = int(t_rank.max()) + 1
    key = code * span + t_rank
    korder = np.argsort(key, kind="mergesort")
    kcum = np.concatenate(([0.0], np.cumsum(y[korder])))
    ks = key[korder]
    below = np.searchsorted(ks, key, side="left")         # rows with a smaller key
    start = np.searchsorted(ks, code * span, side="left")  # the item's first row
    views = (below - start).astype(np.float64)
    clicks = kcum[below] - kcum[start]
    g = (c_before + CTR_PRIOR_CLICKS) / (n_before + CTR_PRIOR_VIEWS)
    return ((clicks + CTR_PRIOR_CLICKS) / (views + CTR_PRIOR_CLICKS / g)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# (a) Open Bandit Dataset


OBD_CHUNK_ROWS = 200_000  # rows of a log CSV held as a full DataFrame at a time (the full data has 26M)


def _obd_rows(df, policy: str, hash_cache: dict) -> dict:
    """The compact per-row arrays of one chunk of a log joined with its item_context."""
    import pandas as pd

    n = len(df)
    # the user's affinity for the shown item: column user-item_affinity_<item_id> of the same row
    item_ids = df["item_id"].to_numpy().astype(np.int64)
    aff_names = [c for c in df.columns if str(c).startswith("user-item_affinity_")]
    affinity = np.zeros(n, dtype=np.float64)
    if aff_names:
        by_item = {int(str(c).rsplit("_", 1)[1]): j for j, c in enumerate(aff_names)}
        col_of = np.array([by_item.get(int(i), -1) for i in range(int(item_ids.max()) + 1)], dtype=np.int64)
        cols = col_of[item_ids]
        block = df[aff_names].to_numpy(dtype=np.float64)
        have = cols >= 0
        affinity[have] = block[np.flatnonzero(have), cols[have]]
    pos = df["position"].to_numpy().astype(int)
    dense = np.zeros((n, len(OBD_DENSE_FEATURES)), dtype=np.float32)
    dense[:, 0] = df["item_feature_0"].to_numpy(dtype=np.float64)
    dense[:, 1] = affinity
    for k in (1, 2, 3):
        dense[:, 1 + k] = (pos == k)
    ids = np.zeros((n, len(OBD_ID_FEATURES)), dtype=np.int64)
    for j, (name, buckets) in enumerate(OBD_ID_FEATURES):
        col = df[name].astype(str)
        # the hashed categoricals of the two folders were hashed separately: namespace them by policy
        # so their vocabularies do not mix. item_id is the same 0..79 index in both (item_feature_0
        # agrees item by item), so it is shared. Hashed once per distinct value.
        ns = "" if name == "item_id" else f"{policy}:"
        uniq, inverse = np.unique(col.to_numpy(), return_inverse=True)
        codes = np.empty(len(uniq), dtype=np.int64)
        for u, v in enumerate(uniq):
            key = f"{ns}{name}:{v}"
            h = hash_cache.get((key, buckets))
            if h is None:
                h = hash_cache[(key, buckets)] = featurespec.stable_hash(key, buckets)
            codes[u] = h
        ids[:, j] = codes[inverse]
    # explicit unit: pandas' default datetime resolution differs between versions (ns / us)
    ts = pd.to_datetime(df["timestamp"], utc=True).dt.as_unit("ms").astype("int64").to_numpy()
    seg = (policy + ":" + df["user_feature_0"].astype(str) + "|" + df["user_feature_1"].astype(str) + "|"
           + df["user_feature_2"].astype(str) + "|" + df["user_feature_3"].astype(str)).to_numpy()
    return dict(dense=dense, ids=ids, labels=df["click"].to_numpy(dtype=np.float32), ts=ts,
                groups=_shared_strings(seg), items=_shared_strings(df["item_id"].astype(str).to_numpy()))


def _shared_strings(values: np.ndarray) -> np.ndarray:
    """The same object array, but every equal string is one object (80 items, a few thousand user
    segments): 8 bytes a row instead of a ~60-120 byte string object each."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq[inverse.reshape(-1)]


def obd_files(obd_dir: Path, policy: str, campaign: str = "all") -> tuple[Path, Path]:
    """The log and item_context.csv of one policy and campaign. Two layouts are read: the dataset's own,
    ``<dir>/<policy>/<campaign>/<campaign>.csv`` (the full download, and the sample that the ``obp``
    package ships, see ``recpilot setup --obd-sample``), and the flat one of the sample beside the
    checkout, ``<dir>/<policy>/<campaign>.csv``; ``item_context.csv`` lies beside the log."""
    if policy not in OBD_POLICIES:
        raise DataError(f"unknown Open Bandit policy {policy!r} (expected one of {', '.join(OBD_POLICIES)})")
    if campaign not in OBD_CAMPAIGNS:
        raise DataError(f"unknown Open Bandit campaign {campaign!r} (expected one of {', '.join(OBD_CAMPAIGNS)})")
    tried = [obd_dir / policy / campaign / f"{campaign}.csv", obd_dir / policy / f"{campaign}.csv"]
    for log_path in tried:
        if log_path.is_file():
            ctx_path = log_path.parent / "item_context.csv"
            if not ctx_path.is_file():
                raise DataError(f"Open Bandit data file not found: {ctx_path} (the item features beside {log_path.name})")
            return log_path, ctx_path
    hint = " (set RECPILOT_TRAIN_OBD_DIR)"
    if campaign != "all":
        hint = (f" (the sample beside the checkout has the 'all' campaign only: `recpilot setup --obd-sample` "
                f"fetches the sample of all three campaigns into {OBD_SAMPLE_DIR}; then set "
                f"RECPILOT_TRAIN_OBD_DIR={OBD_SAMPLE_DIR})")
    raise DataError(f"Open Bandit data file not found: {' or '.join(str(t) for t in tried)}{hint}")


def load_obd(obd_dir: Path, policies: tuple[str, ...] = OBD_POLICIES, chunk_rows: int = OBD_CHUNK_ROWS,
             campaign: str = "all") -> Dataset:
    """The Open Bandit logs of ``policies`` for one ``campaign`` (files: ``obd_files``).

    The logs are read ``chunk_rows`` at a time and only compact per-row arrays are kept: ~120
    bytes a row (dense, ids, label, time, and shared item / segment strings) against ~1 KB a row for
    a whole 100-column frame, so the full dataset (26M rows, ~3 GB this way) fits in memory on an
    ordinary machine. The result does not depend on the chunk size (tested)."""
    import pandas as pd

    obd_dir = Path(obd_dir)
    parts = []
    hash_cache: dict = {}
    for policy in policies:
        log_path, ctx_path = obd_files(obd_dir, policy, campaign)
        try:
            ctx = pd.read_csv(ctx_path, index_col=0)
            chunks = pd.read_csv(log_path, index_col=0, chunksize=max(1, int(chunk_rows)))
            rows = 0
            need = {"timestamp", "item_id", "position", "click"} | {f"user_feature_{i}" for i in range(4)}
            for logs in chunks:
                if logs.empty:
                    continue
                missing = need - set(logs.columns)
                if missing:
                    raise DataError(f"{log_path}: missing columns {sorted(missing)}")
                df = logs.merge(ctx, on="item_id", how="left", validate="many_to_one")
                if df["item_feature_0"].isna().any():
                    raise DataError(f"{log_path}: items without a row in {ctx_path}")
                parts.append(_obd_rows(df, policy, hash_cache))
                rows += len(df)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
            raise DataError(f"cannot read Open Bandit data in {log_path.parent}: {exc}") from exc
        if rows == 0:
            raise DataError(f"{log_path}: the dataset is empty (0 rows)")
    dense = np.concatenate([p["dense"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    ts = np.concatenate([p["ts"] for p in parts])
    items = np.concatenate([p["items"] for p in parts])
    # both logs together: item_id is the same index in both folders, and so is its click rate
    dense[:, OBD_DENSE_FEATURES.index(OBD_CTR_FEATURE)] = point_in_time_ctr(items, labels, ts)
    where = "" if campaign == "all" else f"/{campaign}"
    ds = Dataset(
        dense, np.concatenate([p["ids"] for p in parts]), labels, ts,
        np.concatenate([p["groups"] for p in parts]), items,
        OBD_DENSE_FEATURES, OBD_ID_FEATURES, "obd", f"obd{where}:{'+'.join(policies)} ({obd_dir})",
        extra={"ranking_groups": "user segment (user_feature_0..3)", "obd_campaign": campaign},
        ctr_feature=OBD_CTR_FEATURE,
    )
    return ds


def parse_obd_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """``obd[/CAMPAIGN][:POLICY[+POLICY]]`` -> (campaign, policies); e.g. ``obd``, ``obd:bts``,
    ``obd/men``, ``obd/women:random``. Unknown campaign or policy names are refused by ``obd_files``."""
    head, _, pols = spec.partition(":")
    campaign = head.split("/", 1)[1] if "/" in head else "all"
    if head.split("/", 1)[0] != "obd" or not campaign:
        raise DataError(f"bad Open Bandit spec {spec!r} (expected obd[/CAMPAIGN][:POLICY[+POLICY]])")
    return campaign, tuple(pols.split("+")) if pols else OBD_POLICIES  # names checked by obd_files


# --------------------------------------------------------------------------------------------
# reading tables


def read_table(path: Path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
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


# --------------------------------------------------------------------------------------------
# (c) raw events replayed through the offline feature store


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


# --------------------------------------------------------------------------------------------
# (b) logged impressions


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


def impressions_to_rows(impressions: list, categories: dict[str, str] | None = None) -> list[dict]:
    """Flatten ``recpilot.v1.Impression`` messages into table rows (one per shown item).

    The snapshot is read as ``"<position>:<feature>"`` (what services/inference logs), or
    ``"<position>.<feature>"`` / ``"<item_id>.<feature>"``; a feature missing for an item is 0, and an
    item with no snapshot value at all (a fallback response) is skipped.
    ``categories`` (item -> category, from the events' context) restores the category id column,
    which the snapshot does not carry, so the ids match what serving computes."""
    categories = categories or {}
    rows = []
    for imp in impressions:
        feats = dict(imp.features)
        for it in imp.items:
            row = {"request_id": imp.request_id, "user_id": imp.user_id, "item_id": it.item_id,
                   "position": it.position, "timestamp_ms": imp.timestamp_ms,
                   "category": categories.get(it.item_id, "")}
            found = 0
            for f in featurespec.DENSE_FEATURES:
                for key in (f"{it.position}:{f}", f"{it.position}.{f}", f"{it.item_id}.{f}"):
                    if key in feats:
                        row[f] = feats[key]
                        found += 1
                        break
                else:
                    row[f] = 0.0
            if found:  # an item shown without any snapshot (e.g. a fallback list) is no training example
                rows.append(row)
    return rows


def read_kafka(settings, impressions_topic: str, events_topic: str, timeout_s: float = 60.0,
               group_id: str = "recpilot-train") -> tuple[list, list[dict]]:
    """Bounded read of both topics from the beginning up to the high watermarks seen at start.
    Commits nothing (a training read must not move any service's offsets)."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

    from recpilot.kafka import consumer
    from recpilot.pb import events_pb2

    out_imp, out_ev = [], []
    for topic, kind in ((impressions_topic, "imp"), (events_topic, "ev")):
        c = consumer(settings, group_id, **{"enable.partition.eof": False, "socket.timeout.ms": 10000})
        try:
            try:
                md = c.list_topics(topic, timeout=min(timeout_s, 15.0))
            except KafkaException as exc:
                raise DataError(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise DataError(f"Kafka topic {topic!r} does not exist at {settings.kafka_bootstrap}")
            ends = {}
            for p in tmd.partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
                if hi > lo:
                    ends[p] = hi
            if not ends:
                continue
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            import time

            deadline = time.monotonic() + timeout_s
            done: set[int] = set()
            while len(done) < len(ends):
                if time.monotonic() > deadline:
                    raise DataError(f"timed out reading {topic} after {timeout_s}s")
                for m in c.consume(1000, 0.5):
                    if m.error():
                        continue
                    if m.offset() >= ends[m.partition()] - 1:
                        done.add(m.partition())
                    if m.offset() >= ends[m.partition()]:
                        continue
                    if kind == "imp":
                        msg = events_pb2.Impression()
                        msg.ParseFromString(m.value())
                        out_imp.append(msg)
                    else:
                        msg = events_pb2.UserEvent()
                        try:
                            msg.ParseFromString(m.value())
                        except Exception:  # noqa: BLE001 - a foreign message: skip
                            continue
                        out_ev.append({"user_id": msg.user_id, "item_id": msg.item_id, "request_id": msg.request_id,
                                       "event_type": featurespec.EVENT_NAMES.get(msg.event_type, ""),
                                       "timestamp_ms": msg.timestamp_ms,
                                       "category": msg.context.get("category", "")})
        finally:
            c.close()
    return out_imp, out_ev


# --------------------------------------------------------------------------------------------
# one entry point for the CLI


def load_dataset(spec: str, settings: TrainSettings, platform=None, events_path: str | None = None) -> Dataset:
    """``spec``: ``obd[/CAMPAIGN][:POLICY[+POLICY]]`` (``parse_obd_spec``) | ``kafka`` | ``sim[:EVENTS[:SEED]]`` (raw events
    from the shopper simulator) | a .parquet/.csv path (raw events or logged impressions, told apart by
    their columns)."""
    spec = str(spec)
    if spec == "obd" or spec.startswith(("obd:", "obd/")):
        campaign, pols = parse_obd_spec(spec)
        return load_obd(settings.obd_dir, pols, campaign=campaign)
    if spec == "sim" or spec.startswith("sim:"):
        parts = spec.split(":")
        try:
            n = int(parts[1]) if len(parts) > 1 and parts[1] else 100_000
            seed = int(parts[2]) if len(parts) > 2 else 0
        except ValueError:
            raise DataError(f"bad simulator spec {spec!r} (expected sim[:EVENTS[:SEED]])") from None
        return examples_from_events(simulated_events(n, seed), settings.attribution_ms, source=f"simulator:{n}:{seed}")
    if spec == "kafka":
        if platform is None:
            from recpilot.settings import PlatformSettings, load

            platform = load(PlatformSettings)
        imps, evs = read_kafka(platform, settings.impressions_topic, settings.events_topic, settings.kafka_read_timeout_s)
        if not imps:
            raise DataError(f"Kafka topic {settings.impressions_topic!r} holds no impressions: the dataset is empty")
        import pandas as pd

        cats = {e["item_id"]: e["category"] for e in evs if e.get("item_id") and e.get("category")}
        return examples_from_impressions(pd.DataFrame(impressions_to_rows(imps, cats)), evs,
                                         source=f"kafka:{settings.impressions_topic}+{settings.events_topic}")
    df = read_table(Path(spec))
    if "event_type" in df.columns:
        return examples_from_events(events_from_table(df), settings.attribution_ms, source=str(spec))
    outcomes = None
    if events_path:
        outcomes = events_from_table(read_table(Path(events_path)))
    return examples_from_impressions(df, outcomes, source=str(spec))


def simulated_events(n: int, seed: int = 0, start_ms: int = 1_760_000_000_000, gap_ms: int = 200) -> list[dict]:
    """``n`` raw events from the project's shopper simulator (``recpilot.simulator``), as dicts."""
    if n <= 0:
        raise DataError("the simulator was asked for 0 events: the dataset is empty")
    from recpilot.simulator import ShopSimulator

    sim = ShopSimulator(seed=seed, run_id=f"train{seed}")  # fixed ids: the same seed, the same dataset
    out, now = [], start_ms
    for _ in range(n):
        now += gap_ms
        ev = sim.next_event(now)
        out.append({"event_id": ev.event_id, "user_id": ev.user_id, "session_id": ev.session_id,
                    "event_type": featurespec.EVENT_NAMES.get(int(ev.event_type), ""), "item_id": ev.item_id,
                    "price": ev.price, "timestamp_ms": ev.timestamp_ms, "request_id": ev.request_id,
                    "context": dict(ev.context)})
    return out


def synthetic_impressions(n: int, seed: int = 0, n_users: int = 20_000, n_items: int = 5_000,
                          per_request: int = 20):
    """A table of ``n`` logged impressions with the featurespec features and a hidden click model
    (for the training benchmark and tests): returns a pandas DataFrame in the exported format (b)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_req = (n + per_request - 1) // per_request
    users = rng.integers(0, n_users, n_req)
    req_ts = np.sort(rng.integers(1_700_000_000_000, 1_700_000_000_000 + 7 * 86_400_000, n_req))
    item_pop = rng.zipf(1.3, n_items).clip(1, 10_000).astype(np.float64)
    item_q = rng.normal(0, 1, n_items)
    user_q = rng.normal(0, 0.5, n_users)
    items = rng.choice(n_items, n_req * per_request, p=item_pop / item_pop.sum())[:n]
    r = np.repeat(np.arange(n_req), per_request)[:n]
    pos = (np.arange(n) % per_request) + 1
    views = item_pop[items] * rng.uniform(5, 15, n)
    clicks = views * (0.04 * np.exp(0.6 * item_q[items])) * rng.uniform(0.8, 1.2, n)
    df = pd.DataFrame({
        "request_id": [f"r{x}" for x in r], "user_id": [f"u{u}" for u in users[r]],
        "item_id": [f"i{x}" for x in items], "position": pos, "timestamp_ms": req_ts[r],
        "category": [f"c{x % 50}" for x in items],
    })
    f = {name: np.zeros(n) for name in featurespec.DENSE_FEATURES}
    f["item_log_views"] = np.log1p(views)
    f["item_log_clicks"] = np.log1p(clicks)
    f["item_log_carts"] = np.log1p(clicks * 0.3)
    f["item_log_purchases"] = np.log1p(clicks * 0.1)
    f["item_log_views_1h"] = np.log1p(views / 100)
    f["item_log_clicks_1h"] = np.log1p(clicks / 100)
    f["item_log_views_24h"] = np.log1p(views / 10)
    f["item_log_clicks_24h"] = np.log1p(clicks / 10)
    f["item_log_purchases_24h"] = np.log1p(clicks / 100)
    f["item_ctr"] = (clicks + 1) / (views + 20)
    f["item_log_price"] = np.log1p(rng.lognormal(3, 1, n_items)[items])
    aff = rng.exponential(1.0, n) * (rng.random(n) < 0.4)
    f["user_cat_affinity"] = np.log1p(aff)
    f["user_cat_affinity_share"] = aff / (aff + 3.0)
    f["user_viewed_item"] = (rng.random(n) < 0.1).astype(float)
    f["user_clicked_item"] = (rng.random(n) < 0.03).astype(float)
    f["user_bought_item"] = (rng.random(n) < 0.01).astype(float)
    f["user_log_session_events"] = np.log1p(rng.integers(1, 30, n))
    for k, v in f.items():
        df[k] = v.astype(np.float32)
    logit = (-2.5 + 0.9 * item_q[items] + 0.6 * user_q[users[r]] + 1.5 * f["user_cat_affinity"]
             + 1.0 * f["user_viewed_item"] - 0.15 * (pos - 1))
    df["label"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return df
