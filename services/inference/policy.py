"""Re-ranking policies (pluggable). A learned re-ranking policy plugs in here.

A policy turns the ranker's scores into the shown order and, for every shown slot, the
probability that the policy put that item there (the propensity logged with the impression for
off-policy evaluation). The default keeps the ranker's order with exploration off: deterministic,
so every propensity is 1.0.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Policy(Protocol):
    version: str

    def rerank(self, user: dict, item_ids: list[str], scores: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        """Indices into ``item_ids`` for slots 1..k, and the propensity of each."""


class RankerOrderPolicy:
    """The ranker's order, highest score first (ties by candidate order), exploration off."""

    version = "ranker-order"

    def rerank(self, user: dict, item_ids: list[str], scores: np.ndarray, k: int) -> tuple[list[int], list[float]]:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
        idx = [int(i) for i in order]
        return idx, [1.0] * len(idx)


class PolicyRegistry:
    """Maps the deployment state's ``policy_version`` to a policy object.

    Until a learned policy is registered (``register(version, policy)``), every version resolves
    to the ranker's order, and the logged policy version says so.
    """

    def __init__(self, default: Policy | None = None) -> None:
        self.default = default or RankerOrderPolicy()
        self._policies: dict[str, Policy] = {}

    def register(self, version: str, policy: Policy) -> None:
        self._policies[version] = policy

    def get(self, version: str) -> Policy:
        return self._policies.get(version, self.default) if version else self.default
