"""`recpilot bench ope`: how the off-policy estimators (recpilot.rl.ope) do against a known truth,
and the report on the Open Bandit sample.

* ``coverage``: a synthetic slate bandit whose click probabilities are known (a logistic item
  attraction times a slot examination probability); logs drawn by a logging policy with
  ``recpilot.rl.slate.sample``; the target's true value computed exactly from its marginals and the
  probabilities. Over ``--seeds`` logs: each estimator's error relative to the truth and how often
  its interval covers it.
* ``obd``: a value model (the direct method's reward model) fitted on the ``bts`` rows, evaluated on
  the ``random`` rows as a greedy and an epsilon-greedy slate, with the uniform policy on both folders
  as the reference (docs/learning.md).
"""

from __future__ import annotations

import json
import time

import numpy as np

from bench.machine import machine
from recpilot.rl import slate
from recpilot.rl.logged import LoggedSlates, ValuePolicy

THETA = np.array([1.2, -0.8, 0.5])     # the synthetic items' true attraction weights
POS_BIAS = np.array([1.0, 0.7, 0.5])   # the chance a shopper examines slot 1, 2, 3


def click_prob(x: np.ndarray) -> np.ndarray:
    """True P(click | item inputs, slot) of the synthetic bandit: [M, 3]."""
    return (1 / (1 + np.exp(-(x @ THETA - 1.5))))[:, None] * POS_BIAS[None, :]


def bandit_logs(seed: int, n: int, logger: slate.Exploration, k: int = 3, m: int = 8) -> tuple[LoggedSlates, np.ndarray]:
    """``n`` decisions over pools of ``m`` items with 3 random inputs each, ``k`` slots drawn by
    ``logger`` on the first input (a weak signal); returns the logs and the true click
    probabilities ``[n, m, 3]``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m, len(THETA))).astype(np.float32)
    shown = np.zeros((n, k), np.int64)
    prop = np.zeros((n, k))
    reward = np.zeros((n, k))
    truth = np.zeros((n, m, len(POS_BIAS)))
    for i in range(n):
        truth[i] = click_prob(x[i].astype(np.float64))
        idx, p = slate.sample(x[i, :, 0].astype(np.float64), k, logger, rng)
        shown[i], prop[i] = idx, p
        reward[i] = rng.random(k) < truth[i][idx, np.arange(k)]
    return LoggedSlates(x, np.ones((n, m), bool), shown, prop, reward, [f"f{j}" for j in range(len(THETA))],
                        source=f"bandit:{seed}"), truth


def true_value(logs: LoggedSlates, truth: np.ndarray, target, k: int) -> float:
    """The target's exact expected reward per slot on these pools: its marginals times the click
    probabilities."""
    return float(np.mean([np.sum(target.marginals(logs.pool(i), k) * truth[i][:, :k].T) / k for i in range(logs.n)]))


def bandit_target(exploration: str = "epsilon_greedy:0.2") -> ValuePolicy:
    """A policy that knows the attraction weights: much better than the logs."""
    return ValuePolicy(lambda x: x @ THETA, slate.Exploration.parse(exploration), f"true-attraction ({exploration})")


def coverage(seeds: int, n: int, logger: str, target: str, n_boot: int, level: float) -> dict:
    from recpilot.rl.ope import ESTIMATORS, evaluate

    pol = bandit_target(target)
    log_rule = slate.Exploration.parse(logger)
    k = 3 if log_rule.rule == "uniform" else 1  # stratified loggers: one slot, so every item has support
    rel = {e: [] for e in ESTIMATORS}
    covered = dict.fromkeys(ESTIMATORS, 0)
    ess = []
    t0 = time.monotonic()
    for s in range(seeds):
        logs, truth = bandit_logs(1000 + s, n, log_rule, k)
        v = true_value(logs, truth, pol, k)
        rep = evaluate(logs, pol, n_boot=n_boot, level=level, seed=s)
        ess.append(rep.ess)
        for e, est in rep.estimates.items():
            rel[e].append((est.value - v) / v)
            covered[e] += est.lo <= v <= est.hi
    return {"seeds": seeds, "decisions": n, "k": k, "logger": logger, "target": pol.name, "level": level,
            "mean_ess": float(np.mean(ess)), "seconds": round(time.monotonic() - t0, 1),
            "estimators": {e: {"mean_rel_error": float(np.mean(rel[e])), "mean_abs_rel_error": float(np.mean(np.abs(rel[e]))),
                               "max_abs_rel_error": float(np.max(np.abs(rel[e]))), "covered": covered[e]}
                           for e in ESTIMATORS}}


def obd_report(obd_dir, n_boot: int, level: float, l2: float) -> list[dict]:
    from recpilot.rl.logs import from_obd
    from recpilot.rl.ope import evaluate, fit_reward_model

    random, bts = from_obd(obd_dir, "random"), from_obd(obd_dir, "bts")
    model = fit_reward_model(bts, l2=l2)
    uniform = ValuePolicy(lambda x: np.zeros(len(x)), slate.Exploration("uniform"), "uniform")
    runs = [(random, ValuePolicy(model.values, slate.GREEDY, "fitted on obd:bts (greedy)")),
            (random, ValuePolicy(model.values, slate.Exploration.parse("epsilon_greedy:0.1"),
                                 "fitted on obd:bts (epsilon_greedy:0.1)")),
            (random, uniform), (bts, uniform)]
    return [evaluate(logs, pol, n_boot=n_boot, level=level, l2=l2) for logs, pol in runs]


def run(args) -> int:
    import torch

    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    out: dict = {}
    if args.part in ("coverage", "all"):
        c = coverage(args.seeds, args.decisions, args.logger, args.target, args.n_boot, args.level)
        out["coverage"] = c
        print(f"synthetic bandit: {c['seeds']} seeds x {c['decisions']} decisions, k={c['k']}, logger {c['logger']}, "
              f"target {c['target']}, mean weight ESS {c['mean_ess']:.0f}, {c['seconds']} s")
        print(f"  {'estimator':<10}{'mean rel err':>14}{'mean |rel err|':>16}{'max |rel err|':>15}{'covered':>10}")
        for e, r in c["estimators"].items():
            print(f"  {e:<10}{r['mean_rel_error']:>14.4f}{r['mean_abs_rel_error']:>16.4f}{r['max_abs_rel_error']:>15.4f}"
                  f"{r['covered']:>7}/{c['seeds']}")
    if args.part in ("obd", "all"):
        from pathlib import Path

        from recpilot.models.data.dataset import TrainSettings

        reports = obd_report(Path(args.obd_dir) if args.obd_dir else TrainSettings().obd_dir, args.n_boot, args.level, args.l2)
        out["obd"] = [r.to_dict() for r in reports]
        for r in reports:
            print(r.table())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0
