"""`recpilot ope`: off-policy evaluation of a re-ranking policy on logged slates.

``--logs`` names the logs: ``kafka`` (the ``impressions`` and ``rewards`` topics of the platform's
broker, :func:`recpilot.rl.logs.from_kafka`), ``obd[/CAMPAIGN][:POLICY]`` (the Open Bandit Dataset in
``RECPILOT_TRAIN_OBD_DIR`` or ``--obd-dir``; POLICY ``random`` by default) or a PATH written by
``--save`` / :func:`recpilot.rl.logs.to_file`. ``--policy`` names the target: a policy VERSION of
``<model>.policy`` in the model repository, ``ranker-order`` (greedy on the ``ranker_score`` input),
``uniform``, or ``fit:LOGS`` (a value policy from the direct method's reward model fitted on other
logs, e.g. ``fit:obd:bts``). A policy is only evaluated on logs with exactly its input features: the
repository's policies read recpilot's inputs, so on the Open Bandit logs only ``uniform`` and
``fit:obd...`` apply. Light to import (numpy and torch load when the command runs).
"""

from __future__ import annotations

import argparse
import json

from recpilot.errors import FailedPrecondition, InvalidArgument, NotFound


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ope", help="off-policy evaluation of a policy on logged traffic (IPS, SNIPS, DM, DR)",
                       description=__doc__.split("\n\n", 1)[1].split("Light to import")[0].strip())
    p.add_argument("--logs", required=True, help="kafka | obd[/CAMPAIGN][:POLICY] | PATH (.npz from --save)")
    p.add_argument("--policy", required=True,
                   help="VERSION of <model>.policy | ranker-order | uniform | fit:LOGS (a value model fitted on LOGS)")
    p.add_argument("--model", default=None, help="the ranker model whose policies VERSION names (default: the only one)")
    p.add_argument("--repository", default=None, help="model repository (default: RECPILOT_MODEL_REPOSITORY)")
    p.add_argument("--exploration", default=None,
                   help="evaluate the policy with this rule instead of its own: greedy, epsilon_greedy:E, softmax:T")
    p.add_argument("--k", type=int, default=None, help="slots to evaluate (default: all logged)")
    p.add_argument("--estimators", default="ips,snips,dm,dr", help="comma-separated: ips, snips, dm, dr")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the decisions (default 200)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--clip", type=float, default=None, help="cap the importance weights at this value (default off)")
    p.add_argument("--l2", type=float, default=1.0, help="L2 penalty of the reward model (DM, DR, fit:)")
    p.add_argument("--refit", action="store_true",
                   help="DM and DR: refit the reward model on every bootstrap resample, so their intervals carry "
                        "the model's uncertainty (slower: 2 fits per resample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--since-ms", type=int, default=None, help="kafka: impressions logged at or after this time")
    p.add_argument("--max-impressions", type=int, default=None, help="kafka: the latest this many decisions")
    p.add_argument("--obd-dir", default=None, help="obd: the dataset folder (default: RECPILOT_TRAIN_OBD_DIR)")
    p.add_argument("--save", default=None, help="also write the logs read to this .npz PATH")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.set_defaults(func=run)


def load_logs(spec: str, args: argparse.Namespace | None = None):
    """The logged slates ``spec`` names (kafka, obd[/CAMPAIGN][:POLICY], PATH)."""
    from recpilot.rl import logs as L

    if spec == "kafka":
        from recpilot.settings import PlatformSettings, load

        return L.from_kafka(load(PlatformSettings), since_ms=getattr(args, "since_ms", None),
                            max_impressions=getattr(args, "max_impressions", None))
    if spec == "obd" or spec.startswith(("obd/", "obd:")):
        from pathlib import Path

        head, _, policy = spec.partition(":")
        campaign = head.split("/", 1)[1] if "/" in head else "all"
        if "+" in policy:
            raise InvalidArgument(f"bad Open Bandit logs {spec!r}: one logging policy at a time (random or bts)")
        obd_dir = getattr(args, "obd_dir", None)
        if obd_dir is None:
            from recpilot.models.data.dataset import TrainSettings

            obd_dir = TrainSettings().obd_dir
        return L.from_obd(Path(obd_dir), policy or "random", campaign)
    return L.from_file(spec)


def _resolve_model(args: argparse.Namespace, repo) -> str:
    from recpilot.models.repository import POLICY_SUFFIX

    if args.model:
        return args.model
    names = [m[: -len(POLICY_SUFFIX)] for m in repo.models() if m.endswith(POLICY_SUFFIX)]
    if len(names) == 1:
        return names[0]
    if not names:
        raise NotFound(f"no policies in the model repository {repo.root}")
    raise InvalidArgument(f"policies of several models in {repo.root} ({', '.join(names)}): name one with --model")


def _check_features(what: str, features: list[str], logs) -> None:
    if list(features) != list(logs.features):
        extra = sorted(set(features) - set(logs.features))[:5]
        lacking = sorted(set(logs.features) - set(features))[:5]
        raise FailedPrecondition(
            f"{what} reads {len(features)} inputs that the logs ({logs.source}, {len(logs.features)} inputs) do not "
            f"provide in the same order (policy only: {extra or '-'}; logs only: {lacking or '-'}); "
            "evaluate it on logs of its own features")


def build_target(spec: str, logs, args: argparse.Namespace):
    """The target policy ``spec`` names, checked against the logs' features."""
    import numpy as np

    from recpilot.rl.logged import ValuePolicy
    from recpilot.rl.slate import GREEDY, Exploration

    try:
        override = Exploration.parse(args.exploration) if args.exploration else None
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    if spec == "uniform":
        return ValuePolicy(lambda x: np.zeros(len(x)), Exploration("uniform"), "uniform")
    if spec == "ranker-order":
        if "ranker_score" not in logs.features:
            raise FailedPrecondition(f"ranker-order needs the ranker_score input, which the logs ({logs.source}) do not have")
        col = logs.features.index("ranker_score")
        ex = override or GREEDY
        return ValuePolicy(lambda x: x[:, col].astype(np.float64), ex, f"ranker-order ({ex})")
    if spec.startswith("fit:"):
        from recpilot.rl.ope import fit_reward_model

        train = load_logs(spec[4:], args)
        _check_features(f"the value model fitted on {train.source}", train.features, logs)
        model = fit_reward_model(train, l2=args.l2)
        ex = override or GREEDY
        return ValuePolicy(model.values, ex, f"reward model fitted on {train.source} ({ex})")
    if not spec.isdigit():
        raise InvalidArgument(f"unknown policy {spec!r} (a version number, ranker-order, uniform or fit:LOGS)")
    from recpilot.models.repository import ModelRepository
    from recpilot.rl.artifact import load_policy
    from recpilot.settings import PlatformSettings, load

    repo = ModelRepository(args.repository or load(PlatformSettings).model_repo)
    model_name = _resolve_model(args, repo)
    loaded = load_policy(repo, model_name, spec)
    _check_features(f"policy {model_name}.policy/{spec}", loaded.features, logs)
    ex = override or loaded.exploration
    return ValuePolicy(loaded.values, ex, f"{model_name}.policy/{spec} ({ex})")


def run(args: argparse.Namespace) -> int:
    from recpilot.rl.ope import evaluate

    estimators = tuple(e.strip() for e in args.estimators.split(",") if e.strip())
    logs = load_logs(args.logs, args)
    if logs.n == 0:
        why = ", ".join(f"{k} {v}" for k, v in logs.meta.items() if isinstance(v, int | float))
        raise FailedPrecondition(f"no logged decisions to evaluate in {logs.source}" + (f" ({why})" if why else ""))
    if args.save:
        from recpilot.rl.logs import to_file

        to_file(logs, args.save)
    target = build_target(args.policy, logs, args)
    report = evaluate(logs, target, k=args.k, estimators=estimators, n_boot=args.n_boot, level=args.level,
                      seed=args.seed, clip=args.clip, l2=args.l2, refit=args.refit)
    if args.json:
        print(json.dumps({**report.to_dict(), "logs": logs.meta}, default=str))
    else:
        print(report.table())
        left = {k: v for k, v in logs.meta.items() if k in ("no_pool", "no_reward", "malformed", "duplicates") and v}
        if left:
            print("  logs left out: " + ", ".join(f"{k} {v}" for k, v in left.items()))
    return 0
