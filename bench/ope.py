"""`recpilot bench ope`: how the off-policy estimators (recpilot.rl.ope) do against a known truth,
and the report on the Open Bandit sample.

* ``coverage``: a synthetic slate bandit whose click probabilities are known (a logistic item
  attraction times a slot examination probability); logs drawn by a logging policy with
  ``recpilot.rl.slate.sample``; the target's true value computed exactly from its marginals and the
  probabilities. Over ``--seeds`` logs: each estimator's error relative to the truth and how often
  its interval covers it.
* ``sim``: the shopper simulator's logs (:class:`recpilot.rl.fastshop.FastShop` with bench rl's
  cached ranker): a Q-learning target trained on one log of an exploring logging policy, then, per
  seed, a fresh log of the same logger on the next stretch of traffic, the estimates against the
  simulator's exact value of the target on those contexts (``recpilot.simulator.truth``). The
  logger is any rule of ``recpilot.rl.slate`` (stratified ``epsilon_greedy:0.1`` by default,
  ``uniform``, or a rule with a uniform share ``epsilon_greedy:0.1+uniform:0.5``); ``--refit``
  refits the reward model in every bootstrap replicate.
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


def coverage(seeds: int, n: int, logger: str, target: str, n_boot: int, level: float, refit: bool = False) -> dict:
    from recpilot.rl.ope import ESTIMATORS, evaluate

    pol = bandit_target(target)
    log_rule = slate.Exploration.parse(logger)
    # stratified loggers: one slot, so every item has support; a uniform share gives it in every slot
    k = 3 if log_rule.rule == "uniform" or log_rule.uniform > 0 else 1
    rel = {e: [] for e in ESTIMATORS}
    covered = dict.fromkeys(ESTIMATORS, 0)
    ess = []
    t0 = time.monotonic()
    for s in range(seeds):
        logs, truth = bandit_logs(1000 + s, n, log_rule, k)
        v = true_value(logs, truth, pol, k)
        rep = evaluate(logs, pol, n_boot=n_boot, level=level, seed=s, refit=refit)
        ess.append(rep.ess)
        for e, est in rep.estimates.items():
            rel[e].append((est.value - v) / v)
            covered[e] += est.lo <= v <= est.hi
    return {"seeds": seeds, "decisions": n, "k": k, "logger": logger, "target": pol.name, "level": level, "refit": refit,
            "mean_ess": float(np.mean(ess)), "seconds": round(time.monotonic() - t0, 1),
            "estimators": {e: {"mean_rel_error": float(np.mean(rel[e])), "mean_abs_rel_error": float(np.mean(np.abs(rel[e]))),
                               "max_abs_rel_error": float(np.max(np.abs(rel[e]))), "covered": covered[e]}
                           for e in ESTIMATORS}}


def sim_part(seeds: int, n: int, train_decisions: int, logger: str, target: str, n_boot: int, level: float,
             q_steps: int, cfg=None, scorer=None, ranker_impressions: int = 3000, cache: str = ".cache/rl-bench",
             progress=print, refit: bool = False, first_seed: int = 0) -> dict:
    """The issue's OPE target on simulator logs. One :class:`FastShop` stream (``cfg``, default
    bench rl's FastConfig seed 0, with its cached ranker unless ``scorer`` is given):

    1. ``train_decisions`` decisions under ``logger`` (a rule on the ranker's scores) -> a
       :class:`QLearner` (gamma 0) fed their reward rows and trained ``q_steps`` minibatch updates
       -> the target: its values with the ``target`` rule;
    2. per seed ``s``: the next ``n`` decisions of the stream under ``logger`` (slates drawn with
       ``default_rng(s)``), logged; ``evaluate`` (all four estimators, bootstrap ``level`` intervals)
       against ``policy_value`` (the exact expected CTR of the target on those contexts) and the
       realised CTR of one run of the target on them (its slates sampled, clicks drawn from the
       click model; nothing fed back to the store).
    Also per seed: the share of the target's slot mass on (slot, item) pairs the logger could never
    show there (``unsupported``), which only the reward model speaks for.

    ``first_seed``: seeds below it are logged (the stream and every random draw advance exactly as in
    a full run) but not evaluated, so a run cut short can be finished with the seeds it lacks."""
    import torch

    from recpilot.rl.fastshop import FastConfig, FastShop
    from recpilot.rl.ope import evaluate
    from recpilot.rl.qlearn import QConfig, QLearner
    from recpilot.simulator.truth import policy_value

    t0 = time.monotonic()
    cfg = cfg or FastConfig()
    if scorer is None:
        from pathlib import Path

        from bench.rl import ranker_for

        scorer, _ = ranker_for(cfg, ranker_impressions, Path(cache), quiet=True)
    log_rule, tgt_rule = slate.Exploration.parse(logger), slate.Exploration.parse(target)
    shop = FastShop(cfg, scorer=scorer, log=True)
    k = cfg.k
    t_setup = time.monotonic() - t0

    # 1. the target: a Q-learner trained on a separate log of the same logger
    q = QLearner(QConfig(seed=0, explore=target))
    rng = np.random.default_rng(10_000)
    for _ in range(train_decisions):
        ctx = shop.next_context()
        if ctx is None:
            continue
        idx, prop = slate.sample(ctx.scores.astype(np.float64), k, log_rule, rng)
        q.observe(ctx.reward_rows(idx, shop.show(ctx, idx, prop)))
    q.train(q_steps)
    torch.set_num_threads(1)
    pol = ValuePolicy(q.values, tgt_rule, f"Q-learner ({train_decisions} logged decisions, {q_steps} updates; {target})")
    shop.reset_log()
    t_target = time.monotonic() - t0 - t_setup

    rows = []
    for s in range(seeds):
        ts = time.monotonic()
        rng = np.random.default_rng(s)
        unsupported = []
        for _ in range(n):
            ctx = shop.next_context()
            if ctx is None:
                continue
            values = ctx.scores.astype(np.float64)
            idx, prop = slate.sample(values, k, log_rule, rng)
            p_log = slate.marginals(values, k, log_rule)
            p_tgt = pol.marginals(ctx.x, k)
            unsupported.append(float((p_tgt * (p_log <= 0)).sum() / p_tgt.shape[0]))
            shop.show(ctx, idx, prop)
        logs = shop.logged()
        shop.reset_log()
        t_log = time.monotonic() - ts
        if s < first_seed:
            progress(f"  seed {s}: logged only (--sim-first-seed {first_seed}), {t_log:.1f} s")
            continue
        rep = evaluate(logs, pol, n_boot=n_boot, level=level, seed=s, refit=refit)
        truth = policy_value(logs, pol)["value"]
        # one run of the target on the same contexts: its slates drawn, clicks from the click model
        run_rng = np.random.default_rng(50_000 + s)
        tr = logs.meta["truth"]
        exam = tr.examine(k)
        clicks = shown = 0
        for i in range(logs.n):
            pool_ids = logs.meta["pool_item_ids"][i]
            a = tr.attractiveness(logs.meta["users"][i], pool_ids, float(logs.meta["elapsed_s"][i]))
            sl, _ = slate.sample(q.values(logs.pool(i)), k, tgt_rule, run_rng)
            clicks += int((run_rng.random(len(sl)) < exam[: len(sl)] * a[sl]).sum())
            shown += len(sl)
        row = {"seed": s, "decisions": logs.n, "truth": truth, "realised": clicks / max(shown, 1),
               "logged_ctr": rep.logged_value, "match_rate": rep.match_rate, "ess": rep.ess,
               "ess_per_slot": rep.ess_per_slot, "unsupported": float(np.mean(unsupported)),
               "seconds_log": round(t_log, 1), "seconds": round(time.monotonic() - ts, 1),
               "estimates": {}}
        for e, est in rep.estimates.items():
            row["estimates"][e] = {"value": est.value, "lo": est.lo, "hi": est.hi,
                                   "rel_error": (est.value - truth) / truth, "covered": bool(est.lo <= truth <= est.hi)}
        rows.append(row)
        d = row["estimates"]["dr"]
        progress(f"  seed {s}: truth {truth:.5f}, DR {d['value']:.5f} [{d['lo']:.5f}, {d['hi']:.5f}] "
                 f"({100 * d['rel_error']:+.1f}%), IPS {row['estimates']['ips']['value']:.5f}, "
                 f"ESS {rep.ess:.0f}, unsupported {row['unsupported']:.3f}, {row['seconds']} s")
    summary = {}
    for e in rows[0]["estimates"] if rows else ():
        rel = np.array([r["estimates"][e]["rel_error"] for r in rows])
        summary[e] = {"within_10pct": int((np.abs(rel) <= 0.10).sum()), "covered": int(sum(r["estimates"][e]["covered"] for r in rows)),
                      "mean_rel_error": float(rel.mean()), "mean_abs_rel_error": float(np.abs(rel).mean()),
                      "max_abs_rel_error": float(np.abs(rel).max())}
    return {"seeds": seeds, "first_seed": first_seed, "decisions": n, "train_decisions": train_decisions, "logger": f"ranker scores, {logger}",
            "target": pol.name, "k": k, "pool": cfg.pool_size, "level": level, "n_boot": n_boot, "refit": refit,
            "seconds": {"setup": round(t_setup, 1), "target": round(t_target, 1), "total": round(time.monotonic() - t0, 1)},
            "rows": rows, "summary": summary}


def sim_table(r: dict) -> str:
    pct = f"{100 * r['level']:g}%"
    lines = [f"| seed | truth (exact) | realised (one run) | DR | DR {pct} interval | DR rel. error | covered | IPS "
             f"(rel. error) | SNIPS (rel. error) | DM (rel. error) | weight ESS | unsupported target mass |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        e = row["estimates"]
        d = e["dr"]
        lines.append(f"| {row['seed']} | {row['truth']:.5f} | {row['realised']:.5f} | {d['value']:.5f} | "
                     f"[{d['lo']:.5f}, {d['hi']:.5f}] | {100 * d['rel_error']:+.1f}% | {'yes' if d['covered'] else 'no'} | "
                     + " | ".join(f"{e[x]['value']:.5f} ({100 * e[x]['rel_error']:+.1f}%)" for x in ("ips", "snips", "dm"))
                     + f" | {row['ess']:.0f} | {row['unsupported']:.3f} |")
    n = len(r["rows"])
    lines += ["", f"| estimator | within 10% of the truth | {pct} interval covers it | mean rel. error | mean abs rel. error | max abs rel. error |",
              "|---|---|---|---|---|---|"]
    for e, s in r["summary"].items():
        lines.append(f"| {e} | {s['within_10pct']}/{n} | {s['covered']}/{n} | {100 * s['mean_rel_error']:+.1f}% | "
                     f"{100 * s['mean_abs_rel_error']:.1f}% | {100 * s['max_abs_rel_error']:.1f}% |")
    return "\n".join(lines)


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
        c = coverage(args.seeds, args.decisions, args.logger, args.target, args.n_boot, args.level, args.refit)
        out["coverage"] = c
        print(f"synthetic bandit: {c['seeds']} seeds x {c['decisions']} decisions, k={c['k']}, logger {c['logger']}, "
              f"target {c['target']}, mean weight ESS {c['mean_ess']:.0f}, {c['seconds']} s")
        print(f"  {'estimator':<10}{'mean rel err':>14}{'mean |rel err|':>16}{'max |rel err|':>15}{'covered':>10}")
        for e, r in c["estimators"].items():
            print(f"  {e:<10}{r['mean_rel_error']:>14.4f}{r['mean_abs_rel_error']:>16.4f}{r['max_abs_rel_error']:>15.4f}"
                  f"{r['covered']:>7}/{c['seeds']}")
    if args.part in ("sim", "all"):
        print(f"simulator logs: {args.seeds} seeds x {args.sim_decisions} decisions, logger {args.sim_logger} on the "
              f"ranker's scores, target trained on {args.sim_train} decisions ({args.sim_q_steps} updates), "
              f"served {args.sim_target}", flush=True)
        r = sim_part(args.seeds, args.sim_decisions, args.sim_train, args.sim_logger, args.sim_target, args.n_boot,
                     args.level, args.sim_q_steps, ranker_impressions=args.ranker_impressions, cache=args.cache,
                     progress=lambda m: print(m, flush=True), refit=args.refit, first_seed=args.sim_first_seed)
        out["sim"] = r
        print(sim_table(r))
        print(f"seconds: {r['seconds']}; machine at the end: {machine()}")
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
