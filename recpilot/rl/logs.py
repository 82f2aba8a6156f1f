"""Readers of logged slates (:class:`recpilot.rl.logged.LoggedSlates`) from every source.

* :func:`from_kafka`: recpilot's own logs. Every ``Impression`` on ``impressions`` that carries its
  pool (``pool_item_ids``, ``pool_scores``, ``pool_dense``) is one decision: the pool's policy
  inputs are ``recpilot.rl.features.policy_inputs(dense, scores)``, slot ``position - 1`` showed
  pool row ``items[].pool_index`` with the logged marginal ``propensity``. The ``Reward`` messages
  on ``rewards`` (one per (request_id, item_id)) give each slot its reward. An impression without a
  pool cannot be replayed and is skipped; one whose shown items do not all have a reward yet (the
  attribution window is still open) is left out. Both are counted in ``meta``.
* :func:`to_file` / :func:`from_file`: the arrays in one ``.npz`` file (``recpilot ope --logs PATH``).
* :func:`from_obd`: the Open Bandit Dataset (``propensity_score`` is the marginal probability of the
  item at its position). See the function for how rows become decisions.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from recpilot.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from recpilot.rl.features import POLICY_FEATURES, policy_inputs
from recpilot.rl.logged import LoggedSlates

FILE_FORMAT = "recpilot.logged_slates.v1"


# --- files ---------------------------------------------------------------------------------------

def to_file(logs: LoggedSlates, path: str | Path) -> Path:
    """Write ``logs`` to ``path`` (``.npz``, compressed): the arrays, feature names, request ids,
    source and ``meta`` (JSON)."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, format=np.array(FILE_FORMAT), x=logs.x.astype(np.float32), mask=logs.mask.astype(bool),
        shown=logs.shown.astype(np.int64), propensity=logs.propensity.astype(np.float64),
        reward=logs.reward.astype(np.float64), features=np.array(list(logs.features), dtype=str),
        request_ids=np.array(logs.request_ids if logs.request_ids is not None else [], dtype=str),
        has_request_ids=np.array(logs.request_ids is not None), source=np.array(logs.source),
        meta=np.array(json.dumps(logs.meta, default=str)))
    return path


def from_file(path: str | Path) -> LoggedSlates:
    """Logged slates written by :func:`to_file`."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"logged slates file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FILE_FORMAT:
                raise InvalidArgument(f"{path} is not a logged slates file ({FILE_FORMAT}; write one with recpilot.rl.logs.to_file)")
            rids = [str(r) for r in z["request_ids"]] if bool(z["has_request_ids"]) else None
            return LoggedSlates(z["x"], z["mask"], z["shown"], z["propensity"], z["reward"],
                                [str(f) for f in z["features"]], rids, str(z["source"]), json.loads(str(z["meta"])))
    except InvalidArgument:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidArgument(f"cannot read logged slates from {path}: {exc}") from exc


# --- recpilot's impressions + rewards on Kafka -----------------------------------------------------

def _decision(imp, rewards: dict, n_dense: int):
    """One impression as (x [M, F], shown {slot: row}, propensity {slot: p}, reward {slot: r}) or a
    reason it is not a decision: "no_pool", "malformed", "no_reward"."""
    m = len(imp.pool_item_ids)
    if m == 0:
        return "no_pool"
    if len(imp.pool_scores) != m or len(imp.pool_dense) != m * n_dense:
        return "malformed"
    shown, prop, rew = {}, {}, {}
    for it in imp.items:
        slot = it.position - 1
        row = it.pool_index
        if not 0 <= row < m or imp.pool_item_ids[row] != it.item_id:
            return "malformed"
        if slot < 0 or slot in shown:
            return "malformed"
        r = rewards.get((imp.request_id, it.item_id))
        if r is None:
            return "no_reward"
        shown[slot], prop[slot], rew[slot] = row, float(it.propensity), r
    if not shown:
        return "malformed"
    x = policy_inputs(np.asarray(imp.pool_dense, dtype=np.float32).reshape(m, n_dense),
                      np.asarray(imp.pool_scores, dtype=np.float32))
    return x, shown, prop, rew


def assemble(impressions: Iterable, rewards: dict[tuple[str, str], float], source: str = "",
             keep_last: int | None = None) -> LoggedSlates:
    """Join ``Impression`` messages with ``rewards`` ((request_id, item_id) -> reward) into logged
    slates, padded to the largest pool and slot count. ``meta`` counts what was left out (over every
    impression given). ``keep_last``: only the last that many decisions are kept, and only they are
    held in memory while the rest stream past (``impressions`` may be a generator)."""
    from recpilot.featurespec import DENSE_FEATURES

    counts = {"impressions": 0, "no_pool": 0, "malformed": 0, "no_reward": 0, "duplicates": 0}
    seen: set[str] = set()
    rows: deque | list = deque(maxlen=keep_last) if keep_last is not None else []
    for imp in impressions:
        counts["impressions"] += 1
        if imp.request_id in seen:  # an impression logged twice (a retried produce): once
            counts["duplicates"] += 1
            continue
        seen.add(imp.request_id)
        d = _decision(imp, rewards, len(DENSE_FEATURES))
        if isinstance(d, str):
            counts[d] += 1
        else:
            rows.append((imp.request_id, *d))
    n = len(rows)
    m = max((r[1].shape[0] for r in rows), default=0)
    k = max((max(r[2]) + 1 for r in rows), default=0)
    f = len(POLICY_FEATURES)
    x = np.zeros((n, m, f), np.float32)
    mask = np.zeros((n, m), bool)
    shown = np.full((n, k), -1, np.int64)
    prop = np.zeros((n, k))
    reward = np.zeros((n, k))
    for i, (_rid, xi, sh, pr, rw) in enumerate(rows):
        x[i, : len(xi)] = xi
        mask[i, : len(xi)] = True
        for j in sh:
            shown[i, j], prop[i, j], reward[i, j] = sh[j], pr[j], rw[j]
    counts["decisions"] = n
    return LoggedSlates(x, mask, shown, prop, reward, list(POLICY_FEATURES), [r[0] for r in rows], source, counts)


def from_kafka(settings, since_ms: int | None = None, max_impressions: int | None = None, *,
               impressions_topic: str | None = None, rewards_topic: str | None = None,
               timeout_s: float = 60.0) -> LoggedSlates:
    """recpilot's logged decisions now on Kafka: ``impressions`` joined with ``rewards`` by
    ``request_id`` (``settings``: :class:`recpilot.settings.PlatformSettings`).

    A bounded read of both topics up to the ends seen at the start, without a consumer group (no
    service's offsets move). ``since_ms``: only impressions logged (Kafka timestamp) at or after it;
    ``max_impressions``: only the latest that many decisions (by impression time, after the join; the
    decisions come in time order). ``meta`` counts the
    impressions read, those without a pool, malformed ones, those still without rewards, duplicates,
    and the rewards read."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException

    from recpilot.kafka import TopicReader
    from recpilot.pb import events_pb2
    from recpilot.topics import IMPRESSIONS, REWARDS

    imp_topic = impressions_topic or IMPRESSIONS
    rew_topic = rewards_topic or REWARDS
    if max_impressions is not None and max_impressions < 1:
        raise InvalidArgument(f"max_impressions must be >= 1, got {max_impressions}")
    # (impression time, serialized message): the bytes are several times smaller than the parsed
    # message, and only the decisions kept are ever held as arrays (the policy gate reads a window
    # of every impression but keeps the latest few thousand; holding them all parsed made
    # rl_feedback's memory jump by hundreds of MiB per gate at 30 requests/s, docs/benchmarks.md "soak")
    impressions: list[tuple[int, bytes]] = []
    first_ts = [None]

    def on_impression(msg) -> None:
        imp = events_pb2.Impression()
        raw = msg.value()
        try:
            imp.ParseFromString(raw)
        except Exception:  # noqa: BLE001 - a foreign message: not a decision
            return
        ts = msg.timestamp()[1]
        first_ts[0] = ts if first_ts[0] is None else min(first_ts[0], ts)
        impressions.append((imp.timestamp_ms, raw))

    rewards: dict[tuple[str, str], float] = {}
    dup_rewards = [0]

    def on_reward(msg) -> None:
        rw = events_pb2.Reward()
        try:
            rw.ParseFromString(msg.value())
        except Exception:  # noqa: BLE001
            return
        key = (rw.request_id, rw.item_id)
        if key in rewards:
            dup_rewards[0] += 1  # the joiner publishes one per (request, item); a replayed one is the same
            return
        rewards[key] = float(rw.reward)

    def read(topic: str, on_message, start_ms: int | None) -> None:
        with TopicReader(settings, topic, group_id="recpilot-ope", **{"socket.timeout.ms": 10000}) as reader:
            try:
                parts = reader.partitions(timeout=min(timeout_s, 15.0))
                if not parts:
                    raise NotFound(f"Kafka topic {topic!r} does not exist at {settings.kafka_bootstrap}")
                ends = reader.end_offsets(parts)
                starts = {p: OFFSET_BEGINNING for p in parts}
                if start_ms is not None:
                    found = reader.offsets_for_time(int(start_ms), parts)
                    starts = {p: (o if o >= 0 else ends[p]) for p, o in found.items()}
            except KafkaException as exc:
                raise Unavailable(f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}") from exc
            left = reader.read(starts, on_message, timeout_s, until=ends)
            if left:
                raise Unavailable(f"timed out reading {topic} after {timeout_s}s (partitions {sorted(left)} not read)")

    t0 = time.monotonic()
    read(imp_topic, on_impression, since_ms)
    # a reward is published after its impression: with a window, read the rewards from its start
    read(rew_topic, on_reward, first_ts[0] if since_ms is not None else None)
    impressions.sort(key=lambda m: m[0])  # decisions in time order (partitions interleave; stable)

    def parsed():
        for _, raw in impressions:
            imp = events_pb2.Impression()
            imp.ParseFromString(raw)
            yield imp

    logs = assemble(parsed(), rewards, source=f"kafka:{imp_topic}+{rew_topic}", keep_last=max_impressions)
    logs.meta.update(rewards=len(rewards), duplicate_rewards=dup_rewards[0], read_s=round(time.monotonic() - t0, 3))
    return logs


# --- the Open Bandit Dataset ------------------------------------------------------------------------

OBD_USER_BUCKETS = 4  # user_feature_k values hashed into this many one-hot columns each (x is [rows, items, F]: kept small)


def obd_features(item_categories: dict[str, list[str]]) -> list[str]:
    """The input columns of an Open Bandit pool item (see :func:`from_obd`)."""
    names = [f"user_feature_{u}#{b}" for u in range(4) for b in range(OBD_USER_BUCKETS)]
    names += ["user_item_affinity", "item_feature_0"]
    for col, cats in item_categories.items():
        names += [f"{col}={c}" for c in cats]
    return names


def from_obd(obd_dir: str | Path, policy: str = "random", campaign: str = "all") -> LoggedSlates:
    """The Open Bandit logs of ``policy`` (``random`` or ``bts``) for ``campaign`` as logged slates.

    **One decision per row**: the dataset logs one row per (impression, position), and the rows of
    one impression share its timestamp and user features; but the sample is a random subset of rows
    (almost every timestamp occurs once: the three rows of an impression are rarely all there), so
    rows cannot be grouped into their impressions reliably. Each row is a decision with one logged
    slot, at its ``position`` (slot ``position - 1`` of ``k = 3``), whose pool is the campaign's whole
    item set; the reward is ``click`` and the propensity ``propensity_score`` (the logging policy's
    marginal probability of that item at that position, which is what slot-level estimators need).

    Inputs of pool item ``a`` (:func:`obd_features`): the row's four user features, each hashed into
    :data:`OBD_USER_BUCKETS` one-hot columns; the user's affinity for ``a``
    (``user-item_affinity_<a>``); ``item_feature_0``; one-hots of ``item_feature_1..3`` (no item-id
    one-hot: ``item_feature_0`` already tells the items apart, and x is [rows, items, F]). The
    categorical item features are hashed separately in each folder, so a category is named by the
    smallest item id in it (``item_feature_1=i3``): the names, and so a model fitted on ``bts``,
    carry over to ``random``. User feature hashes agree between the sample's folders for the values
    seen, but a bucket may hold several values."""
    import pandas as pd

    from recpilot import featurespec
    from recpilot.models.data.obd import obd_files

    log_path, ctx_path = obd_files(Path(obd_dir), policy, campaign)
    try:
        df = pd.read_csv(log_path, index_col=0)
        ctx = pd.read_csv(ctx_path, index_col=0).sort_values("item_id").reset_index(drop=True)
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds
        raise InvalidArgument(f"cannot read Open Bandit data in {log_path.parent}: {exc}") from exc
    need = {"item_id", "position", "click", "propensity_score"} | {f"user_feature_{u}" for u in range(4)}
    missing = need - set(df.columns)
    if missing:
        raise InvalidArgument(f"{log_path}: missing columns {sorted(missing)}")
    if df.empty:
        raise FailedPrecondition(f"{log_path}: no rows")
    n_items = int(ctx["item_id"].max()) + 1
    if list(ctx["item_id"]) != list(range(n_items)):
        raise InvalidArgument(f"{ctx_path}: item ids are not 0..{n_items - 1}")
    item_ids = df["item_id"].to_numpy(np.int64)
    if item_ids.min() < 0 or item_ids.max() >= n_items:
        raise InvalidArgument(f"{log_path}: item ids outside {ctx_path}")
    # item block [n_items, G]: item_feature_0, then categorical one-hots named by the smallest member
    cats: dict[str, list[str]] = {}
    blocks = [ctx[["item_feature_0"]].to_numpy(np.float32)]
    for col in ("item_feature_1", "item_feature_2", "item_feature_3"):
        if col not in ctx.columns:
            raise InvalidArgument(f"{ctx_path}: missing column {col}")
        first = sorted(ctx.groupby(col)["item_id"].min().to_dict().items(), key=lambda kv: kv[1])
        index = {v: j for j, (v, _a) in enumerate(first)}
        cats[col] = [f"i{a}" for _v, a in first]
        oh = np.zeros((n_items, len(first)), np.float32)
        oh[np.arange(n_items), [index[v] for v in ctx[col]]] = 1.0
        blocks.append(oh)
    item_block = np.concatenate(blocks, axis=1)
    n = len(df)
    user = np.zeros((n, 4 * OBD_USER_BUCKETS), np.float32)
    for u in range(4):
        uniq, inv = np.unique(df[f"user_feature_{u}"].astype(str).to_numpy(), return_inverse=True)
        b = np.array([featurespec.stable_hash(f"user_feature_{u}:{v}", OBD_USER_BUCKETS) for v in uniq])
        user[np.arange(n), u * OBD_USER_BUCKETS + b[inv.reshape(-1)]] = 1.0
    features = obd_features(cats)
    x = np.empty((n, n_items, len(features)), np.float32)
    nu = user.shape[1]
    x[:, :, :nu] = user[:, None, :]
    for a in range(n_items):
        col = f"user-item_affinity_{a}"
        x[:, a, nu] = df[col].to_numpy(np.float32) if col in df.columns else 0.0
    x[:, :, nu + 1:] = item_block[None, :, :]
    pos = df["position"].to_numpy(np.int64)
    if pos.min() < 1:
        raise InvalidArgument(f"{log_path}: positions must be 1-based")
    k = int(pos.max())
    shown = np.full((n, k), -1, np.int64)
    prop = np.zeros((n, k))
    reward = np.zeros((n, k))
    rows = np.arange(n)
    shown[rows, pos - 1] = item_ids
    prop[rows, pos - 1] = df["propensity_score"].to_numpy(np.float64)
    reward[rows, pos - 1] = df["click"].to_numpy(np.float64)
    where = "" if campaign == "all" else f"/{campaign}"
    return LoggedSlates(x, np.ones((n, n_items), bool), shown, prop, reward, features, None, f"obd{where}:{policy}",
                        {"rows": n, "clicks": int(reward.sum()), "items": n_items,
                         "decision": "one row: one slot at its position, the pool all items", "path": str(log_path)})
