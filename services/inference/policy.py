"""Re-ranking policies and their router.

A policy turns the ranker's candidates and scores into the shown list: it takes the *pool* (the
ranker's top M by score, best first; M = the policy's ``pool_size``, else the ``policy_pool``
setting, and never fewer than k), fills k slots from it and says, for every shown slot, the
*marginal* probability that the policy put that item there (the propensity logged with the
impression for off-policy evaluation; :mod:`recpilot.rl.slate`). Every policy logs the same pool,
so off-policy evaluation can replay any policy on any policy's traffic.

* :class:`RankerOrderPolicy` (``ranker-order``, the default): greedy on the ranker's scores, so
  the shown list is the pool's top k and every propensity is 1.0.
* :class:`LearnedPolicy`: a version of ``<model>.policy`` from the model repository
  (:func:`recpilot.rl.artifact.load_policy`): one batched call of its TorchScript module on the
  pool's :func:`~recpilot.rl.features.policy_inputs` gives each pool item a value, and
  :func:`recpilot.rl.slate.sample` draws the slate under the version's exploration rule.

:class:`PolicyRegistry` is the policy router: per served model, the production policy and the
canary policy with its share of users (the deployment state's ``policy_version``,
``policy_canary_version`` and ``policy_canary_percent``; users split by the ranker canary's stable
hash). :meth:`PolicyRegistry.reconcile` loads the versions a state names off the request path (each
load in its own thread, waited for at most ``load_timeout_s``; no lock held meanwhile), then swaps
the routing table in one assignment: a request holds the table it started with, so a swap fails no
request. A version that fails to load leaves its role as it was and is reported (the caller acks
FAILED).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from recpilot.models.deployments.state import in_canary
from recpilot.rl.artifact import DEFAULT_VERSION
from recpilot.rl.features import POLICY_FEATURES, policy_inputs
from recpilot.rl.slate import GREEDY, sample
from services.inference import metrics as m
from services.inference.loading import InFlight

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Slate:
    """A policy's choice for one request."""

    pool: np.ndarray          # candidate indices of the pool, best ranker score first [M]
    shown: np.ndarray         # pool rows shown in slots 1..k [k]
    propensities: np.ndarray  # marginal probability of each shown slot [k]
    exploration: str          # the rule, as logged (str(Exploration))


class Policy(Protocol):
    version: str

    def choose(self, scores: np.ndarray, dense: np.ndarray, k: int) -> Slate:
        """The slate for candidates with ranker ``scores`` [N] and ranker inputs ``dense`` [N, D]."""


def ranker_pool(scores: np.ndarray, size: int) -> np.ndarray:
    """The indices of the ``size`` best ranker scores, best first (ties by candidate order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:size]


class RankerOrderPolicy:
    """The ranker's order, exploration off: the pool's top k, propensity 1.0."""

    version = DEFAULT_VERSION
    exploration = str(GREEDY)

    def __init__(self, pool_size: int = 40) -> None:
        self.pool_size = pool_size

    def choose(self, scores: np.ndarray, dense: np.ndarray, k: int) -> Slate:
        pool = ranker_pool(scores, max(self.pool_size, k))
        kk = min(k, len(pool))
        return Slate(pool, np.arange(kk), np.ones(kk), self.exploration)


class LearnedPolicy:
    """A loaded policy version (:class:`recpilot.rl.artifact.LoadedPolicy`) serving requests."""

    def __init__(self, loaded, pool_size: int = 40, rng: np.random.Generator | None = None) -> None:
        self.loaded = loaded
        self.version = str(loaded.version)
        self.exploration_rule = loaded.exploration
        self.exploration = str(loaded.exploration)
        self.pool_size = int(loaded.pool_size or pool_size)
        self.rng = rng if rng is not None else np.random.default_rng()

    def choose(self, scores: np.ndarray, dense: np.ndarray, k: int) -> Slate:
        pool = ranker_pool(scores, max(self.pool_size, k))
        values = self.loaded.values(policy_inputs(dense[pool], scores[pool]))
        shown, props = sample(values, k, self.exploration_rule, self.rng)
        return Slate(pool, shown, props, self.exploration)

    def warm(self, rounds: int = 3) -> None:
        """Run the module a few times on a pool-sized input (TorchScript optimises on the first
        calls), so the first requests after a swap do not pay for it."""
        x = np.zeros((self.pool_size, len(POLICY_FEATURES)), np.float32)
        for _ in range(rounds):
            v = self.loaded.values(x)
        if v.shape != (self.pool_size,):
            raise ValueError(f"the policy maps [{self.pool_size}, {len(POLICY_FEATURES)}] to {tuple(v.shape)}, "
                             f"expected ({self.pool_size},)")


def load_learned(repo_root: Path, model: str, version: str, pool_size: int) -> LearnedPolicy:
    """Verify, load and warm version ``version`` of ``<model>.policy``; raises on any problem."""
    from recpilot.models.repository import ModelRepository
    from recpilot.rl.artifact import load_policy

    loaded = load_policy(ModelRepository(repo_root), model, version)
    if tuple(loaded.features) != POLICY_FEATURES:
        raise ValueError(f"policy {model}.policy/{version} reads features {loaded.features}; this server builds "
                         f"{list(POLICY_FEATURES)}")
    pol = LearnedPolicy(loaded, pool_size)
    pol.warm()
    return pol


@dataclass(frozen=True)
class PolicyRoutes:
    """The policy routing table of one model; replaced as a whole, never mutated."""

    production: Policy
    canary: Policy | None = None
    canary_percent: float = 0.0

    def choose(self, user_id: str) -> tuple[Policy, str]:
        if self.canary is not None and in_canary(user_id, self.canary_percent):
            return self.canary, "canary"
        return self.production, "production"


@dataclass
class PolicyResult:
    model: str
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    superseded: bool = False


Loader = Callable[[str, str], Policy]


class PolicyRegistry:
    """The policy router of a replica: per model, which policy answers which user.

    ``loader(model, version)`` builds a policy (default: :func:`load_learned` from ``repo_root``);
    :meth:`register` adds one by hand (tests, benchmarks). Until a state names a policy version,
    the ranker's order answers.
    """

    def __init__(self, repo_root: Path | None = None, *, pool_size: int = 40, load_timeout_s: float = 120.0,
                 loader: Loader | None = None) -> None:
        self.pool_size = pool_size
        self.default = RankerOrderPolicy(pool_size)
        self.load_timeout_s = load_timeout_s
        if loader is None and repo_root is not None:
            def loader(model: str, version: str) -> Policy:
                return load_learned(Path(repo_root), model, version, pool_size)
        self.loader = loader
        self._routes: dict[str, PolicyRoutes] = {}
        self._loaded: dict[tuple[str, str], Policy] = {}
        self._lock = threading.Lock()        # one switch at a time; never held while a version loads
        self._started: dict[str, int] = {}   # per model: the newest reconcile ticket seen
        self._applied: dict[str, int] = {}   # per model: the ticket of the table in place
        self._loading = InFlight()

    # -- reads (request path, lock-free) -----------------------------------------------------
    def routes(self, model: str) -> PolicyRoutes:
        r = self._routes.get(model)
        return r if r is not None else PolicyRoutes(self.default)

    def choose(self, model: str, user_id: str) -> tuple[Policy, str]:
        r = self._routes.get(model)
        if r is None:
            return self.default, "production"
        return r.choose(user_id)

    def get(self, model: str, version: str) -> Policy | None:
        """A loaded (or registered) version, or the ranker's order for ``""``/``ranker-order``."""
        if not version or version == DEFAULT_VERSION:
            return self.default
        return self._loaded.get((model, version))

    # -- writes ------------------------------------------------------------------------------
    def register(self, model: str, version: str, policy: Policy) -> None:
        """Make ``policy`` the loaded ``version`` of ``model``'s policies (a reconcile then routes to it
        without loading)."""
        self._loaded[(model, version)] = policy

    def _load(self, model: str, version: str) -> Future:
        def load() -> Policy:
            if self.loader is None:
                raise RuntimeError("this replica has no model repository to load policies from")
            return self.loader(model, version)

        return self._loading.start((model, version), load, f"load-{model}.policy:{version}")

    def reconcile(self, model: str, production: str = "", canary: str = "", canary_percent: float = 0.0,
                  ticket: int | None = None) -> PolicyResult:
        """Serve ``production`` (""/``ranker-order``: the ranker's order) and ``canary`` at
        ``canary_percent`` for ``model``: load what is missing (outside the lock, ``load_timeout_s``
        in all), then swap the table. A failed version leaves its role as it was. ``ticket``
        orders reconciles of a model (larger = newer); a reconcile that finishes after a newer one
        swapped changes nothing (``superseded``)."""
        res = PolicyResult(model)
        with self._lock:
            if ticket is None:
                ticket = self._started.get(model, 0) + 1
            self._started[model] = max(ticket, self._started.get(model, 0))
        wanted = [v for v in dict.fromkeys((production, canary)) if v and v != DEFAULT_VERSION]
        futures = {v: self._load(model, v) for v in wanted if (model, v) not in self._loaded}
        deadline = time.monotonic() + self.load_timeout_s
        for version, fut in futures.items():
            try:
                self._loaded[(model, version)] = fut.result(timeout=max(0.0, deadline - time.monotonic()))
                res.loaded.append(version)
                m.POLICY_LOADS.labels(model, "ok").inc()
                continue
            except FutureTimeout:
                why = f"policy {model}.policy:{version} did not load within {self.load_timeout_s:g} s"
                m.POLICY_LOADS.labels(model, "timeout").inc()
            except Exception as exc:
                why = f"policy {model}.policy:{version}: {type(exc).__name__}: {exc}"
                m.POLICY_LOADS.labels(model, "failed").inc()
            log.error("policy load failed; keeping what serves", extra={
                "model": model, "policy_version": version, "error": why})
            res.failed[version] = why
        with self._lock:
            if ticket < self._applied.get(model, 0):
                res.superseded = True
                return res
            old = self.routes(model)
            prod = self.get(model, production)
            if prod is None:  # failed: the production policy that served keeps serving
                prod = old.production
            can = self.get(model, canary) if canary else None
            if canary and can is None:
                can = old.canary
            routes = PolicyRoutes(prod, can, canary_percent if can is not None else 0.0)
            self._routes[model] = routes  # the atomic switch
            self._applied[model] = ticket
            keep = {id(routes.production), id(routes.canary)}
            for key in [k for k, p in self._loaded.items() if k[0] == model and id(p) not in keep]:
                del self._loaded[key]  # small modules: dropping the reference unloads them
            if res.loaded or old != routes:
                log.info("policy routing updated", extra={
                    "model": model, "policy_version": routes.production.version,
                    "policy_canary": routes.canary.version if routes.canary is not None else None,
                    "policy_canary_percent": routes.canary_percent})
        return res
