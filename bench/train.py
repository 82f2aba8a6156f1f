"""`recpilot bench train`: training time on synthetic logged impressions, each framework, with
the holdout figures of the model it trained."""

from __future__ import annotations

import time

from bench.machine import machine


def run(args) -> int:
    import tempfile
    from pathlib import Path

    from recpilot.models.data import TrainSettings, examples_from_impressions, synthetic_impressions
    from recpilot.models.loader import configure_threads
    from recpilot.models.repository import ModelRepository
    from recpilot.models.train import DEFAULT_HP, Progress, train_and_register
    from recpilot.settings import load

    ts = load(TrainSettings)
    configure_threads(ts.intra_op_threads, ts.inter_op_threads)
    print(f"machine: {machine()}")
    print(f"threads: intra-op {ts.intra_op_threads}, inter-op {ts.inter_op_threads}")
    t0 = time.monotonic()
    df = synthetic_impressions(args.rows, seed=args.seed)
    ds = examples_from_impressions(df, source=f"synthetic:{args.rows}")
    print(f"data: {len(ds)} synthetic logged impressions ({ds.positives} clicks), feature_set recpilot, "
          f"built in {time.monotonic() - t0:.1f}s")
    hp = dict(DEFAULT_HP)
    if args.epochs:
        hp["epochs"] = args.epochs
    if args.no_early_stopping:
        hp["validation_fraction"] = 0.0
    print(f"hyperparameters: {hp}")
    results = []
    with tempfile.TemporaryDirectory(prefix="recpilot-bench-train-") as tmp:
        repo = ModelRepository(Path(tmp))
        for fw in [f.strip() for f in args.frameworks.split(",") if f.strip()]:
            t = time.monotonic()
            report = train_and_register(ds, fw, name=f"bench-{fw}", hp=hp, seed=args.seed, repository=repo,
                                        progress=Progress(enabled=True), holdout_fraction=ts.holdout_fraction)
            total = time.monotonic() - t
            tr = report.meta["training"]
            rows = tr["fit_rows"] * len(tr["epochs"])
            results.append((fw, tr["seconds"], total, rows / tr["seconds"], report.meta["metrics"]["auc"],
                            report.meta["metrics"]["baseline"]["auc"], tr["parameters"],
                            f"{len(tr['epochs'])} (kept {tr['best_epoch']})"))
    print()
    print("fit s: training incl. per-epoch validation/holdout scoring; rows/s = fit rows x epochs run / fit s")
    print(f"{'framework':<12}{'fit s':>8}{'fit+eval+export s':>20}{'rows/s':>10}{'epochs run':>14}{'holdout auc':>13}"
          f"{'popularity auc':>16}{'params':>10}")
    for fw, fit_s, total, rps, auc, base, params, epochs in results:
        print(f"{fw:<12}{fit_s:>8.1f}{total:>20.1f}{rps:>10.0f}{epochs:>14}{auc:>13.4f}{base:>16.4f}{params:>10}")
    print(f"machine at the end: {machine()}")
    return 0
