"""What every training data source shares: the :class:`Dataset` shape, the errors, the settings.

A :class:`Dataset` holds dense features, hashed id features and labels, plus per row a timestamp
(for the time-based holdout split), a group key (request, session or user segment, for recall@K /
NDCG@K) and the item id (for the popularity baseline). The item click rate helpers
(:func:`point_in_time_ctr`, :func:`frozen_ctr`) keep a click-rate feature free of leakage across
that split.

Errors: :class:`DataError` is a usage error (exit 2): the data named by ``--data`` is missing,
malformed, unreadable or empty, and the caller must name other data. :class:`DataNotFound` (a file
or topic that is not there) answers NOT_FOUND over gRPC; :class:`DataUnavailable` (Kafka cannot be
read now) is a failure (exit 1, UNAVAILABLE): the same command may succeed later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from recpilot.errors import EXIT_FAILURE, NotFound, Unavailable, UsageError
from recpilot.paths import SHARED_DIR
from recpilot.settings import RecpilotSettings

POSITIVE_TYPES = {"CLICK", "PURCHASE"}  # event types that label an example 1


class DataError(UsageError):
    """The training data is missing, unreadable or empty; the message says which and why."""


class DataNotFound(DataError, NotFound):
    """A data file, directory or topic named by the data spec does not exist. Still exit 2 (the
    caller must change what they typed), NOT_FOUND over gRPC."""

    grpc_status = grpc.StatusCode.NOT_FOUND


class DataUnavailable(DataError, Unavailable):
    """The data cannot be read now (Kafka unreachable, a read that timed out); retrying may succeed."""

    grpc_status = grpc.StatusCode.UNAVAILABLE
    exit_code = EXIT_FAILURE


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
    from pandas.api.types import infer_dtype  # a C loop, not a Python loop over every row

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
