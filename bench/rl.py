"""`recpilot bench rl`: learning curves of re-ranking policies on the in-process shop.

Every policy runs on :class:`recpilot.rl.fastshop.FastShop` with the same seed (the same open-loop
traffic, the same shoppers asking, the same ranker) and the same budget of impressions, showing
``k`` of a pool of the ranker's top ``pool`` candidates:

* ``uniform``: a uniformly random ordered k-subset of the pool;
* ``popularity``: the pool by the feature store's popularity score;
* ``ranker``: the ranker's order (greedy on its score);
* ``qlearn``: recpilot's :class:`recpilot.rl.qlearn.QLearner`, online, exploring;
* ``vw``: Vowpal Wabbit ``cb_explore_adf``, slot by slot: the remaining pool items are the ADF
  actions with the same policy inputs, the shared features are the user's (session length) and the
  slot; cost -1 for a click;
* ``truthfit`` (a measurement, not a policy): shows uniform slates like ``uniform``; until the last
  window it records every pool item's policy inputs with the simulator's hidden attractiveness, then
  fits an MLP (256-128-64, MSE) from the inputs to that attractiveness, and over the last window
  reports the true CTR of the greedy order by the fit. That is about the best any policy could do
  from the policy inputs alone, with noise-free labels and every item of every pool labelled: the
  ceiling of what these inputs allow, below the ceiling of the truth itself.

The ranker is a real ranker version: for each seed, logged impressions of the shop's first
``--ranker-impressions`` requests (k random pool items out of random candidates, before any ranker
exists) are labelled by the shoppers' clicks and trained with ``recpilot.models.train`` (the code
``recpilot train`` runs, default hyperparameters), registered in a model repository under
``.cache/rl-bench/`` and loaded with ``recpilot.models.loader``; later runs reuse it.

Reported per 5,000 impressions (``--window``): CTR = clicks / shown items, mean and standard
deviation over seeds; the expected CTR of what each policy showed from the simulator's truth; and
at the end the true CTR of each policy's greedy version over the last window's requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from bench.machine import machine

METHODS = ("uniform", "popularity", "ranker", "qlearn", "vw", "truthfit")
RANKER_HP = {}  # recpilot train's defaults (recpilot.models.train.DEFAULT_HP)


# ---------------------------------------------------------------------------------------------
# the ranker


def _ranker_dir(cache: Path, cfg, n_imp: int) -> Path:
    key = json.dumps({"cfg": {k: v for k, v in asdict(cfg).items() if k not in ("pool_size",)}, "n": n_imp,
                      "hp": RANKER_HP}, sort_keys=True)
    return cache / f"ranker-seed{cfg.seed}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def ranker_for(cfg, n_imp: int, cache: Path, quiet: bool = False):
    """The seed's ranker (trained and registered on first use): ``(predict, meta)``."""
    from recpilot.models.loader import load_model
    from recpilot.models.repository import ModelRepository

    repo = ModelRepository(_ranker_dir(cache, cfg, n_imp))
    if not repo.versions("ranker"):
        train_ranker(cfg, n_imp, repo, quiet)
    version = repo.versions("ranker")[-1]
    model = load_model(repo.path("ranker", version), repo.meta("ranker", version), device="cpu")
    return model.predict, repo.meta("ranker", version)


def train_ranker(cfg, n_imp: int, repo, quiet: bool = False) -> str:
    import pandas as pd

    from recpilot.featurespec import DENSE_FEATURES
    from recpilot.models.data import examples_from_impressions
    from recpilot.models.train import train_and_register
    from recpilot.rl.fastshop import FastShop

    shop = FastShop(cfg, scorer=None)
    rng = np.random.default_rng(cfg.seed + 101)
    cols: dict[str, list] = {k: [] for k in ("request_id", "user_id", "item_id", "position", "timestamp_ms",
                                              "category", "label")}
    dense = []
    for _ in range(n_imp):
        ctx = shop.next_context()
        if ctx is None:
            continue
        shown = rng.permutation(len(ctx.pool_item_ids))[: cfg.k]
        clicks = shop.show(ctx, shown)
        for j, a in enumerate(shown):
            iid = ctx.pool_item_ids[a]
            cols["request_id"].append(ctx.request_id)
            cols["user_id"].append(ctx.user_id)
            cols["item_id"].append(iid)
            cols["position"].append(j + 1)
            cols["timestamp_ms"].append(ctx.now_ms)
            cols["category"].append(shop.store.items.get(iid, {}).get("category", ""))
            cols["label"].append(float(clicks[j]))
            dense.append(ctx.dense[a])
    df = pd.DataFrame(cols)
    d = np.stack(dense)
    for i, name in enumerate(DENSE_FEATURES):
        df[name] = d[:, i]
    ds = examples_from_impressions(df, source=f"fastshop(seed={cfg.seed}): {n_imp} requests, random order")
    report = train_and_register(ds, "torch", name="ranker", hp=dict(RANKER_HP), seed=cfg.seed, repository=repo)
    if not quiet:
        m = report.meta["metrics"]
        print(f"seed {cfg.seed}: ranker trained on {len(ds)} shown items ({ds.positives} clicks): holdout AUC "
              f"{m['auc']:.3f} (popularity {m['baseline']['auc']:.3f})", flush=True)
    return str(report.version)


# ---------------------------------------------------------------------------------------------
# the policies


class VWPolicy:
    """``cb_explore_adf`` slot by slot over the remaining pool items."""

    def __init__(self, explore: str, seed: int, extra: str = "") -> None:
        import vowpalwabbit

        rule, _, arg = explore.partition(":")
        flag = f"--epsilon {arg}" if rule == "epsilon_greedy" else f"--softmax --lambda {1.0 / float(arg):g}"
        self.vw = vowpalwabbit.Workspace(f"--cb_explore_adf {flag} -q UA --quiet --random_seed {seed} {extra}".strip(),
                                         quiet=True)
        self.rng = np.random.default_rng(seed + 5)

    @staticmethod
    def _lines(x: np.ndarray) -> list[str]:
        return ["|A " + " ".join(f"f{c}:{v:.5g}" for c, v in enumerate(row) if v != 0.0) for row in x]

    @staticmethod
    def _shared(ctx, j: int) -> str:
        return f"shared |U s{j + 1} sess:{float(ctx.dense[0, 16]):.4g}"

    def _pmf(self, shared: str, lines: list[str], remaining: list[int]) -> np.ndarray:
        # pyvw's own calls (Workspace.predict does the same, plus a Python object per line)
        import pylibvw

        ec = self.vw._parse(shared + "\n" + "\n".join(lines[a] for a in remaining))
        pylibvw.vw.predict_multi(self.vw, ec)
        p = np.asarray(ec[0].get_action_scores(), dtype=np.float64)
        pylibvw.vw._finish_example_multi_ex(self.vw, ec)
        return p / p.sum()

    def decide(self, ctx, k: int, greedy: bool = False):
        lines = self._lines(ctx.x)
        remaining = list(range(len(lines)))
        shown, probs, examples = [], [], []
        for j in range(min(k, len(lines))):
            shared = self._shared(ctx, j)
            p = self._pmf(shared, lines, remaining)
            c = int(np.argmax(p)) if greedy else int(min(np.searchsorted(np.cumsum(p), self.rng.random() * p.sum()),
                                                          len(p) - 1))
            shown.append(remaining[c])
            probs.append(float(p[c]))
            examples.append((shared, list(remaining), c, float(p[c])))
            remaining.pop(c)
        self._pending = (lines, examples)
        return np.array(shown), np.array(probs)

    def learn(self, clicks: np.ndarray) -> None:
        lines, examples = self._pending
        for (shared, remaining, c, p), click in zip(examples, clicks):
            import pylibvw

            ex = [shared] + [(f"0:{-float(click):g}:{p:.6g} " if i == c else "") + lines[a]
                             for i, a in enumerate(remaining)]
            ec = self.vw._parse("\n".join(ex))
            pylibvw.vw.learn_multi(self.vw, ec)
            pylibvw.vw._finish_example_multi_ex(self.vw, ec)


def run_method(method: str, cfg, args, seed_dir: Path) -> dict:
    """One policy on one seed: per-impression clicks, shown items and true values."""
    import torch

    from recpilot.rl import slate
    from recpilot.rl.fastshop import FastShop
    from recpilot.rl.qlearn import QConfig, QLearner

    torch.set_num_threads(1)
    predict, _ = ranker_for(cfg, args.ranker_impressions, Path(args.cache), quiet=True)
    shop = FastShop(cfg, scorer=predict)
    n, k = args.impressions, cfg.k
    clicks = np.zeros(n)
    shown_n = np.zeros(n)
    true_v = np.zeros(n)
    greedy_v = np.full(n, np.nan)
    oracle_v = np.full(n, np.nan)
    last = n - args.window
    q = vw = None
    if method == "qlearn":
        q = QLearner(QConfig(hidden=tuple(args.q_hidden), lr=args.q_lr, batch_size=args.q_batch, seed=cfg.seed,
                             explore=args.q_explore, explore_start=args.q_explore_start,
                             explore_decay=args.q_explore_decay, gamma=args.q_gamma,
                             loss="huber" if args.q_gamma > 0 else "bce", target_sync=args.q_target_sync))
    elif method == "vw":
        vw = VWPolicy(args.vw_explore, cfg.seed, args.vw_args)
    rng = np.random.default_rng(cfg.seed + 17)
    fit_x, fit_y, fit = [], [], None
    t0 = time.monotonic()
    for i in range(n):
        ctx = shop.next_context()
        m = len(ctx.pool_item_ids)
        if method == "truthfit":
            if i < last:
                fit_x.append(ctx.x)
                fit_y.append(shop.truth.attractiveness(ctx._user, ctx.pool_item_ids, ctx.elapsed_s))
            elif fit is None:
                fit = fit_truth(np.concatenate(fit_x), np.concatenate(fit_y), seed=cfg.seed)
                fit_x = fit_y = None
        if method == "vw":
            idx, prop = vw.decide(ctx, k)
            p_marg = None
        else:
            if method in ("uniform", "truthfit"):
                values, ex = np.zeros(m), slate.Exploration("uniform")
            elif method == "popularity":
                values, ex = ctx.popularity, slate.GREEDY
            elif method == "ranker":
                values, ex = ctx.scores.astype(np.float64), slate.GREEDY
            else:
                values, ex = q.values(ctx.x), q.exploration(i)
            idx, prop = slate.sample(values, k, ex, rng)
            p_marg = slate.marginals(values, k, ex)
            true_v[i] = shop.true_value(ctx, p_marg)
        if i >= last:
            oracle_v[i] = shop.oracle_value(ctx, k)
        r = shop.show(ctx, idx, prop)
        clicks[i], shown_n[i] = r.sum(), len(r)
        if method == "vw":
            p_marg = np.zeros((len(idx), m))
            p_marg[np.arange(len(idx)), idx] = 1.0  # the realised list (VW's marginals are not exact here)
            true_v[i] = shop.true_value(ctx, p_marg)
            vw.learn(r)
            if i >= last:
                g, _ = vw.decide(ctx, k, greedy=True)
                pg = np.zeros((len(g), m))
                pg[np.arange(len(g)), g] = 1.0
                greedy_v[i] = shop.true_value(ctx, pg)
        elif method == "qlearn":
            q.observe(ctx.reward_rows(idx, r))
            if i % args.q_train_every == 0:
                q.train(args.q_steps)
            if i >= last:
                greedy_v[i] = shop.true_value(ctx, slate.marginals(values, k, slate.GREEDY))
        elif method == "truthfit":
            if i >= last:
                greedy_v[i] = shop.true_value(ctx, slate.marginals(fit(ctx.x), k, slate.GREEDY))
        elif i >= last:
            greedy_v[i] = true_v[i]  # the fixed policies are their own greedy version
    secs = time.monotonic() - t0
    return {"method": method, "seed": cfg.seed, "clicks": clicks, "shown": shown_n, "true": true_v,
            "greedy": greedy_v, "oracle": oracle_v, "seconds": secs, "qstats": q.stats() if q is not None else None}


def fit_truth(x: np.ndarray, y: np.ndarray, seed: int = 0, steps: int = 4000, batch: int = 1024):
    """An MLP (256-128-64) fitted by MSE from policy inputs ``x [N, F]`` to the hidden attractiveness
    ``y [N]`` (measuring only: ``truthfit``); returns ``predict(x [M, F]) -> [M]``."""
    import torch

    torch.manual_seed(seed)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy(((x - mu) / sd).astype(np.float32))
    yt = torch.from_numpy((y * 10).astype(np.float32))  # attractiveness is ~0.01-0.3: scaled for the loss
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        b = torch.randint(len(xt), (batch,), generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(xt[b]).squeeze(1), yt[b])
        loss.backward()
        opt.step()

    def predict(xs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(((xs - mu) / sd).astype(np.float32))).squeeze(1).numpy().astype(np.float64)

    return predict


def _job(payload):
    method, cfg, args = payload
    if method == "__ranker__":
        ranker_for(cfg, args.ranker_impressions, Path(args.cache))
        return None
    return run_method(method, cfg, args, Path(args.cache))


def windows(a: np.ndarray, w: int) -> np.ndarray:
    n = len(a) // w
    return a[: n * w].reshape(n, w).sum(axis=1)


def run(args) -> int:
    import multiprocessing as mp

    from recpilot.rl.fastshop import FastConfig

    import argparse

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = argparse.Namespace(**{k: v for k, v in vars(args).items() if not callable(v)})  # picklable for the pool
    if args.from_json:
        report = merge([json.loads(Path(f).read_text()) for f in args.from_json.split(",") if f.strip()])
        return _emit(report, args, f"merged {args.from_json}: seeds {report['seeds']}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        from recpilot.errors import InvalidArgument

        raise InvalidArgument(f"unknown methods {bad} (expected some of {', '.join(METHODS)})")
    seeds = list(range(args.seed, args.seed + args.seeds))
    base = FastConfig(k=args.k, pool_size=args.pool, n_users=args.users, n_items=args.items)
    cfgs = {s: replace(base, seed=s) for s in seeds}
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}")
    print(f"budget: {args.impressions} impressions x k={args.k} from a pool of {args.pool}; seeds {seeds}; "
          f"methods {methods}; window {args.window}; {args.processes} processes", flush=True)
    t0 = time.monotonic()
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.processes) as pool:
        pool.map(_job, [("__ranker__", cfgs[s], args) for s in seeds])
        print(f"rankers ready ({time.monotonic() - t0:.0f}s)", flush=True)
        jobs = [(m, cfgs[s], args) for s in seeds for m in methods]
        results = []
        for res in pool.imap_unordered(_job, jobs):
            results.append(res)
            print(f"  {res['method']:<10} seed {res['seed']}: CTR {res['clicks'].sum() / res['shown'].sum():.4f} "
                  f"({res['seconds']:.0f}s, {1000 * res['seconds'] / args.impressions:.2f} ms/impression)", flush=True)
    report = summarise(results, methods, seeds, args)
    return _emit(report, args, f"total {time.monotonic() - t0:.0f}s; machine at the end: {machine()}")


def _emit(report: dict, args, last: str) -> int:
    print(report["table"])
    if args.plot:
        plot(report, args.plot, args)
        print(f"picture: {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=1))
    print(last)
    return 0


def summarise(results: list[dict], methods: list[str], seeds: list[int], args) -> dict:
    w = args.window
    curves, true_curves, rows = {}, {}, []
    for m in methods:
        rs = sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"])
        ctr = np.stack([windows(r["clicks"], w) / windows(r["shown"], w) for r in rs])
        tru = np.stack([windows(r["true"], w) / w for r in rs])
        curves[m], true_curves[m] = ctr, tru
        greedy = np.array([np.nanmean(r["greedy"]) for r in rs])
        rows.append({"method": m, "final_ctr": ctr[:, -1], "final_true": tru[:, -1], "greedy_true": greedy,
                     "oracle": np.array([np.nanmean(r["oracle"]) for r in rs]),
                     "overall_ctr": np.array([r["clicks"].sum() / r["shown"].sum() for r in rs]),
                     "ms": float(np.mean([1000 * r["seconds"] / args.impressions for r in rs]))})
    return {"table": _table(rows, w, len(seeds), args.impressions), "curves": {m: c.tolist() for m, c in curves.items()},
            "true_curves": {m: c.tolist() for m, c in true_curves.items()},
            "rows": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows],
            "window": w, "seeds": seeds, "impressions": args.impressions}


def _table(rows: list[dict], w: int, n_seeds: int, impressions: int) -> str:
    uni = next((r for r in rows if r["method"] == "uniform"), None)
    lines = [f"| policy | CTR, last {w:,} impressions (mean ± sd, {n_seeds} seeds) | x uniform | true CTR of what "
             f"it showed, last window | true CTR of its greedy version, last window | CTR over all {impressions:,} "
             f"| ms / impression |", "|---|---|---|---|---|---|---|"]
    oracle = np.mean([r["oracle"].mean() for r in rows])
    for r in rows:
        ratio = (f"{r['final_ctr'].mean() / uni['final_ctr'].mean():.2f}" if uni is not None else "n/a")
        lines.append(f"| {r['method']} | {r['final_ctr'].mean():.4f} ± {r['final_ctr'].std(ddof=1) if n_seeds > 1 else 0:.4f} "
                     f"| {ratio} | {r['final_true'].mean():.4f} | {r['greedy_true'].mean():.4f} "
                     f"| {r['overall_ctr'].mean():.4f} | {r['ms']:.1f} |")
    lines.append(f"\nceiling (truth, not a policy): the pool's k most attractive items in order give CTR {oracle:.4f} "
                 f"on the last window's requests ({oracle / uni['final_true'].mean():.2f}x uniform's true CTR)"
                 if uni is not None else f"\nceiling (truth, not a policy): CTR {oracle:.4f}")
    return "\n".join(lines)


PER_SEED = ("final_ctr", "final_true", "greedy_true", "oracle", "overall_ctr")


def merge(reports: list[dict]) -> dict:
    """One report from the ``--json`` files of runs on disjoint seeds with the same budget and
    window (e.g. seeds 0-1, then 2-4): curves and per-seed figures side by side, ms / impression
    averaged over the seeds, the table computed again."""
    from recpilot.errors import InvalidArgument

    first = reports[0]
    for r in reports[1:]:
        if (r["window"], r["impressions"]) != (first["window"], first["impressions"]):
            raise InvalidArgument("runs of different budgets or windows do not merge")
    seeds = [s for r in reports for s in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise InvalidArgument(f"runs share seeds: {sorted(seeds)}")
    methods = [m for m in first["curves"] if all(m in r["curves"] for r in reports)]
    rows = []
    for m in methods:
        parts = [next(x for x in r["rows"] if x["method"] == m) for r in reports]
        row = {"method": m, **{k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in PER_SEED}}
        row["ms"] = float(sum(p["ms"] * len(r["seeds"]) for p, r in zip(parts, reports)) / len(seeds))
        rows.append(row)
    return {"table": _table(rows, first["window"], len(seeds), first["impressions"]),
            "curves": {m: [c for r in reports for c in r["curves"][m]] for m in methods},
            "true_curves": {m: [c for r in reports for c in r["true_curves"][m]] for m in methods},
            "rows": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows],
            "window": first["window"], "seeds": seeds, "impressions": first["impressions"]}


def plot(report: dict, path: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = report["window"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m, c in report["curves"].items():
        c = np.asarray(c)
        x = (np.arange(c.shape[1]) + 1) * w
        mean, sd = c.mean(axis=0), (c.std(axis=0, ddof=1) if c.shape[0] > 1 else np.zeros(c.shape[1]))
        ax.plot(x, mean, marker="o", label=m)
        ax.fill_between(x, mean - sd, mean + sd, alpha=0.2)
    ax.set_xlabel("impressions")
    ax.set_ylabel(f"CTR per {w:,} impressions (clicks / shown items)")
    ax.set_title(f"recpilot bench rl: k={args.k}, pool {args.pool}, {len(report['seeds'])} seeds (mean ± sd)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
