"""Impressions with a logged pool and their rewards, as services/inference and rl_feedback write
them, for the logged-slates readers' tests (recpilot.rl.logs)."""

from __future__ import annotations

import numpy as np

from recpilot.featurespec import DENSE_FEATURES
from recpilot.pb import events_pb2

D = len(DENSE_FEATURES)


def pool_dense(r: int, m: int) -> np.ndarray:
    """Request ``r``'s pool inputs [m, D]: distinct, exactly representable in float32."""
    return (np.arange(m * D, dtype=np.float32).reshape(m, D) + 1000 * r) / 8


def impression(r: int, m: int = 4, shown=(2, 0), props=(0.5, 0.25), with_pool: bool = True) -> events_pb2.Impression:
    """Request ``r``: a pool of ``m`` items ``i<r>-<row>``, slot j showing pool row ``shown[j]``."""
    imp = events_pb2.Impression(request_id=f"r{r}", user_id=f"u{r % 3}", timestamp_ms=1_000 + r,
                                exploration="epsilon_greedy:0.1", policy_version="1")
    ids = [f"i{r}-{a}" for a in range(m)]
    if with_pool:
        imp.pool_item_ids.extend(ids)
        imp.pool_scores.extend([0.5 / (a + 1) for a in range(m)])
        imp.pool_dense.extend(pool_dense(r, m).reshape(-1).tolist())
    for j, (row, p) in enumerate(zip(shown, props)):
        imp.items.add(item_id=ids[row], position=j + 1, score=0.5 / (row + 1), propensity=p,
                      pool_index=row if with_pool else 0)
    return imp


def reward(imp: events_pb2.Impression, item_id: str, value: float) -> events_pb2.Reward:
    it = next(i for i in imp.items if i.item_id == item_id)
    return events_pb2.Reward(request_id=imp.request_id, user_id=imp.user_id, item_id=item_id, position=it.position,
                             propensity=it.propensity, reward=value, clicked=value > 0,
                             impression_ts_ms=imp.timestamp_ms)
