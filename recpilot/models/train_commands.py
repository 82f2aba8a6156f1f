"""`recpilot train` and `recpilot tune`.

Light to import: numpy/pandas/torch/tensorflow/optuna are imported inside the commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json

from recpilot.errors import RecpilotError

FRAMEWORK_CHOICES = ("tensorflow", "torch")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--framework", choices=FRAMEWORK_CHOICES, required=True)
    p.add_argument("--data", default="obd",
                   help="obd[/CAMPAIGN][:POLICY[+POLICY]] (Open Bandit: campaign all|men|women, default all; policies random, bts, "
                        "default both) | kafka | sim[:EVENTS[:SEED]] (shopper simulator) | PATH "
                        "(.parquet/.csv: raw events, or logged impressions with a label column / --events) (default: obd)")
    p.add_argument("--events", default=None, help="events table (.parquet/.csv) with the outcomes of logged impressions")
    p.add_argument("--name", default=None, help="model name (default: ranker, or ranker-obd[-CAMPAIGN] for the Open Bandit data)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--embedding-dim", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None, help="L2 on the MLP weights (default 0)")
    p.add_argument("--embedding-l2", type=float, default=None,
                   help="L2 on the embedding rows each batch looks up (mean over the batch; default 0)")
    p.add_argument("--item-prior", action="store_true",
                   help="wide & deep: add the log-odds of the data's point-in-time item click rate (OBD item_ctr) "
                        "to the logit as a fixed prior; the network learns the correction (default: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--last-days", type=float, default=None,
                   help="use only the latest D days of the data (by its newest timestamp)")
    p.add_argument("--holdout", type=float, default=None, help="fraction of the latest rows held out (default from settings: 0.2)")
    p.add_argument("--repository", default=None, help="model repository root (default: RECPILOT_MODEL_REPOSITORY or <home>/models)")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="train all --epochs (default: keep the best epoch on a validation slice of the training window)")
    p.add_argument("--width", type=int, default=None, help="MLP width: bottom and top layers [W, W/2]")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a ranker, evaluate it on a time-based holdout, write a model version")
    _common(p)
    p.add_argument("--production-version", default=None,
                   help="compare with this version instead of the production version in control.deployments")
    p.add_argument("--no-production", action="store_true", help="skip the comparison with the production model")
    p.add_argument("--dry-run", action="store_true", help="train and evaluate, write nothing")
    p.add_argument("--json", action="store_true", help="print model.json instead of a summary")
    p.set_defaults(func=cmd_train)

    t = sub.add_parser("tune", help="hyper-parameter search with Optuna (validated inside the training window)")
    _common(t)
    t.add_argument("--trials", type=int, default=8)
    t.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    t.add_argument("--register", action="store_true", help="train the best configuration and write a model version")
    t.set_defaults(func=cmd_tune)


# --------------------------------------------------------------------------------------------


def _hp(args) -> dict:
    hp = {}
    for key, attr in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"),
                      ("embedding_dim", "embedding_dim"), ("weight_decay", "weight_decay"),
                      ("embedding_l2", "embedding_l2")):
        v = getattr(args, attr, None)
        if v is not None:
            hp[key] = v
    if getattr(args, "item_prior", False):
        hp["item_prior"] = True
    if getattr(args, "no_early_stopping", False):
        hp["validation_fraction"] = 0.0
    if getattr(args, "width", None):
        hp["bottom"] = hp["top"] = [args.width, max(args.width // 2, 1)]
    return hp


def _setup(args):
    """Settings, threads, repository, dataset. Raises DataError & co."""
    from recpilot.models.data.dataset import TrainSettings
    from recpilot.models.data.load import load_dataset
    from recpilot.models.loader import configure_threads
    from recpilot.models.repository import ModelRepository
    from recpilot.settings import PlatformSettings, load

    ts = load(TrainSettings)
    plat = load(PlatformSettings)
    configure_threads(ts.intra_op_threads, ts.inter_op_threads)
    repo = ModelRepository(args.repository or plat.model_repo)
    ds = load_dataset(args.data, ts, plat, events_path=args.events)
    if args.last_days is not None:
        ds = ds.last(args.last_days)
    name = args.name or _default_name(ds)
    holdout = args.holdout if args.holdout is not None else ts.holdout_fraction
    return ts, plat, repo, ds, name, holdout


def _default_name(ds) -> str:
    """ranker; ranker-obd for the Open Bandit "all" campaign, ranker-obd-men / -women for the others."""
    if ds.feature_set != "obd":
        return "ranker"
    campaign = ds.extra.get("obd_campaign", "all")
    return "ranker-obd" if campaign == "all" else f"ranker-obd-{campaign}"


@contextlib.contextmanager
def _nothing_written():
    """An error out of training says that the repository was not written to; ``recpilot.cli.main``
    reports it."""
    try:
        yield
    except RecpilotError as exc:
        exc.add_note("nothing was written to the model repository")
        raise


def cmd_train(args) -> int:
    with _nothing_written():
        from recpilot.models.train import Production, Progress, resolve_production, train_and_register

        ts, plat, repo, ds, name, holdout = _setup(args)
        if args.no_production:
            prod = Production(note="comparison skipped (--no-production)")
        else:
            prod = resolve_production(name, repo, args.production_version)
        report = train_and_register(ds, args.framework, name=name, hp=_hp(args), seed=args.seed,
                                    holdout_fraction=holdout, repository=repo, production=prod,
                                    progress=Progress(enabled=not args.quiet), register=not args.dry_run)
    if args.json:
        print(json.dumps(report.meta, indent=2, sort_keys=True))
        return 0
    m = report.meta["metrics"]
    where = f"{repo.root}/{name}/{report.version}" if report.version else "(dry run: not written)"
    print(f"{name} version {report.version or '-'} ({args.framework}) trained in {report.seconds:.1f}s "
          f"on {report.meta['training']['rows']} rows -> {where}")
    ci = m.get("auc_ci")
    ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]"
    bci = m["baseline"].get("auc_ci")
    bci_s = f"[{bci[0]:.3f}, {bci[1]:.3f}]" if bci else "[n/a]"
    print(f"holdout auc {_fmt(m.get('auc'))} {ci_s}  popularity {_fmt(m['baseline'].get('auc'))} {bci_s}  "
          f"production {_fmt((m.get('production') or {}).get('auc'))} ({m.get('production_note')})")
    for label, block in (("popularity", m["baseline"]), ("production", m.get("production"))):
        d = (block or {}).get("auc_diff")
        if d is not None:
            dci = block.get("auc_diff_ci")
            dci_s = f"[{dci[0]:+.3f}, {dci[1]:+.3f}]" if dci else "[n/a]"
            print(f"auc minus {label}: {d:+.4f} {dci_s} (paired bootstrap)")
    for note in m.get("notes") or []:
        print(f"note: {note}")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def cmd_tune(args) -> int:
    with _nothing_written():
        import optuna

        from recpilot.models import evaluate as ev
        from recpilot.models.train import DEFAULT_HP, Progress, fit, resolve_production, train_and_register

        ts, plat, repo, ds, name, holdout = _setup(args)
        train, _test = ds.split_time(holdout)
        inner_train, val = train.split_time(holdout)
        print(f"tuning {args.framework} on {ds.source}: inner train {len(inner_train)} rows ({inner_train.positives} pos), "
              f"validation {len(val)} ({val.positives} pos); the holdout ({len(_test)} rows) is not looked at")
        base = {**DEFAULT_HP, **_hp(args)}

        def objective(trial: optuna.Trial) -> float:
            hp = dict(base)
            hp["lr"] = trial.suggest_float("lr", 3e-4, 1e-2, log=True)
            hp["embedding_dim"] = trial.suggest_categorical("embedding_dim", [8, 16, 32])
            width = trial.suggest_categorical("width", [32, 64, 128])
            hp["bottom"] = [width, width // 2]
            hp["top"] = [width, width // 2]
            hp["batch_size"] = trial.suggest_categorical("batch_size", [256, 512, 1024])
            hp["weight_decay"] = trial.suggest_categorical("weight_decay", [0.0, 1e-6, 1e-5, 1e-4])
            if args.epochs is None:
                hp["epochs"] = trial.suggest_categorical("epochs", [1, 2, 4, 8])
            hp["validation_fraction"] = 0.0  # the trial is judged on `val`; no early stopping inside it
            res = fit(args.framework, inner_train, hp, args.seed)
            p = res.ranker.predict(val.dense, val.ids)
            auc = ev.auc(val.labels, p)
            trial.set_user_attr("logloss", ev.logloss(val.labels, p))
            trial.set_user_attr("seconds", res.seconds)
            return 0.5 if auc is None else auc

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
        for _ in range(args.trials):
            if args.timeout is not None and sum(t.user_attrs.get("seconds", 0) for t in study.trials) > args.timeout:
                break
            study.optimize(objective, n_trials=1)
            t = study.trials[-1]
            print(f"trial {t.number}: val_auc {_fmt(t.value)} logloss {_fmt(t.user_attrs.get('logloss'))} "
                  f"{t.params} ({t.user_attrs.get('seconds', 0):.1f}s)")
        best = study.best_trial
        print(f"best trial {best.number}: validation auc {best.value:.4f} with {best.params}")
        w = best.params["width"]
        best_hp = {**base, **{k: v for k, v in best.params.items() if k != "width"}, "bottom": [w, w // 2], "top": [w, w // 2],
                   "validation_fraction": 0.0}  # the epoch count was tuned: train exactly that many
        print("train it: recpilot train --framework {} --data {} --lr {:.6g} --embedding-dim {} --batch-size {} "
              "--weight-decay {:g} --epochs {} --width {} --no-early-stopping --seed {}".format(
                  args.framework, args.data, best_hp["lr"], best_hp["embedding_dim"], best_hp["batch_size"],
                  best_hp["weight_decay"], best_hp["epochs"], w, args.seed)
              + (f" --embedding-l2 {best_hp['embedding_l2']:g}" if best_hp.get("embedding_l2") else "")
              + (" --item-prior" if best_hp.get("item_prior") else ""))
        if args.register:
            prod = resolve_production(name, repo)
            report = train_and_register(ds, args.framework, name=name, hp=best_hp, seed=args.seed,
                                        holdout_fraction=holdout, repository=repo, production=prod,
                                        progress=Progress(enabled=not args.quiet))
            print(f"{name} version {report.version} written; holdout auc {_fmt(report.meta['metrics'].get('auc'))}")
    return 0
