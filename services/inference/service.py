"""Recommend and Search as domain code (no gRPC here; :class:`services.inference.dataplane.DataPlane`
extends it with the model calls and readiness every transport shares): candidates -> one feature fetch ->
ranker (through the routed version's batcher) -> policy re-rank -> top k -> impression.

Degradation: the caller passes the absolute deadline (``time.monotonic()`` seconds). When the
feature store or the model fails, or less than ``deadline_margin_ms`` is left before a step, the
answer comes from the popularity list (refreshed in the background) with ``fallback`` set and a
reason. Invalid input raises :class:`recpilot.errors.InvalidArgument`; an unknown model
:class:`recpilot.errors.NotFound`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import itertools
import os
from dataclasses import dataclass, field

import numpy as np

from recpilot.errors import InvalidArgument, NotFound
from recpilot.featurespec import item_columns, user_columns
from services.inference import metrics as m
from services.inference.batching import BatcherClosed, QueueFull
from services.inference.impressions import ImpressionRecord
from services.inference.itemcache import ItemCache
from services.inference.policy import PolicyRegistry
from services.inference.routing import ModelManager
from services.inference.search import BM25Index
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)


# Request ids: 32 hex digits like uuid4().hex, a random per-process prefix + a counter (unique
# without a system call per request).
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


@dataclass
class Request:
    user_id: str
    k: int
    candidate_ids: list[str] = field(default_factory=list)
    context: dict[str, str] = field(default_factory=dict)
    session_id: str = ""
    request_id: str = ""
    model_name: str = ""
    query: str = ""  # Search only


@dataclass
class Result:
    items: list[tuple[str, float, int, float]]  # (item_id, score, position, propensity)
    request_id: str
    model_name: str
    model_version: str
    policy_version: str
    fallback: bool = False
    fallback_reason: str = ""
    variant: str = ""
    policy_variant: str = ""


class _DeadlineNear(Exception):
    pass


class RankingService:
    def __init__(
        self,
        settings: InferenceSettings,
        features,  # services.features.client.AsyncFeatureClient
        models: ModelManager,
        policies: PolicyRegistry | None = None,
        impressions=None,  # ImpressionLogger or None
        index: BM25Index | None = None,
        telemetry=None,  # Telemetry or None
    ) -> None:
        self.s = settings
        self.features = features
        self.models = models
        self.policies = policies if policies is not None else PolicyRegistry(pool_size=settings.policy_pool)
        self.impressions = impressions
        self.index = index or BM25Index()
        self.telemetry = telemetry
        self._items = ItemCache(settings.item_cache_ms / 1000, settings.item_cache_max, settings.item_stale_ms / 1000)
        self._refresh: dict[str, None] = {}  # stale item ids to re-read in the background (ordered set)
        self._refreshing: set[str] = set()  # ids of the chunk being re-read now
        self._refresh_task: asyncio.Task | None = None
        self._popular: list[str] = []
        self._popular_at = 0.0
        self._popular_task: asyncio.Task | None = None

    # -- popularity fallback -------------------------------------------------------------------
    async def refresh_popular(self) -> list[str]:
        self._popular_at = time.monotonic()  # also after a failure: retry on the next period, not per request
        try:
            self._popular = list(await asyncio.wait_for(self.features.popular(self.s.max_k), self.s.redis_timeout_ms / 1000))
            self._popular_at = time.monotonic()
        except Exception as exc:
            log.warning("popularity refresh failed", extra={"error": repr(exc), "collapse": True})
        return self._popular

    def _maybe_refresh_popular(self) -> None:
        if time.monotonic() - self._popular_at > self.s.popular_cache_s and (
                self._popular_task is None or self._popular_task.done()):
            self._popular_task = asyncio.get_running_loop().create_task(self.refresh_popular())

    def _fallback(self, req: Request, reason: str, surface: str, model_name: str,
                  candidates: list[str] | None = None) -> Result:
        m.FALLBACKS.labels(surface, reason).inc()
        pop = self._popular
        if candidates:
            rank = {iid: i for i, iid in enumerate(pop)}
            chosen = sorted(candidates, key=lambda i: rank.get(i, len(rank)))[: req.k]
        else:
            chosen = pop[: req.k]
        items = [(iid, 0.0, pos, 1.0) for pos, iid in enumerate(chosen, start=1)]
        res = Result(items, req.request_id, model_name, "", "", True, reason, "fallback")
        self._log(req, res, surface, {})
        return res

    # -- features ------------------------------------------------------------------------------
    async def _inputs(self, user_id: str, candidates: list[str]) -> tuple[dict, np.ndarray, np.ndarray]:
        """Ranker inputs (dense [N, D], ids [N, K]) for the user and the candidates, with ONE
        feature-store round trip: the user (always fresh) plus the items that are not in the item
        cache (``item_cache_ms``; the item-only columns are cached per item, already encoded)."""
        now = time.monotonic()
        stale: list[str] = []
        dense, ids, cats, missing = self._items.gather(candidates, now, stale)
        if stale:
            self._refresh.update(dict.fromkeys(i for i in stale if i not in self._refreshing))
            if self._refresh_task is None or self._refresh_task.done():
                self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_items())
        need = [candidates[i] for i in missing.tolist()]
        now_ms = int(time.time() * 1000)
        user, fetched = await self.features.fetch(user_id, need, now_ms)
        self._items.fill(dense, ids, cats, missing, fetched, now)
        ids[:, 0] = user_columns(user, candidates, cats, now_ms, dense)
        return user, dense, ids

    async def _refresh_items(self, chunk: int = 32) -> None:
        """Re-read stale cached items in small chunks (short Redis calls that do not hold up the
        requests' user reads), off the request path."""
        while self._refresh:
            if len(self._refresh) < chunk:
                await asyncio.sleep(0.02)  # let a chunk collect: fewer, larger reads
            ids = list(itertools.islice(self._refresh, chunk))
            for i in ids:
                del self._refresh[i]
            self._refreshing = set(ids)
            try:
                async with asyncio.timeout(self.s.redis_timeout_ms / 1000):
                    _, items = await self.features.fetch("", ids, int(time.time() * 1000))
            except Exception as exc:  # stays stale; the next request that uses it asks again
                log.warning("item feature refresh failed", extra={"items": len(ids), "error": repr(exc), "collapse": True})
                self._refresh.clear()
                return
            finally:
                self._refreshing = set()
            d, i_cols, cats = item_columns(items)
            self._items.put(ids, d, i_cols, cats, time.monotonic())

    # -- validation ------------------------------------------------------------------------------
    def validate(self, req: Request, search: bool = False) -> str:
        """The model name to use, or :class:`InvalidArgument` for a request beyond the limits
        (settings ``max_k``, ``max_candidate_ids``, ``max_id_length``, ``max_query_length``,
        ``max_context_entries``, ``max_context_length``), so no request costs more than they allow."""
        s = self.s
        if not req.user_id:
            raise InvalidArgument("user_id is required")
        if req.k <= 0 or req.k > s.max_k:
            raise InvalidArgument(f"k must be in 1..{s.max_k}, got {req.k}")
        if len(req.candidate_ids) > s.max_candidate_ids:
            raise InvalidArgument(f"at most {s.max_candidate_ids} candidate_ids, got {len(req.candidate_ids)}")
        limit = s.max_id_length
        if (len(req.user_id) > limit or len(req.session_id) > limit or len(req.request_id) > limit
                or len(req.model_name) > limit):  # the message is built only for a refusal
            for what in ("user_id", "session_id", "request_id", "model_name"):
                if len(getattr(req, what)) > limit:
                    raise InvalidArgument(f"{what} is {len(getattr(req, what))} characters, at most {limit} allowed")
        if req.candidate_ids and max(map(len, req.candidate_ids)) > limit:
            raise InvalidArgument(f"a candidate id is longer than {limit} characters")
        if req.context:
            if len(req.context) > s.max_context_entries:
                raise InvalidArgument(f"context has {len(req.context)} entries, at most {s.max_context_entries} "
                                      "allowed")
            longest = max(max(len(k), len(v)) for k, v in req.context.items())
            if longest > s.max_context_length:
                raise InvalidArgument(f"a context key or value is {longest} characters, at most "
                                      f"{s.max_context_length} allowed")
        if search:
            if len(req.query) > s.max_query_length:
                raise InvalidArgument(f"query is {len(req.query)} characters, at most {s.max_query_length} allowed")
            if not req.query.strip():
                raise InvalidArgument("query is required")
        name = req.model_name or s.default_model
        if not self.models.serves(name):
            raise NotFound(f"unknown model {name!r}; this server serves {self.models.model_names}")
        if not req.request_id:
            req.request_id = new_request_id()
        return name

    # -- the two surfaces ------------------------------------------------------------------------
    async def recommend(self, req: Request, deadline: float) -> Result:
        name = self.validate(req)
        self._maybe_refresh_popular()
        candidates: list[str] | None = list(dict.fromkeys(req.candidate_ids)) or None
        if candidates is None:
            try:
                budget = self._budget(deadline)
                candidates = await asyncio.wait_for(
                    self.features.candidates(req.user_id, self.s.num_candidates, int(time.time() * 1000)), budget)
            except _DeadlineNear:
                return self._fallback(req, "deadline", "recommend", name)
            except (TimeoutError, asyncio.TimeoutError):
                return self._fallback(req, "features_timeout", "recommend", name)
            except Exception as exc:
                log.warning("candidate generation failed", extra={"request_id": req.request_id, "error": repr(exc),
                                                                  "collapse": True})
                return self._fallback(req, "features_unavailable", "recommend", name)
        if not candidates:  # a cold feature store: nothing to rank
            return self._fallback(req, "no_candidates", "recommend", name)
        return await self._rank(req, name, candidates, deadline, "recommend")

    async def search(self, req: Request, deadline: float) -> Result:
        name = self.validate(req, search=True)
        self._maybe_refresh_popular()
        restrict = set(req.candidate_ids) if req.candidate_ids else None
        hits = self.index.search(req.query, self.s.search_candidates, restrict)
        candidates = [iid for iid, _ in hits]
        if not candidates:
            return Result([], req.request_id, name, "", "", False, "", "")
        return await self._rank(req, name, candidates, deadline, "search")

    # -- shared ranking --------------------------------------------------------------------------
    def _budget(self, deadline: float) -> float:
        left = deadline - time.monotonic() - self.s.deadline_margin_ms / 1000
        if left <= 0:
            raise _DeadlineNear()
        return min(left, self.s.redis_timeout_ms / 1000)

    def _check(self, deadline: float) -> float:
        left = deadline - time.monotonic() - self.s.deadline_margin_ms / 1000
        if left <= 0:
            raise _DeadlineNear()
        return left

    async def _rank(self, req: Request, name: str, candidates: list[str], deadline: float, surface: str) -> Result:
        routes = self.models.routes(name)
        mv, variant = routes.choose(req.user_id)
        if mv is None:
            return self._fallback(req, "no_model", surface, name, candidates)
        try:
            t0 = time.perf_counter()
            budget = self._budget(deadline)  # before creating the coroutine (it may raise)
            async with asyncio.timeout(budget):  # no extra task per call, unlike wait_for
                user, dense, ids = await self._inputs(req.user_id, candidates)
            m.FEATURE_FETCH.observe(time.perf_counter() - t0)
        except _DeadlineNear:
            return self._fallback(req, "deadline", surface, name, candidates)
        except (TimeoutError, asyncio.TimeoutError):
            return self._fallback(req, "features_timeout", surface, name, candidates)
        except Exception as exc:
            log.warning("feature fetch failed", extra={"request_id": req.request_id, "error": repr(exc), "collapse": True})
            return self._fallback(req, "features_unavailable", surface, name, candidates)
        try:
            try:
                left = self._check(deadline)
                async with asyncio.timeout(left):
                    scores = await mv.score(dense, ids)
            except BatcherClosed:  # swapped out between routing and scoring: route again
                routes = self.models.routes(name)
                mv, variant = routes.choose(req.user_id)
                if mv is None:
                    return self._fallback(req, "no_model", surface, name, candidates)
                left = self._check(deadline)
                async with asyncio.timeout(left):
                    scores = await mv.score(dense, ids)
        except _DeadlineNear:
            return self._fallback(req, "deadline", surface, name, candidates)
        except (TimeoutError, asyncio.TimeoutError):
            return self._fallback(req, "deadline", surface, name, candidates)
        except QueueFull:
            return self._fallback(req, "overloaded", surface, name, candidates)
        except Exception as exc:
            log.error("model failed", extra={"request_id": req.request_id, "model": name,
                                             "model_version": mv.version, "error": repr(exc), "collapse": True})
            return self._fallback(req, "model_error", surface, name, candidates)
        if routes.shadow is not None and routes.shadow is not mv:
            asyncio.get_running_loop().create_task(self._shadow(routes.shadow, req, dense, ids, scores))
        policy, policy_variant = self.policies.choose(name, req.user_id)
        t1 = time.perf_counter()
        try:
            slate = policy.choose(scores, dense, req.k)
        except Exception as exc:  # a learned policy that fails: the ranker's order answers (and is logged as such)
            log.error("policy failed; the ranker's order answers", extra={
                "request_id": req.request_id, "model": name, "policy_version": policy.version, "error": repr(exc),
                "collapse": True})
            policy, policy_variant = self.policies.default, "production"
            slate = policy.choose(scores, dense, req.k)
        m.POLICY_SECONDS.labels("ranker-order" if policy is self.policies.default else "learned").observe(
            time.perf_counter() - t1)
        chosen = slate.pool[slate.shown].tolist()
        if self.telemetry is not None:  # the shown items: the population a trained version's reference comes from
            self.telemetry.scored(name, mv.version, variant, mv.meta, scores[chosen], dense[chosen])
        out = [(candidates[i], float(scores[i]), pos, p)
               for pos, (i, p) in enumerate(zip(chosen, slate.propensities.tolist()), start=1)]
        res = Result(out, req.request_id, name, mv.version, policy.version, False, "", variant, policy_variant)
        if self.impressions is not None:
            pool = slate.pool
            self._log(req, res, surface, {"user:session_events": float(user.get("session_events") or 0),
                                          "user:events": float(user.get("events") or 0)},
                      pool=([candidates[i] for i in pool.tolist()], scores[pool], dense[pool]),
                      pool_index=slate.shown.tolist(), exploration=slate.exploration)
        return res

    async def _shadow(self, mv, req: Request, dense, ids, served: np.ndarray) -> None:
        try:
            s = await mv.score(dense, ids)
            m.SHADOW.labels(mv.name, mv.version).inc()
            log.info("shadow scored", extra={
                "request_id": req.request_id, "model": mv.name, "model_version": mv.version,
                "shadow_mean": round(float(np.mean(s)), 6), "served_mean": round(float(np.mean(served)), 6),
                "top1_agree": bool(int(np.argmax(s)) == int(np.argmax(served))),
                "max_abs_diff": round(float(np.max(np.abs(s - served))), 6)})
        except Exception as exc:
            log.warning("shadow scoring failed", extra={"request_id": req.request_id, "error": repr(exc), "collapse": True})

    def _log(self, req: Request, res: Result, surface: str, features: dict[str, float],
             pool: tuple[list[str], np.ndarray, np.ndarray] | None = None, pool_index: list[int] | None = None,
             exploration: str = "") -> None:
        """Hand the impression to the logger: the feature snapshot is the user-level values plus
        the shown items' ranker inputs (``"<position>:<feature>"``, built off the request path);
        ``pool`` (ids, ranker scores, ranker inputs) is what the policy chose from, ``pool_index``
        the pool row of each shown item."""
        if self.impressions is None:
            return
        ids, scores, dense = pool if pool is not None else (None, None, None)
        self.impressions.log(ImpressionRecord(
            request_id=res.request_id, user_id=req.user_id, session_id=req.session_id, surface=surface,
            query=req.query, model_name=res.model_name, model_version=res.model_version,
            policy_version=res.policy_version, items=[(i, p, s, q) for i, s, p, q in res.items],
            features=features, timestamp_ms=int(time.time() * 1000), fallback=res.fallback,
            variant=res.variant, context=dict(req.context), pool_item_ids=ids, pool_scores=scores, pool_dense=dense,
            pool_index=pool_index, exploration=exploration, policy_variant=res.policy_variant))
