"""Source: the Open Bandit Dataset (``--data obd[/CAMPAIGN][:POLICY[+POLICY]]``, feature_set "obd").

Each log row joined with the item_context.csv beside it. dense = [item_feature_0, the user-item
affinity for the shown item, position one-hot (3), item_ctr]; ids = hashed user_feature_0..3,
item_id, item_feature_1..3. ``item_ctr`` is the item's smoothed click rate point in time
(:func:`~.dataset.point_in_time_ctr`: only rows with an earlier timestamp);
:meth:`~.dataset.Dataset.split_time` freezes it on the later side at the earlier side's counts, so
a holdout row knows exactly what the popularity baseline knows. Groups are user segments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recpilot import featurespec
from recpilot.models.data.dataset import DataError, DataNotFound, Dataset, point_in_time_ctr
from recpilot.paths import CACHE_DIR

OBD_ID_FEATURES = (
    ("user_feature_0", 1_000), ("user_feature_1", 1_000), ("user_feature_2", 1_000), ("user_feature_3", 1_000),
    ("item_id", 1_000), ("item_feature_1", 1_000), ("item_feature_2", 1_000), ("item_feature_3", 1_000),
)
OBD_DENSE_FEATURES = ("item_feature_0", "user_item_affinity", "position_1", "position_2", "position_3", "item_ctr")
OBD_CTR_FEATURE = "item_ctr"  # the point-in-time item click rate (see point_in_time_ctr)
OBD_POLICIES = ("random", "bts")
OBD_CAMPAIGNS = ("all", "men", "women")  # the dataset's three campaigns: 80, 34 and 46 items
OBD_SAMPLE_DIR = CACHE_DIR / "obd-sample"  # `recpilot setup --obd-sample` (recpilot.models.obd_sample)
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
    segments): one pointer a row instead of a string object each."""
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
                raise DataNotFound(f"Open Bandit data file not found: {ctx_path} (the item features beside {log_path.name})")
            return log_path, ctx_path
    hint = " (set RECPILOT_TRAIN_OBD_DIR)"
    if campaign != "all":
        hint = (f" (the sample beside the checkout has the 'all' campaign only: `recpilot setup --obd-sample` "
                f"fetches the sample of all three campaigns into {OBD_SAMPLE_DIR}; then set "
                f"RECPILOT_TRAIN_OBD_DIR={OBD_SAMPLE_DIR})")
    raise DataNotFound(f"Open Bandit data file not found: {' or '.join(str(t) for t in tried)}{hint}")


def load_obd(obd_dir: Path, policies: tuple[str, ...] = OBD_POLICIES, chunk_rows: int = OBD_CHUNK_ROWS,
             campaign: str = "all") -> Dataset:
    """The Open Bandit logs of ``policies`` for one ``campaign`` (files: ``obd_files``).

    The logs are read ``chunk_rows`` at a time and only compact per-row arrays are kept (dense
    float32, int64 ids, label, time, and pointers to shared item / segment strings) instead of a whole
    100-column frame, so the full dataset (26M rows) fits in memory on an ordinary machine. The result does not depend on the chunk size (tested)."""
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
