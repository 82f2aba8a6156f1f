"""The shop in one process (no Kafka, no gRPC, no Redis) for long learning experiments.

:class:`FastShop` drives the same code paths as the real stack, in memory:

1. the open-loop :class:`~recpilot.simulator.traffic.ShopSimulator` stream feeds a
   :class:`recpilot.featurespec.OfflineFeatureStore` (the feature definitions serving reads);
2. a recommendation request is a shopper of one of the simulator's live sessions at that moment;
   its candidates are generated as the feature service's ``candidates()`` does on Redis: popular
   items of the user's top-affinity categories (interleaved in affinity order), then globally
   popular ones (the service also puts items co-visited with the user's recent items first; the
   offline store keeps no co-visitation, so that source is absent here);
3. ``featurespec.build_batch`` -> the ranker's scores (any ``scorer(dense, ids) -> [N]``, e.g. a
   loaded ranker version's ``predict``) -> the pool = top ``pool_size`` by ranker score ->
   ``recpilot.rl.features.policy_inputs`` (:class:`Context`);
4. the caller's policy picks the slate; :meth:`FastShop.show` draws the shopper's clicks, carts and
   purchases with ``ShopSimulator.outcomes_for`` (position-bias model; the clicks use FastShop's
   own random stream, so the open-loop traffic is the same whatever a policy shows), feeds those
   events back into the feature store and returns the clicks (the rewards) and the learner's rows.

Every decision can be logged into :class:`recpilot.rl.logged.LoggedSlates` (:meth:`logged`), with
``meta`` holding what :mod:`recpilot.simulator.truth` needs (users, pool item ids, elapsed time) so
``truth.policy_value(logs, target)`` gives any target policy's exact value on those contexts.

It lives in ``recpilot.rl``, not ``recpilot.simulator``: it drives the learning loop's code
(policy inputs, logged slates), and ``recpilot.rl`` reaches the model library, which already reads
the simulator, so a module of the simulator importing it would close an import cycle
(``tests/unit/test_architecture.py``). The ground truth itself is ``recpilot.simulator.truth``.

Simulated time: the stream starts at ``start_ms`` and every open-loop event advances the clock by
``step_ms``; ``events_per_impression`` open-loop events happen between two recommendation requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from recpilot import featurespec as fs
from recpilot.rl.features import POLICY_FEATURES, policy_inputs
from recpilot.rl.logged import LoggedSlates
from recpilot.simulator.shoppers import User
from recpilot.simulator.traffic import CLICK, ShopSimulator, event_to_dict
from recpilot.simulator.truth import Truth

TOP_CATEGORIES = 3  # as the feature service's candidates()


@dataclass
class FastConfig:
    seed: int = 0                    # the ShopSimulator's: catalogue, shoppers, traffic
    n_users: int = 10_000            # ShopSimulator
    n_items: int = 2_000             # ShopSimulator
    concurrent_sessions: int = 200   # ShopSimulator: live sessions a request's shopper is drawn from
    k: int = 10                      # slots shown
    pool_size: int = 40              # the ranker's top candidates a policy chooses from (policy_pool)
    num_candidates: int = 200        # as the inference setting num_candidates
    events_per_impression: int = 3   # open-loop events between two recommendation requests
    step_ms: int = 50                # simulated time per open-loop event (20 events/s)
    warmup_events: int = 20_000      # open-loop events before the first request
    start_ms: int = 1_700_000_000_000
    popular_refresh: int = 50        # requests between recomputing the popular lists


@dataclass
class Context:
    """One recommendation request: the shopper, the ranker's pool and the policy's inputs."""

    request_id: str
    user_id: str
    session_id: str
    now_ms: int
    elapsed_s: float
    pool_item_ids: list[str]
    dense: np.ndarray       # float32 [M, 17] the ranker's dense inputs of the pool
    scores: np.ndarray      # float32 [M] ranker scores (pool sorted by them, best first)
    x: np.ndarray           # float32 [M, F] policy inputs
    popularity: np.ndarray  # float64 [M] the feature store's all-time popularity score of each pool item
    _user: User = field(repr=False, default=None)

    def reward_rows(self, shown: np.ndarray, rewards: np.ndarray) -> list[dict]:
        """What a ``Reward`` carries for each shown slot (the learner's input)."""
        return [{"dense": self.dense[a], "score": float(self.scores[a]), "position": j + 1, "reward": float(rewards[j]),
                 "request_id": self.request_id, "session_id": self.session_id, "user_id": self.user_id,
                 "impression_ts_ms": self.now_ms, "item_id": self.pool_item_ids[a]}
                for j, a in enumerate(np.asarray(shown, dtype=np.int64))]


class FastShop:
    """The in-process shop. ``scorer(dense [N, 17], ids [N, 3]) -> [N]`` is the ranker; without one
    (before a first ranker exists) the pool is ``pool_size`` candidates drawn uniformly."""

    def __init__(self, cfg: FastConfig, scorer: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 log: bool = False) -> None:
        self.cfg = cfg
        self.scorer = scorer
        self.sim = ShopSimulator(seed=cfg.seed, n_users=cfg.n_users, n_items=cfg.n_items,
                                 concurrent_sessions=cfg.concurrent_sessions, start_ms=cfg.start_ms,
                                 run_id=f"fast{cfg.seed}")
        self.truth = Truth(self.sim)
        self.store = fs.OfflineFeatureStore()
        self.now_ms = cfg.start_ms
        self._ctx_rng = random.Random(cfg.seed * 31 + 7)     # who asks, pools without a ranker
        self._click_rng = random.Random(cfg.seed * 31 + 11)  # the shoppers' clicks on shown lists
        self._item_cache: dict[str, tuple[int, dict]] = {}   # item id -> (minute computed, features)
        self._popular: list[str] = []
        self._cat_popular: dict[str, list[str]] = {}
        self._since_refresh = cfg.popular_refresh
        self.requests = 0
        self.log_enabled = log
        self._log: dict[str, list] = {k: [] for k in ("x", "shown", "prop", "reward", "req", "users", "pool", "elapsed")}
        self.advance(cfg.warmup_events)

    # -- the open-loop stream and the feature store ------------------------------------------------
    def apply(self, ev) -> None:
        self.store.apply(event_to_dict(ev))
        if ev.item_id:
            self._item_cache.pop(ev.item_id, None)

    def advance(self, n: int) -> None:
        for _ in range(n):
            self.now_ms += self.cfg.step_ms
            self.apply(self.sim.next_event(self.now_ms))

    def item_features(self, item_ids: list[str]) -> list[dict]:
        """``store.item(id, now)`` for each id, cached until the item's next event or the next minute
        (the windows' resolution), so the values are exactly the store's."""
        minute = self.now_ms // fs.BUCKET_MS
        out = []
        for iid in item_ids:
            hit = self._item_cache.get(iid)
            if hit is None or hit[0] != minute:
                hit = self._item_cache[iid] = (minute, self.store.item(iid, self.now_ms))
            out.append(hit[1])
        return out

    # -- candidates, as the feature service's candidates() ----------------------------------------
    def _refresh_popular(self) -> None:
        pop = self.store.popularity
        ranked = sorted(pop.items(), key=lambda kv: (-kv[1], kv[0]))
        self._popular = [i for i, _ in ranked[: self.cfg.num_candidates]]
        per: dict[str, list[str]] = {}
        for iid, _ in ranked:
            cat = self.store.items[iid]["category"] if iid in self.store.items else ""
            lst = per.setdefault(cat, [])
            if len(lst) < self.cfg.num_candidates:
                lst.append(iid)
        self._cat_popular = per
        self._since_refresh = 0

    def candidates(self, user: dict, n: int) -> list[str]:
        if self._since_refresh >= self.cfg.popular_refresh:
            self._refresh_popular()
        aff = user.get("affinity") or {}
        cats = sorted(aff, key=lambda c: (-fs.decayed(aff[c][0], aff[c][1], self.now_ms), c))[:TOP_CATEGORIES]
        out: list[str] = []
        seen: set[str] = set()
        lists = [self._cat_popular.get(c, []) for c in cats] + [self._popular]
        for rank in range(max((len(x) for x in lists[:-1]), default=0)):
            for lst in lists[:-1]:
                if rank < len(lst) and lst[rank] not in seen and len(out) < n:
                    seen.add(lst[rank])
                    out.append(lst[rank])
        for i in self._popular:
            if i not in seen and len(out) < n:
                seen.add(i)
                out.append(i)
        return out

    # -- one request ---------------------------------------------------------------------------
    def next_context(self) -> Context | None:
        """Advance the stream, then one shopper asks; None when there is nothing to rank yet."""
        cfg = self.cfg
        self.advance(cfg.events_per_impression)
        self._since_refresh += 1
        sess = self.sim.sessions[int(self._ctx_rng.random() * len(self.sim.sessions))]
        self.requests += 1
        user = self.store.user(sess.user.user_id)
        cands = self.candidates(user, cfg.num_candidates)
        if not cands:
            return None
        items = self.item_features(cands)
        dense, ids = fs.build_batch(user, items, self.now_ms)
        if self.scorer is not None:
            scores = np.asarray(self.scorer(dense, ids), dtype=np.float32)
            pool = np.argsort(-scores.astype(np.float64), kind="stable")[: cfg.pool_size]
        else:
            scores = np.zeros(len(cands), dtype=np.float32)
            pool = np.array(sorted(self._ctx_rng.sample(range(len(cands)), min(cfg.pool_size, len(cands)))))
        pool_ids = [cands[i] for i in pool]
        pop = self.store.popularity
        return Context(f"fast-{cfg.seed}-{self.requests}", sess.user.user_id, sess.session_id, self.now_ms,
                       self.sim._elapsed_s(self.now_ms), pool_ids, dense[pool], scores[pool],
                       policy_inputs(dense[pool], scores[pool]), np.array([pop.get(i, 0.0) for i in pool_ids]),
                       sess.user)

    def show(self, ctx: Context, shown: np.ndarray, propensity: np.ndarray | None = None) -> np.ndarray:
        """The shopper sees pool items ``shown`` in slots 1..k: clicks (float [k], the rewards); the
        outcome events go into the feature store; the decision is logged when logging is on."""
        shown = np.asarray(shown, dtype=np.int64)
        ranked = [ctx.pool_item_ids[a] for a in shown]
        events = self.sim.outcomes_for(ctx._user, ctx.session_id, ranked, ctx.request_id, ctx.now_ms,
                                       rng=self._click_rng)
        clicked = {ev.item_id for ev in events if ev.event_type == CLICK}
        for ev in events:
            self.apply(ev)
        rewards = np.array([1.0 if i in clicked else 0.0 for i in ranked])
        if self.log_enabled:
            lg = self._log
            lg["x"].append(ctx.x)
            lg["shown"].append(shown)
            lg["prop"].append(np.ones(len(shown)) if propensity is None else np.asarray(propensity, dtype=np.float64))
            lg["reward"].append(rewards)
            lg["req"].append(ctx.request_id)
            lg["users"].append(ctx.user_id)
            lg["pool"].append(list(ctx.pool_item_ids))
            lg["elapsed"].append(ctx.elapsed_s)
        return rewards

    def true_value(self, ctx: Context, marginals: np.ndarray) -> float:
        """The exact CTR of a slate policy with these marginals on this request (measuring only)."""
        return self.truth.slate_value(marginals, self.truth.attractiveness(ctx._user, ctx.pool_item_ids, ctx.elapsed_s))

    def oracle_value(self, ctx: Context, k: int) -> float:
        """The best CTR any slate policy could get on this request: the pool's k most attractive items
        in attractiveness order (measuring only; the ceiling for every policy on the same pool)."""
        a = np.sort(self.truth.attractiveness(ctx._user, ctx.pool_item_ids, ctx.elapsed_s))[::-1][:k]
        return float(self.truth.examine(len(a)) @ a / max(len(a), 1))

    def reset_log(self) -> None:
        """Forget the decisions logged so far (the next :meth:`logged` starts from here)."""
        self._log = {k: [] for k in self._log}

    def logged(self) -> LoggedSlates:
        """The decisions logged so far (``FastShop(log=True)``), padded to the largest pool and k."""
        lg = self._log
        n = len(lg["x"])
        m = max((len(x) for x in lg["x"]), default=0)
        k = max((len(s) for s in lg["shown"]), default=self.cfg.k)
        x = np.zeros((n, m, len(POLICY_FEATURES)), dtype=np.float32)
        mask = np.zeros((n, m), dtype=bool)
        shown = np.full((n, k), -1, dtype=np.int64)
        prop = np.zeros((n, k))
        reward = np.zeros((n, k))
        for i in range(n):
            mi, ki = len(lg["x"][i]), len(lg["shown"][i])
            x[i, :mi], mask[i, :mi] = lg["x"][i], True
            shown[i, :ki], prop[i, :ki], reward[i, :ki] = lg["shown"][i], lg["prop"][i], lg["reward"][i]
        return LoggedSlates(x, mask, shown, prop, reward, list(POLICY_FEATURES), list(lg["req"]),
                            source=f"simulator:fast(seed={self.cfg.seed})",
                            meta={"users": list(lg["users"]), "pool_item_ids": list(lg["pool"]),
                                  "elapsed_s": np.array(lg["elapsed"]), "truth": self.truth})
