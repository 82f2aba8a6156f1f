"""The inputs of a re-ranking policy, per pool item: the ranker's dense inputs and its score.

Serving, the learner, the simulator and off-policy evaluation all build them with
:func:`policy_inputs`, so a policy sees the same columns everywhere. The user's state enters
through the user-item columns of the ranker's input (category affinity, seen/clicked/bought,
session length; ``featurespec.DENSE_FEATURES``).
"""

from __future__ import annotations

import numpy as np

from recpilot.featurespec import DENSE_FEATURES

POLICY_FEATURES: tuple[str, ...] = (*DENSE_FEATURES, "ranker_score")


def policy_inputs(dense: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """float32 ``[M, len(POLICY_FEATURES)]`` from the pool's dense rows ``[M, D]`` and scores ``[M]``."""
    dense = np.asarray(dense, dtype=np.float32).reshape(len(scores), len(DENSE_FEATURES))
    return np.concatenate([dense, np.asarray(scores, dtype=np.float32).reshape(-1, 1)], axis=1)
