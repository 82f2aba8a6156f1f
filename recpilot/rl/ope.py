"""Off-policy evaluation of slate policies on logged slates (pure numpy).

The estimators are the slot-level ("independent item", position-based) forms of Li et al. 2018 and
the ``IndependentIPS`` family of the Open Bandit Pipeline: the logs carry, for every shown slot, the
logging policy's *marginal* propensity ``p_ij`` of the item ``a_ij`` it showed in slot ``j`` of
decision ``i``, and the target policy gives its own marginals ``P_i[j, a]``
(:class:`recpilot.rl.logged.TargetPolicy`). The importance weight of a logged slot is

    w_ij = P_i[j, a_ij] / p_ij.

The value of a policy is the expected reward per shown slot (for click rewards: the CTR, clicks /
shown items). With ``S_i`` the slots of decision ``i`` that are logged (slot ``j < k`` and filled; all
``k`` in recpilot's logs, one in the Open Bandit rows) every estimator averages per-decision terms:

* **IPS**: ``mean_i  sum_{j in S_i} w_ij r_ij / |S_i|``; unbiased when every item the target may
  show in a slot had a non-zero logging propensity there and the reward of an item depends only on
  the item and its slot.
* **SNIPS**: per slot ``j``, ``sum_i w_ij r_ij / sum_i w_ij``, then averaged over the slots with the
  weights ``omega_j = mean_i [j in S_i] / |S_i|`` (``1/K`` each when every decision fills all ``K``
  slots). Slightly biased, lower variance; a slot whose weights are all zero contributes 0.
* **DM** (direct method): a reward model ``qhat(x_a, j)`` (:class:`RewardModel`, a logistic
  regression on the item's inputs and a slot one-hot) fitted on the logs, **cross-fitted** over two
  folds of decisions so that no decision is scored by a model that saw it; value
  ``mean_i sum_{j in S_i} sum_a P_i[j, a] qhat(x_ia, j) / |S_i|``.
* **DR** (doubly robust): DM plus ``mean_i sum_{j in S_i} w_ij (r_ij - qhat(x_{i a_ij}, j)) / |S_i|``.

Each comes with a **bootstrap** percentile interval: the decisions are resampled ``n_boot`` times
with replacement and the estimate recomputed from the per-decision terms (the reward model is fitted
once). The **effective sample size** of the weights ``ESS = (sum w)^2 / sum w^2`` is reported per slot
and over all logged slots: how many logged slots the estimate is really worth (it equals the number
of slots when the target is the logging policy; it collapses when the target rarely agrees).

``clip`` (default off) caps every weight at that value before any estimator uses it: lower variance,
a downward bias wherever the cap binds.

What the logs cannot tell: a slot-level estimator only sees the (item, slot) pairs the logging
policy could show. recpilot's stratified logging (``recpilot.rl.slate``) lets slot ``j`` draw only
from its own group of the logger's order, so a target that ranks an item into a slot where the
logger never showed it has no logged evidence there: IPS/SNIPS ignore that mass (a bias) and only
DM's model speaks for it. The ``match_rate`` (the target's mean probability of showing the logged
item in its logged slot) says how much the two policies overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from recpilot.errors import FailedPrecondition, InvalidArgument
from recpilot.rl.logged import LoggedSlates, TargetPolicy

ESTIMATORS = ("ips", "snips", "dm", "dr")
PROPENSITY_TOLERANCE = 1e-4  # logged propensities are float32: allow this much above 1
ROW_SUM_TOLERANCE = 1e-6     # a target's marginal rows must sum to 1 within this


# --- the reward model (DM, DR, and a value function for simple learned policies) -----------------

class RewardModel:
    """``qhat(x, slot)``: a logistic regression with an L2 penalty on the standardized item inputs,
    a one-hot of the slot and an intercept, fitted by Newton's method (pure numpy).

    Rewards are mapped to [0, 1] by ``(r - lo) / (hi - lo)`` with ``lo = min(0, min r)`` and
    ``hi = max(1, max r)``, so click rewards are modelled as they are and weighted rewards (a purchase
    worth 5) by a scaled logistic; predictions are mapped back."""

    def __init__(self, l2: float = 1.0, iterations: int = 25) -> None:
        self.l2 = float(l2)
        self.iterations = int(iterations)
        self.coef: np.ndarray | None = None   # [F] on standardized inputs
        self.slot_coef: np.ndarray | None = None  # [K]: intercept + slot effect
        self.mean = self.scale = None
        self.lo, self.hi = 0.0, 1.0

    def fit(self, x: np.ndarray, slot: np.ndarray, reward: np.ndarray, k: int, weight: np.ndarray | None = None,
            start: RewardModel | None = None) -> RewardModel:
        """``x`` [n, F] inputs of shown items, ``slot`` [n] 0-based slots (< ``k``), ``reward`` [n];
        ``weight`` [n] row multiplicities (a bootstrap resample's counts: the same fit as repeating
        the rows). ``start``: a fitted model whose scaling (input standardization, reward range) is
        kept and whose coefficients are Newton's starting point (a bootstrap refit converges in a
        few steps from the full-data fit)."""
        x = np.asarray(x, dtype=np.float64)
        r = np.asarray(reward, dtype=np.float64)
        slot = np.asarray(slot, dtype=np.int64)
        wt = np.ones(len(r)) if weight is None else np.asarray(weight, dtype=np.float64)
        if len(r) == 0 or not wt.sum() > 0:
            raise FailedPrecondition("no logged slots to fit a reward model on")
        f = x.shape[1]
        if start is not None:
            self.lo, self.hi, self.mean, self.scale = start.lo, start.hi, start.mean, start.scale
            beta = np.concatenate([start.coef, start.slot_coef[:k]])
        else:
            self.lo = min(0.0, float(r.min()))
            self.hi = max(1.0, float(r.max()))
            self.mean = np.average(x, axis=0, weights=wt)
            sd = np.sqrt(np.average((x - self.mean) ** 2, axis=0, weights=wt))
            self.scale = np.where(sd > 1e-12, sd, 1.0)
            beta = np.zeros(f + k)
        y = np.clip((r - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        z = np.concatenate([(x - self.mean) / self.scale, np.eye(k)[slot]], axis=1)
        prior = np.concatenate([np.full(f, self.l2), np.full(k, 1e-6)])  # slot effects ~ unpenalized
        for _ in range(self.iterations):
            p = _sigmoid(z @ beta)
            grad = z.T @ (wt * (p - y)) + prior * beta
            hess = (z * (wt * p * (1 - p))[:, None]).T @ z + np.diag(prior + 1e-9)
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        self.coef, self.slot_coef = beta[:f], beta[f:]
        return self

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The slot-free part of the logit of each row of ``x`` [..., F]."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef

    def predict(self, x: np.ndarray, k: int) -> np.ndarray:
        """``qhat`` of every row of ``x`` [M, F] in slots 0..k-1: [M, k]."""
        if self.coef is None:
            raise FailedPrecondition("the reward model is not fitted")
        z = self.logits(x)[:, None] + self.slot_coef[None, :k]
        return self.lo + (self.hi - self.lo) * _sigmoid(z)

    def predict_pools(self, x: np.ndarray, k: int) -> np.ndarray:
        """``qhat`` for a batch of pools ``x`` [N, M, F] in slots 0..k-1: [N, M, k]."""
        if self.coef is None:
            raise FailedPrecondition("the reward model is not fitted")
        z = (((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.coef)[:, :, None] + self.slot_coef[:k]
        return self.lo + (self.hi - self.lo) * _sigmoid(z)

    def values(self, x: np.ndarray) -> np.ndarray:
        """A value per pool row (its predicted reward at the top slot): a ``ValuePolicy`` value function."""
        return self.predict(x, 1)[:, 0]

    def describe(self) -> str:
        return f"logistic regression (L2 {self.l2:g}) on the item inputs + slot one-hot"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_reward_model(logs: LoggedSlates, idx: np.ndarray | None = None, k: int | None = None,
                     l2: float = 1.0) -> RewardModel:
    """A :class:`RewardModel` fitted on the shown slots of decisions ``idx`` (all by default)."""
    k = logs.k if k is None else k
    idx = np.arange(logs.n) if idx is None else np.asarray(idx)
    shown = logs.shown[idx, :k]
    rows, slots = np.nonzero(shown >= 0)
    x = logs.x[idx[rows], shown[rows, slots]]
    return RewardModel(l2).fit(x, slots, logs.reward[idx[rows], slots], k)


# --- the report --------------------------------------------------------------------------------

@dataclass
class Estimate:
    value: float
    lo: float
    hi: float
    ess: float | None  # effective sample size of the importance weights it uses (None for DM)


@dataclass
class OPEReport:
    target: str
    source: str
    decisions: int          # decisions evaluated (with at least one logged slot)
    slots: int              # logged slots evaluated
    k: int
    level: float
    n_boot: int
    clip: float | None
    estimates: dict[str, Estimate]
    ess: float              # over all logged slots
    ess_per_slot: list[float]
    logged_value: float     # the logs' own average reward per shown slot (the logging policy, on-policy)
    match_rate: float       # mean target probability of the logged item in its logged slot
    reward_model: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["estimates"] = {name: asdict(e) for name, e in self.estimates.items()}
        return d

    def table(self) -> str:
        pct = f"{100 * self.level:g}%"
        lines = [f"off-policy evaluation of {self.target} on {self.source}",
                 f"  {self.decisions} decisions, {self.slots} logged slots, k={self.k}; "
                 f"logged average reward {self.logged_value:.5f}; match rate {self.match_rate:.4f}; "
                 f"weight ESS {self.ess:.1f}" + (f"; weights clipped at {self.clip:g}" if self.clip else ""),
                 f"  {'estimator':<10}{'value':>11}{pct + ' low':>11}{pct + ' high':>11}{'ESS':>10}"]
        for name, e in self.estimates.items():
            ess = "-" if e.ess is None else f"{e.ess:.1f}"
            lines.append(f"  {name:<10}{e.value:>11.5f}{e.lo:>11.5f}{e.hi:>11.5f}{ess:>10}")
        lines.append("  ESS per slot: " + " ".join(f"{v:.1f}" for v in self.ess_per_slot))
        if self.reward_model:
            lines.append(f"  reward model (DM, DR): {self.reward_model}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _ess(w: np.ndarray) -> float:
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


# --- evaluate ----------------------------------------------------------------------------------

def evaluate(logs: LoggedSlates, target: TargetPolicy, k: int | None = None,
             estimators: Sequence[str] = ESTIMATORS, n_boot: int = 200, level: float = 0.95, seed: int = 0,
             *, clip: float | None = None, reward_model: RewardModel | None = None, l2: float = 1.0,
             refit: bool = False, refit_iterations: int = 4, name: str = "") -> OPEReport:
    """Estimate ``target``'s value (reward per shown slot) on ``logs`` with ``estimators`` (any of
    ips, snips, dm, dr), each with a bootstrap ``level`` interval over ``n_boot`` resamples of the
    decisions. ``reward_model`` (an object with ``predict(x [M, F], k) -> [M, k]``) replaces the
    cross-fitted :class:`RewardModel` (``l2``) of DM and DR; ``clip`` caps the importance weights.
    ``refit``: DM's and DR's bootstrap replicates refit the cross-fitted reward model on each resample
    (weighted by the resample's counts, ``refit_iterations`` Newton steps from the full-data fit),
    so their intervals carry the reward model's own uncertainty, not only the decisions' noise."""
    estimators = tuple(estimators)
    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad or not estimators:
        raise InvalidArgument(f"unknown estimators {bad or '(none)'} (expected some of {', '.join(ESTIMATORS)})")
    if not 0.0 < level < 1.0:
        raise InvalidArgument(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise InvalidArgument(f"n_boot must be >= 1, got {n_boot}")
    if clip is not None and not clip > 0:
        raise InvalidArgument(f"clip must be > 0, got {clip}")
    if logs.n == 0 or logs.k == 0:
        raise FailedPrecondition(f"the logs ({logs.source or 'unnamed'}) hold no decisions to evaluate")
    k = logs.k if k is None else int(k)
    if not 1 <= k <= logs.k:
        raise InvalidArgument(f"k must be in 1..{logs.k} (the logged slots), got {k}")

    shown = logs.shown[:, :k]
    valid = shown >= 0
    keep = np.flatnonzero(valid.any(axis=1))
    if len(keep) == 0:
        raise FailedPrecondition(f"the logs ({logs.source or 'unnamed'}) show no item in the first {k} slots")
    prop = logs.propensity[:, :k]
    pv = prop[valid]
    wrong = ~np.isfinite(pv) | (pv <= 0) | (pv > 1 + PROPENSITY_TOLERANCE)
    if wrong.any():
        i, j = np.argwhere(valid)[np.flatnonzero(wrong)[0]]
        raise InvalidArgument(f"{int(wrong.sum())} logged propensities are not in (0, 1] (e.g. decision {i}, "
                              f"slot {j + 1}: {prop[i, j]!r}); importance weights need the logging "
                              "policy's probability of every shown item")
    if np.any(shown[valid] >= logs.mask.shape[1]) or not logs.mask[np.nonzero(valid)[0], shown[valid]].all():
        raise InvalidArgument("a logged slot shows a row outside its decision's pool")

    need_q = any(e in ("dm", "dr") for e in estimators)
    notes: list[str] = []
    models: dict[int, object] = {}
    fold = np.zeros(logs.n, dtype=np.int64)
    model_name = ""
    if need_q and reward_model is None:
        if len(keep) < 2:
            raise FailedPrecondition("DM and DR need at least 2 decisions (the reward model is cross-fitted)")
        perm = np.random.default_rng(seed).permutation(keep)
        halves = (perm[: len(perm) // 2], perm[len(perm) // 2:])
        for f, (fit_on, score) in enumerate(((halves[1], halves[0]), (halves[0], halves[1]))):
            models[f] = fit_reward_model(logs, fit_on, k, l2)
            fold[score] = f
        model_name = models[0].describe() + ", cross-fitted over 2 folds of decisions"
    elif need_q:
        models[0] = reward_model
        model_name = getattr(reward_model, "describe", lambda: type(reward_model).__name__)()

    n = len(keep)
    W = np.zeros((n, k))
    R = np.zeros((n, k))
    V = valid[keep]
    Qlog = np.zeros((n, k))
    dm = np.zeros(n)
    match = np.zeros((n, k))
    refit = bool(refit and need_q and reward_model is None)
    P_all = np.zeros((n, k, logs.mask.shape[1])) if refit else None  # target marginals, pool rows as logged
    for r, i in enumerate(keep):
        real = np.flatnonzero(logs.mask[i])
        pos = np.full(logs.mask.shape[1], -1)
        pos[real] = np.arange(len(real))
        pool = logs.x[i, real]
        P = np.asarray(target.marginals(pool, k), dtype=np.float64)
        kk = min(k, len(real))
        if P.shape != (kk, len(real)):
            raise InvalidArgument(f"the target policy's marginals have shape {P.shape} for a pool of "
                                  f"{len(real)} items and k={k}; expected {(kk, len(real))}")
        sums = P.sum(axis=1)
        if (P < -ROW_SUM_TOLERANCE).any() or np.abs(sums - 1).max() > ROW_SUM_TOLERANCE:
            raise InvalidArgument(f"the target policy's marginals for decision {i} are not distributions "
                                  f"(row sums {np.round(sums, 6).tolist()}); every slot's row must sum to 1")
        js = np.flatnonzero(V[r])
        a = pos[shown[i, js]]
        if refit:
            P_all[r, js[:, None], real[None, :]] = P[js]
        p_t = P[js, a]
        match[r, js] = p_t
        W[r, js] = p_t / prop[i, js]
        R[r, js] = logs.reward[i, js]
        if need_q:
            Q = np.asarray(models[fold[i]].predict(pool, kk), dtype=np.float64)  # [M, kk]
            Qlog[r, js] = Q[a, js]
            dm[r] = float(np.sum(P[js] * Q[:, js].T))
    if clip is not None:
        W = np.minimum(W, clip)
    n_slots = V.sum(axis=1).astype(np.float64)  # |S_i| >= 1
    omega = V / n_slots[:, None]                 # per-decision slot weights, rows sum to 1

    terms = {"ips": (W * R).sum(axis=1) / n_slots,
             "dm": dm / n_slots,
             "dr": (dm + (W * (R - Qlog)).sum(axis=1)) / n_slots}
    rng = np.random.default_rng(seed + 1)
    counts = _bootstrap_counts(n, n_boot, rng)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    ess_slot = [_ess(W[V[:, j], j]) for j in range(k)]
    ess_all = _ess(W[V])
    estimates: dict[str, Estimate] = {}
    refit_boot = _refit_replicates(logs, keep, V, W, R, n_slots, P_all, fold, models, counts, k, l2,
                                   refit_iterations) if refit else {}
    if refit:
        model_name += f"; bootstrap replicates refit it ({refit_iterations} Newton steps from the full fit)"
    for e in estimators:
        if e == "snips":
            value = _snips(W, R, omega, np.ones(n))
            boot = np.array([_snips(W, R, omega, c) for c in counts])
        elif e in refit_boot:
            value = float(terms[e].mean())
            boot = refit_boot[e]
        else:
            value = float(terms[e].mean())
            boot = counts @ terms[e] / n
        lo, hi = np.percentile(boot, q)
        estimates[e] = Estimate(value, float(lo), float(hi), None if e == "dm" else ess_all)
    if any(sum(W[V[:, j], j]) == 0 for j in range(k) if V[:, j].any()):
        notes.append("the target never shows a logged item in some slot: IPS/SNIPS see no evidence there")
    return OPEReport(
        target=name or getattr(target, "name", "") or type(target).__name__, source=logs.source or "", decisions=n,
        slots=int(V.sum()), k=k, level=level, n_boot=n_boot, clip=clip, estimates=estimates, ess=ess_all,
        ess_per_slot=ess_slot, logged_value=float(((R * V).sum(axis=1) / n_slots).mean()),
        match_rate=float(match[V].mean()), reward_model=model_name if need_q else "", notes=notes)


def _bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]``: how often each decision is drawn in each resample (n draws with replacement)."""
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.float64)


def _refit_replicates(logs: LoggedSlates, keep: np.ndarray, V: np.ndarray, W: np.ndarray, R: np.ndarray,
                      n_slots: np.ndarray, P_all: np.ndarray, fold: np.ndarray, models: dict, counts: np.ndarray,
                      k: int, l2: float, iterations: int) -> dict[str, np.ndarray]:
    """DM's and DR's bootstrap replicates with the reward model refitted on each resample: fold ``f``'s
    model is refitted on the resampled decisions of the other fold (each weighted by its count), then
    every decision of fold ``f`` is scored by it, as the point estimate's cross-fitting does."""
    n = len(keep)
    rows, slots = np.nonzero(V)               # logged slots of the kept decisions
    dec = keep[rows]
    item = logs.shown[dec, slots]
    x_rows = logs.x[dec, item]
    r_rows = R[rows, slots]
    fold_k = fold[keep]
    x_pool = logs.x[keep]                     # [n, M, F]; padded rows have zero target mass
    P_v = P_all * V[:, :, None]               # only the logged slots count (as in the point estimate)
    by_fold = [np.flatnonzero(fold_k == f) for f in (0, 1)]
    out = {"dm": np.empty(len(counts)), "dr": np.empty(len(counts))}
    for b, c in enumerate(counts):
        w_rows = c[rows]
        Q = np.empty((n, x_pool.shape[1], k))
        for f, members in enumerate(by_fold):
            if len(members) == 0:
                continue
            sel = (fold_k[rows] != f) & (w_rows > 0)
            model = models[f]
            if sel.any():
                model = RewardModel(l2, iterations).fit(x_rows[sel], slots[sel], r_rows[sel], k, weight=w_rows[sel],
                                                        start=models[f])
            Q[members] = model.predict_pools(x_pool[members], k)
        dm = np.einsum("njm,nmj->n", P_v, Q)
        q_log = np.zeros_like(R)
        q_log[rows, slots] = Q[rows, logs.shown[dec, slots], slots]
        out["dm"][b] = c @ (dm / n_slots) / n
        out["dr"][b] = c @ ((dm + (W * (R - q_log)).sum(axis=1)) / n_slots) / n
    return out


def _snips(W: np.ndarray, R: np.ndarray, omega: np.ndarray, c: np.ndarray) -> float:
    """Self-normalized IPS with decision multiplicities ``c`` (1s for the estimate, bootstrap counts)."""
    num = c @ (W * R)
    den = c @ W
    per_slot = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    share = c @ omega
    return float(per_slot @ share / share.sum())
