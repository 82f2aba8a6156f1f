"""Slates: how a re-ranking policy turns item values into the shown list, with exact propensities.

A re-ranking policy sees a *pool* of M candidate items (the ranker's top M) with a value per item
(the ranker's score, or a learned Q-value) and fills k slots. Every rule here is **stratified**:

* sort the pool by value, best first (ties by pool order): ``order = [g_1, g_2, ..., g_M]``;
* slot j (0-based) draws only from its own group ``G_j = [g_j, g_{j+k}, g_{j+2k}, ...]``;
  the groups are disjoint, so the k slots are drawn independently and never repeat an item;
* inside its group a slot takes the best item (``greedy``), the best with probability
  ``1 - epsilon`` and a uniform member otherwise (``epsilon_greedy``), or a member with
  probability ``softmax(value / temperature)`` over the group (``softmax``, Boltzmann).

Because the slots are independent, the probability that the policy shows pool item ``a`` in slot
``j`` — the *marginal* propensity, the one the Open Bandit Dataset logs and slot-level off-policy
estimators need — is exact and cheap: the matrix :func:`marginals` returns, row ``j`` being the
distribution of slot ``j`` over the pool (zero outside ``G_j``). With ``greedy`` it is one-hot and
the shown list is the pool's top k by value.

``uniform`` (a uniformly random ordered k-subset of the pool: every item has marginal ``1/M`` in
every slot) is the exploration baseline; it is not stratified.

**Full support** (``RULE+uniform:U``, e.g. ``epsilon_greedy:0.1+uniform:0.2``): a stratified rule
never shows an item outside its slot's group, so a policy that orders the pool differently has
(slot, item) pairs the logs hold no evidence for (off-policy evaluation is blind there). Mixing a
uniform share fixes that: with probability ``U`` the *whole slate* is a uniformly random ordered
k-subset of the pool, otherwise the base rule draws it. Whichever branch drew it, the marginal of
item ``a`` in slot ``j`` is exactly ``(1 - U) * P_rule[j, a] + U / M`` (the two branches' marginals
mixed), at least ``U / M`` everywhere; that is the propensity logged.

Pure numpy: the serving process, the learner, the simulator and off-policy evaluation share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("greedy", "epsilon_greedy", "softmax", "uniform")


@dataclass(frozen=True)
class Exploration:
    """A slate rule and its parameter. ``str()`` is the form logged in ``Impression.exploration``."""

    rule: str = "greedy"
    epsilon: float = 0.0      # epsilon_greedy: chance a slot explores its group
    temperature: float = 1.0  # softmax: values are divided by it before the softmax
    uniform: float = 0.0      # chance the whole slate is uniformly random instead (full support)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown exploration rule {self.rule!r} (expected one of {', '.join(RULES)})")
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {self.epsilon}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.uniform <= 1.0:
            raise ValueError(f"the uniform share must be in [0, 1], got {self.uniform}")

    def __str__(self) -> str:
        if self.rule == "epsilon_greedy":
            base = f"epsilon_greedy:{self.epsilon:g}"
        elif self.rule == "softmax":
            base = f"softmax:{self.temperature:g}"
        else:
            base = self.rule
        return f"{base}+uniform:{self.uniform:g}" if self.uniform > 0 else base

    @classmethod
    def parse(cls, text: str) -> Exploration:
        """The inverse of ``str()``: ``greedy``, ``uniform``, ``epsilon_greedy:0.1``, ``softmax:0.5``,
        any of them with a uniform share ``+uniform:0.2``."""
        base, plus, mix = (text or "greedy").partition("+")
        uniform = 0.0
        if plus:
            name, _, u = mix.partition(":")
            try:
                if name != "uniform" or not u:
                    raise ValueError("expected RULE+uniform:SHARE")
                uniform = float(u)
            except ValueError as exc:
                raise ValueError(f"bad exploration {text!r}: {exc}") from None
        rule, _, arg = base.partition(":")
        try:
            if rule == "epsilon_greedy":
                return cls(rule, epsilon=float(arg), uniform=uniform)
            if rule == "softmax":
                return cls(rule, temperature=float(arg), uniform=uniform)
            if arg:
                raise ValueError(f"{rule} takes no parameter")
            return cls(rule, uniform=uniform)
        except ValueError as exc:
            raise ValueError(f"bad exploration {text!r}: {exc}") from None


GREEDY = Exploration()


def value_order(values: np.ndarray) -> np.ndarray:
    """Pool indices by value, best first; ties keep pool order."""
    return np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")


def groups(values: np.ndarray, k: int) -> list[np.ndarray]:
    """The slot groups ``G_0..G_{k'-1}`` (``k' = min(k, M)``), each best first."""
    order = value_order(values)
    return [order[j::k] for j in range(min(k, len(order)))]


def _slot_table(values: np.ndarray, k: int, exploration: Exploration) -> tuple[np.ndarray, np.ndarray]:
    """The groups as columns: ``rows[r, j]`` = pool index of group ``j``'s ``r``-th best item (-1
    past the group's end) and ``prob[r, j]`` its probability of being slot ``j``'s item; shape
    ``[ceil(M / k), min(k, M)]``. Vectorised: no Python loop over slots."""
    v = np.asarray(values, dtype=np.float64)
    m = len(v)
    kk = min(k, m)
    order = value_order(v)
    depth = -(-m // kk)
    flat = np.full(depth * kk, -1, dtype=np.int64)
    flat[:m] = order
    rows = flat.reshape(depth, kk)  # rank r * kk + j -> row r, column j (k >= M: one row)
    if kk < k:  # fewer items than slots: every item is its own group, in value order
        rows = order.reshape(1, m)
    real = rows >= 0
    sizes = real.sum(axis=0)
    if exploration.rule == "greedy":
        prob = np.zeros(rows.shape)
        prob[0] = 1.0
    elif exploration.rule == "epsilon_greedy":
        prob = np.where(real, exploration.epsilon / sizes, 0.0)
        prob[0] += 1.0 - exploration.epsilon
    else:  # softmax over each group, shifted by its max for stability
        z = np.where(real, v[np.where(real, rows, 0)] / exploration.temperature, -np.inf)
        w = np.exp(z - z.max(axis=0))
        prob = w / w.sum(axis=0)
    return rows, prob


def marginals(values: np.ndarray, k: int, exploration: Exploration = GREEDY) -> np.ndarray:
    """``P[j, a]``: the probability that slot ``j`` shows pool item ``a``; shape ``[min(k, M), M]``,
    every row sums to 1."""
    if exploration.uniform > 0:
        base = _base_marginals(values, k, exploration)
        return (1.0 - exploration.uniform) * base + exploration.uniform / max(len(values), 1)
    return _base_marginals(values, k, exploration)


def _base_marginals(values: np.ndarray, k: int, exploration: Exploration) -> np.ndarray:
    """The marginals of the rule without its uniform share."""
    m = len(values)
    kk = min(k, m)
    p = np.zeros((kk, m))
    if kk == 0:
        return p
    if exploration.rule == "uniform":
        p[:] = 1.0 / m
        return p
    rows, prob = _slot_table(values, k, exploration)
    real = rows >= 0
    cols = np.broadcast_to(np.arange(kk), rows.shape)
    p[cols[real], rows[real]] = prob[real]
    return p


def sample(values: np.ndarray, k: int, exploration: Exploration, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw a slate: pool indices for slots 1..min(k, M) and each one's marginal propensity."""
    m = len(values)
    kk = min(k, m)
    if kk == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if exploration.uniform > 0:
        u = exploration.uniform
        if rng.random() < u:
            idx = rng.permutation(m)[:kk]
        else:
            idx, _ = _sample_base(values, k, exploration, rng)
        return idx, marginals(values, k, exploration)[np.arange(kk), idx]
    return _sample_base(values, k, exploration, rng)


def _sample_base(values: np.ndarray, k: int, exploration: Exploration,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = len(values)
    kk = min(k, m)
    if exploration.rule == "uniform":
        return rng.permutation(m)[:kk], np.full(kk, 1.0 / m)
    rows, prob = _slot_table(values, k, exploration)
    if exploration.rule == "greedy":
        return rows[0].copy(), np.ones(kk)
    cum = np.cumsum(prob, axis=0)
    u = rng.random(kk) * cum[-1]
    pick = np.minimum((cum <= u).sum(axis=0), (rows >= 0).sum(axis=0) - 1)  # inside the slot's group only
    cols = np.arange(kk)
    return rows[pick, cols], prob[pick, cols]
