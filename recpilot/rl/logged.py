"""Logged slates: what off-policy evaluation and the learner read, from any source.

``LoggedSlates`` holds N logged decisions of a slate policy, padded to the largest pool ``M`` and
``K`` slots: for each decision the pool (every item's policy inputs), which pool item each slot
showed, the logging policy's marginal propensity of that (slot, item), and the reward observed in
the slot. Sources fill it: recpilot's ``impressions`` + ``rewards`` topics (or a file written from
them), the in-process simulator, and the Open Bandit Dataset.

A *target policy* for evaluation is anything with ``marginals(x, k) -> P`` where ``x`` is one
decision's pool ``[M, F]`` (real rows only) and ``P[j, a]`` the probability that the target shows
pool item ``a`` in slot ``j`` (``[k, M]``, rows summing to 1): :class:`ValuePolicy` turns any value
function into one with the stratified rules of :mod:`recpilot.rl.slate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recpilot.rl.slate import Exploration, marginals


@dataclass
class LoggedSlates:
    x: np.ndarray           # float32 [N, M, F]: pool items' inputs (zero rows past the pool's end)
    mask: np.ndarray        # bool [N, M]: True for real pool rows
    shown: np.ndarray       # int64 [N, K]: pool row shown in slot j (-1: slot empty)
    propensity: np.ndarray  # float64 [N, K]: logging policy's marginal P(slot j shows that item)
    reward: np.ndarray      # float64 [N, K]: reward observed in slot j (0 for empty slots)
    features: list[str]     # the F input names
    request_ids: list[str] | None = None
    source: str = ""        # where the logs came from, for reports
    meta: dict = field(default_factory=dict)  # per-source extras (e.g. the simulator's truth handles)

    def __post_init__(self) -> None:
        n, m, f = self.x.shape
        k = self.shown.shape[1] if self.shown.ndim == 2 else 0
        for name, arr, shape in (("mask", self.mask, (n, m)), ("shown", self.shown, (n, k)),
                                 ("propensity", self.propensity, (n, k)), ("reward", self.reward, (n, k))):
            if arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
        if len(self.features) != f:
            raise ValueError(f"{len(self.features)} feature names for {f} input columns")

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def k(self) -> int:
        return int(self.shown.shape[1])

    def pool(self, i: int) -> np.ndarray:
        """Decision ``i``'s pool ``[M_i, F]`` (real rows only)."""
        return self.x[i, self.mask[i]]

    def take(self, idx: np.ndarray) -> LoggedSlates:
        """The decisions ``idx`` (for bootstrap resampling and splits)."""
        return LoggedSlates(self.x[idx], self.mask[idx], self.shown[idx], self.propensity[idx], self.reward[idx],
                            list(self.features), [self.request_ids[i] for i in idx] if self.request_ids else None,
                            self.source, dict(self.meta))


class TargetPolicy(Protocol):
    def marginals(self, x: np.ndarray, k: int) -> np.ndarray:
        """``P[j, a]`` for one pool ``x`` ``[M, F]``: shape ``[min(k, M), M]``."""


@dataclass
class ValuePolicy:
    """A slate policy from a value function over pool rows and an exploration rule."""

    values: Callable[[np.ndarray], np.ndarray]  # [M, F] -> [M]
    exploration: Exploration
    name: str = ""

    def marginals(self, x: np.ndarray, k: int) -> np.ndarray:
        return marginals(self.values(x), k, self.exploration)
