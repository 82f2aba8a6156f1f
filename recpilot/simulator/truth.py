"""Ground truth of the shopper simulator, for *measuring* policies (never for learning them).

The click model (:class:`recpilot.simulator.shoppers.ClickModel`) is known, so for a shopper and any
shown list the true click probability of every slot is exact:
``P(click in slot j) = examine(j) * attract(user, item_j)`` (position-based model, 1-based slots).
For a slate *policy* that shows pool item ``a`` in slot ``j`` with marginal probability ``P[j, a]``
(``recpilot.rl.slate.marginals``), the expected clicks are ``sum_j sum_a P[j, a] * examine(j+1) *
attract(user, a)`` and its value ("CTR" in every report: clicks per shown item) that sum divided by
the number of slots.

Nothing that learns (a policy, a model, a feature) may call this module: it reads the shoppers'
hidden tastes and the items' hidden quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recpilot.simulator.shoppers import ClickModel, User


class Truth:
    """Click probabilities of a :class:`~recpilot.simulator.traffic.ShopSimulator`'s shoppers."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.click_model: ClickModel = sim.click_model

    def user(self, user_id: str) -> User:
        """The shopper behind ``user_id`` (``user-NNNNNN``)."""
        return self.sim.population.user(int(str(user_id).rsplit("-", 1)[-1]))

    def attractiveness(self, user: User | str, item_ids: Sequence[str], elapsed_s: float = 0.0) -> np.ndarray:
        """``attract(user, item)`` for each item (0 for an id the catalogue does not hold)."""
        u = self.user(user) if isinstance(user, str) else user
        cm, by_id = self.click_model, self.sim.by_id
        return np.array([cm.attractiveness(u, by_id[i], elapsed_s) if i in by_id else 0.0 for i in item_ids])

    def examine(self, k: int) -> np.ndarray:
        """``P(examine slot j)`` for slots 1..k."""
        return np.array([self.click_model.examine(j) for j in range(1, k + 1)])

    def slot_click_probabilities(self, user: User | str, shown_item_ids: Sequence[str],
                                 elapsed_s: float = 0.0) -> np.ndarray:
        """The true click probability of every slot of the shown list (slot 1 first)."""
        return self.examine(len(shown_item_ids)) * self.attractiveness(user, shown_item_ids, elapsed_s)

    def list_click_probability(self, user: User | str, shown_item_ids: Sequence[str], elapsed_s: float = 0.0) -> dict:
        """The list as a whole: expected clicks, the chance of at least one click, and the CTR
        (expected clicks per shown item). Slots are clicked independently given the shopper."""
        p = self.slot_click_probabilities(user, shown_item_ids, elapsed_s)
        return {"expected_clicks": float(p.sum()), "p_any_click": float(1.0 - np.prod(1.0 - p)),
                "ctr": float(p.mean()) if len(p) else 0.0}

    def slate_value(self, marginals: np.ndarray, attract: np.ndarray) -> float:
        """CTR of a slate policy with marginals ``P`` ``[k, M]`` over a pool with ``attract`` ``[M]``:
        ``sum_j sum_a P[j, a] * examine(j + 1) * attract[a] / k``."""
        return expected_clicks(marginals, attract, self.examine(marginals.shape[0])) / max(marginals.shape[0], 1)

    def policy_value(self, logs, target, k: int | None = None) -> dict:
        """The exact value of ``target`` (anything with ``marginals(x, k)``) on the contexts of
        ``logs`` (a ``LoggedSlates`` whose ``meta`` holds ``users``, ``pool_item_ids`` and
        ``elapsed_s`` per decision, as :class:`recpilot.rl.fastshop.FastShop` writes them):
        ``{"value": mean CTR, "per_decision": [N], "k": k}``."""
        return policy_value(logs, target, k, truth=self)


def expected_clicks(marginals: np.ndarray, attract: np.ndarray, examine: np.ndarray) -> float:
    """``sum_j sum_a P[j, a] * examine[j] * attract[a]``."""
    p = np.asarray(marginals, dtype=np.float64)
    return float(np.asarray(examine, dtype=np.float64)[: p.shape[0]] @ (p @ np.asarray(attract, dtype=np.float64)))


def policy_value(logs, target, k: int | None = None, truth: Truth | None = None) -> dict:
    """Module-level form of :meth:`Truth.policy_value` (the truth comes from ``logs.meta["truth"]``
    unless given)."""
    truth = truth or logs.meta.get("truth")
    if truth is None:
        raise ValueError("these logs carry no simulator truth (meta['truth']); only FastShop logs do")
    meta = logs.meta
    k = int(k or logs.k)
    values = np.empty(logs.n)
    for i in range(logs.n):
        x = logs.pool(i)
        pool = meta["pool_item_ids"][i]
        a = truth.attractiveness(meta["users"][i], pool, float(meta["elapsed_s"][i]))
        p = np.asarray(target.marginals(x, k))
        values[i] = truth.slate_value(p, a)
    return {"value": float(values.mean()) if logs.n else 0.0, "per_decision": values, "k": k}
