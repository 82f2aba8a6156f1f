"""`recpilot models list|deploy|promote|canary|shadow|rollback|status|verify`.

Every command that changes deployment state is validated against the state replayed from the
control topic and against the model repository before anything is published; on a refusal the
command raises, publishes nothing, and ``recpilot.cli.main`` prints the reason and exits 1 (2 for
a malformed command line). Light to import (no Kafka client, no frameworks at module level).
"""

from __future__ import annotations

import argparse
import json
import time

from recpilot.errors import FailedPrecondition, InvalidArgument, NotFound, RecpilotError


def _iso(ms: int) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _deployment_error(exc: RecpilotError, note: str | None = None) -> RecpilotError:
    """A deployment error as ``recpilot.cli.main`` reports it, with ``note`` appended."""
    if note:
        exc.add_note(note)
    return exc


def _context(args: argparse.Namespace):
    """Platform settings, deployment settings (with --topic), the repository (with --repository)."""
    from recpilot.kafka import quiet_client_logs

    quiet_client_logs("recpilot.deployments.kafka")  # the commands report failures themselves
    from recpilot.models.deployments.state import DeploymentSettings
    from recpilot.models.repository import ModelRepository
    from recpilot.settings import PlatformSettings, load

    platform = load(PlatformSettings)
    overrides = {}
    if getattr(args, "topic", None):
        overrides["topic"] = args.topic
    deploy = load(DeploymentSettings, **overrides)
    repo = ModelRepository(getattr(args, "repository", None) or platform.model_repo)
    return platform, deploy, repo


def _controller(args: argparse.Namespace):
    from recpilot.models.deployments.controller import DeploymentController

    platform, deploy, repo = _context(args)
    return DeploymentController(platform, repo, deploy, actor=getattr(args, "actor", None) or None)


def _resolve_model(args: argparse.Namespace, repo) -> str:
    if args.model:
        return args.model
    models = repo.rankers()
    if len(models) == 1:
        return models[0]
    if not models:
        raise NotFound(f"no models in the repository {repo.root}; train one first (recpilot train)")
    raise InvalidArgument(f"several models in {repo.root} ({', '.join(models)}): name one with --model")


def command_dict(cmd) -> dict:
    from recpilot.models.deployments.state import ACTION_NAMES
    from recpilot.pb import deployments_pb2 as pb

    return {
        "command_id": cmd.command_id, "action": ACTION_NAMES.get(cmd.action, str(cmd.action)),
        "kind": "policy" if cmd.kind == pb.POLICY else "ranker", "model": cmd.model_name, "version": cmd.version,
        "percent": cmd.percent, "actor": cmd.actor, "reason": cmd.reason, "force": cmd.force,
        "timestamp_ms": cmd.timestamp_ms, "time": _iso(cmd.timestamp_ms),
    }


def ack_dict(ack) -> dict:
    from recpilot.models.deployments.state import ACK_NAMES

    return {"replica": ack.replica, "status": ACK_NAMES.get(ack.status, str(ack.status)), "message": ack.message,
            "version": ack.version, "revision": ack.revision, "timestamp_ms": ack.timestamp_ms,
            "time": _iso(ack.timestamp_ms)}


def state_dict(state, book=None, history: int | None = None) -> dict:
    out = {
        "model": state.model_name, "production_version": state.production_version or None,
        "canary_version": state.canary_version or None, "canary_percent": state.canary_percent,
        "shadow_version": state.shadow_version or None, "policy_version": state.policy_version or None,
        "policy_canary_version": state.policy_canary_version or None,
        "policy_canary_percent": state.policy_canary_percent,
        "revision": state.revision, "updated_ms": state.updated_ms, "updated": _iso(state.updated_ms),
    }
    if book is not None:
        outcomes = book.commands(state.model_name)
        if history is not None:
            outcomes = outcomes[-history:] if history > 0 else []
        out["history"] = []
        for o in outcomes:
            d = command_dict(o.command)
            if o.applied:
                for h in state.history:  # the recorded form (a rollback carries its target)
                    if h.command_id == o.command.command_id:
                        d = command_dict(h)
                        break
            d["applied"] = o.applied
            d["revision"] = o.revision if o.applied else None
            if not o.applied:
                d["rejected"] = o.reason
            d["acks"] = [ack_dict(a) for a in sorted(book.acks.get(o.command.command_id, {}).values(),
                                                     key=lambda a: (a.timestamp_ms, a.replica))]
            out["history"].append(d)
    return out


# --------------------------------------------------------------------------------------------
# list / verify
# --------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from recpilot.models.deployments.log import replay
    from recpilot.models.deployments.state import DeploymentError

    platform, deploy, repo = _context(args)
    models = repo.describe()
    states, state_error = {}, None
    if not args.no_state:
        try:
            book = replay(platform, deploy.topic, timeout=args.timeout, repository=repo.root)
            names = {m["name"].removesuffix(".policy") for m in models}  # a policy's state is its ranker's
            states = {n: book.state(n) for n in names}
        except DeploymentError as exc:
            state_error = str(exc)
    for m in models:
        if m["kind"] == "policy":  # <ranker>.policy: roles from the ranker's state
            pst = states.get(m["name"].removesuffix(".policy"))
            for v in m["versions"]:
                v["roles"] = [] if pst is None else (["production"] if v["version"] == pst.policy_version else []) + \
                    ([f"canary {pst.policy_canary_percent:g}%"] if v["version"] == pst.policy_canary_version else [])
            continue
        st = states.get(m["name"])
        if st is not None:
            m["production_version"] = st.production_version or None
            m["canary_version"] = st.canary_version or None
            m["canary_percent"] = st.canary_percent
            m["shadow_version"] = st.shadow_version or None
            m["revision"] = st.revision
        for v in m["versions"]:
            roles = []
            if st is not None:
                if v["version"] == st.production_version:
                    roles.append("production")
                if v["version"] == st.canary_version:
                    roles.append(f"canary {st.canary_percent:g}%")
                if v["version"] == st.shadow_version:
                    roles.append("shadow")
            v["roles"] = roles
    if args.json:
        out = {"repository": str(repo.root), "models": models}
        if state_error:
            out["deployment_state_error"] = state_error
        print(json.dumps(out, indent=2))
        return 0
    print(f"repository: {repo.root}")
    if state_error:
        print(f"(deployment state unavailable: {state_error})")
    if not models:
        print("no models")
    for m in models:
        print(f"\n{m['name']}")
        print(f"  {'version':>7}  {'framework':<10} {'created':<20} {'auc':>7} {'logloss':>8} {'recall@10':>9} "
              f"{'ndcg@10':>8}  roles")
        for v in m["versions"]:
            if not v["valid"]:
                print(f"  {v['version']:>7}  CORRUPT    {v['error']}")
                continue
            if v["kind"] == "policy":
                print(f"  {v['version']:>7}  policy     {_iso(v['created_ms']):<20} exploration {v['exploration']}, "
                      f"pool {v['pool_size']}, gamma {v['gamma']}  {', '.join(v['roles'])}")
                continue
            mt = v["metrics"]

            def f(x):
                return "-" if x is None else f"{x:.4f}"

            print(f"  {v['version']:>7}  {v['framework']:<10} {_iso(v['created_ms']):<20} {f(mt['auc']):>7} "
                  f"{f(mt['logloss']):>8} {f(mt['recall@10']):>9} {f(mt['ndcg@10']):>8}  {', '.join(v['roles'])}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from recpilot.models.repository import ModelRepositoryError

    platform, _deploy, repo = _context(args)
    model = _resolve_model(args, repo)
    versions = [args.version] if args.version else repo.versions(model)
    bad = 0
    for v in versions:
        try:
            # a version without a manifest cannot be verified: reported even where loading it is allowed
            meta = repo.verify(model, v, allow_unverified=False)
            print(f"{model}/{v}: ok ({len(meta['files'])} files match the manifest)")
        except ModelRepositoryError as exc:
            bad += 1
            allowed = " (RECPILOT_MODEL_ALLOW_UNVERIFIED is set: it is loaded anyway)" \
                if "no file manifest" in str(exc) and platform.model_allow_unverified else ""
            print(f"{model}/{v}: {exc}{allowed}")
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------
# deployment commands
# --------------------------------------------------------------------------------------------
def _print_submitted(args: argparse.Namespace, sub) -> None:
    if args.json:
        out = {"command": command_dict(sub.command), "applied": sub.outcome.applied,
               "rejected": sub.outcome.reason or None, "state": state_dict(sub.state),
               "acks": [ack_dict(a) for a in sub.acks], "gate_overridden": sub.overridden}
        print(json.dumps(out, indent=2))
        return
    c = sub.command
    policy = command_dict(c)["kind"] == "policy"
    print(("policy " if policy else "") + f"{command_dict(c)['action']} {c.model_name}"
          + (f" version {c.version}" if c.version else "")
          + (f" {c.percent:g}%" if c.percent else "") + f": published as {c.command_id} by {c.actor}")
    if sub.overridden:
        print("  promotion gate overridden (--force): " + "; ".join(sub.overridden))
    s = sub.state
    print(f"  revision {s.revision}: production {s.production_version or '-'}, canary "
          f"{(s.canary_version + f' ({s.canary_percent:g}%)') if s.canary_version else '-'}, shadow "
          f"{s.shadow_version or '-'}" + (_policy_line(state_dict(s)) if policy or s.policy_version else ""))
    if args.wait:
        if sub.acks:
            for a in sub.acks:
                d = ack_dict(a)
                print(f"  ack {d['status']} from {d['replica']} at {d['time']}" + (f": {d['message']}" if d['message'] else ""))
        if len(sub.acks) < args.replicas:
            print(f"  {len(sub.acks)} of {args.replicas} replica acknowledgement(s) within {args.wait:g}s")


def _run_action(args: argparse.Namespace, action: str) -> int:
    from recpilot.models.deployments.controller import PromotionRefused
    from recpilot.models.deployments.log import PublishError
    from recpilot.models.deployments.state import DeploymentError

    from recpilot.models.deployments.state import KINDS
    from recpilot.models.repository import POLICY_SUFFIX

    kind = getattr(args, "kind", None) or "ranker"
    policy = kind == "policy"
    try:
        with _controller(args) as ctl:
            model = _resolve_model(args, ctl.repository)
            version = getattr(args, "version", None) or ""
            kw = {"kind": KINDS[kind]}
            if action in ("deploy", "canary", "shadow") and not version:
                version = ctl.repository.latest(model + POLICY_SUFFIX if policy else model) or ""
            if action == "promote":
                if not version:
                    st = ctl.state(model)
                    version = st.policy_canary_version if policy else st.canary_version
                    if not version:
                        raise InvalidArgument(f"promote needs --version (no {kind} canary of {model} to promote)")
                if not policy:
                    kw.update(auc_tolerance=args.auc_tolerance, logloss_tolerance=args.logloss_tolerance)
            if action == "canary":
                kw["percent"] = args.percent
            sub = ctl.submit(action, model, version, reason=args.reason or "", force=getattr(args, "force", False),
                             wait_acks_s=args.wait, replicas=args.replicas, **kw)
    except (PromotionRefused, PublishError) as exc:
        raise _deployment_error(exc) from None
    except DeploymentError as exc:
        raise _deployment_error(exc, "nothing published") from None
    _print_submitted(args, sub)
    if not sub.outcome.applied:
        raise FailedPrecondition(f"the command was rejected when applied (the state changed meanwhile): "
                                 f"{sub.outcome.reason}")
    return 0


def cmd_deploy(args):
    return _run_action(args, "deploy")


def cmd_promote(args):
    return _run_action(args, "promote")


def cmd_canary(args):
    if args.clear or args.percent == 0:
        return _run_action(args, "clear_canary")
    if args.percent is None:
        raise InvalidArgument("canary needs --percent P (0 < P <= 100), or --clear")
    return _run_action(args, "canary")


def cmd_shadow(args):
    return _run_action(args, "clear_shadow" if args.clear else "shadow")


def cmd_rollback(args):
    return _run_action(args, "rollback")


def _policy_line(m: dict) -> str:
    """``  policy P  policy canary C (x%)`` of a state_dict (the ranker's order when none is deployed)."""
    out = f"  policy {m['policy_version'] or 'ranker-order'}"
    if m["policy_canary_version"]:
        out += f"  policy canary {m['policy_canary_version']} ({m['policy_canary_percent']:g}%)"
    return out


def cmd_status(args: argparse.Namespace) -> int:
    from recpilot.models.deployments.state import DeploymentError

    try:
        with _controller(args) as ctl:
            book = ctl.read_acks()
            names = [args.model] if args.model else sorted(set(book.states) | set(ctl.repository.rankers()))
            if args.wait and names:
                # wait for acknowledgements of each model's latest applied command
                for name in names:
                    st = book.states.get(name)
                    if st is not None and st.history:
                        ctl.wait_acks(st.history[-1].command_id, args.wait, args.replicas)
            out = [state_dict(book.state(n), book, None if args.all else args.history) for n in names]
            problems = ctl.problems
    except DeploymentError as exc:
        raise _deployment_error(exc) from None
    if args.json:
        print(json.dumps({"topic": ctl.topic, "acks_topic": ctl.acks_topic, "models": out, "log_problems": problems},
                         indent=2))
        return 0
    for problem in problems:
        print(f"WARNING: {problem}")
    if not out:
        print(f"no deployments on {ctl.topic}")
    for m in out:
        canary = f"{m['canary_version']} ({m['canary_percent']:g}%)" if m["canary_version"] else "-"
        print(f"{m['model']}: production {m['production_version'] or '-'}  canary {canary}  shadow "
              f"{m['shadow_version'] or '-'}" + _policy_line(m) + f"  (revision {m['revision']}, updated {m['updated']})")
        for h in m["history"]:
            what = ("policy " if h["kind"] == "policy" else "") + f"{h['action']}" + \
                (f" {h['version']}" if h["version"] else "") + (f" {h['percent']:g}%" if h["action"] == "canary" else "")
            flag = "" if h["applied"] else f"  REJECTED: {h['rejected']}"
            forced = " [forced]" if h["force"] else ""
            print(f"  {h['time']}  r{h['revision'] if h['revision'] is not None else '-':<4} {what:<22} "
                  f"by {h['actor']}{forced}" + (f" -- {h['reason']}" if h["reason"] else "") + flag)
            for a in h["acks"]:
                print(f"      ack {a['status']:<8} {a['replica']} {a['time']}" + (f": {a['message']}" if a["message"] else ""))
    return 0


# --------------------------------------------------------------------------------------------
def _repository(p: argparse.ArgumentParser) -> None:
    """``--repository`` as `recpilot train` spells it; ``--repo``, the former spelling, still works."""
    p.add_argument("--repository", help="model repository root (default: RECPILOT_MODEL_REPOSITORY or <home>/models)")
    p.add_argument("--repo", dest="repository", help=argparse.SUPPRESS)


def _topic_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", help="control topic (default: RECPILOT_DEPLOY_TOPIC or control.deployments)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _common(p: argparse.ArgumentParser, state_changing: bool = True) -> None:
    p.add_argument("--model", help="model name (default: the only model in the repository)")
    _repository(p)
    _topic_json(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for acknowledgements from serving replicas")
    p.add_argument("--replicas", type=int, default=1, metavar="N", help="with --wait: how many acks to wait for")
    if state_changing:
        p.add_argument("--reason", default="", help="why (recorded in the history)")
        p.add_argument("--actor", help="who (default: user@host)")


def _fill(args: argparse.Namespace, name: str, pos: str | None) -> None:
    """Put a positional into option ``name``; a usage error when both are given and differ."""
    opt = getattr(args, name)
    if pos is not None and opt is not None and pos != opt:
        raise InvalidArgument(f"{name} given twice: {pos!r} and --{name} {opt!r}")
    if pos is not None:
        setattr(args, name, pos)


def _positional(p: argparse.ArgumentParser, name: str) -> None:
    """``recpilot models status ranker`` as well as ``--model ranker``: an optional positional that
    fills the option; both and different is an error."""
    p.add_argument(f"{name}_positional", nargs="?", metavar=name.upper(), help=f"same as --{name}")
    func = p.get_default("func")

    def merged(args: argparse.Namespace) -> int:
        _fill(args, name, getattr(args, f"{name}_positional"))
        return func(args)

    p.set_defaults(func=merged)


def _target(p: argparse.ArgumentParser) -> None:
    """``recpilot models promote ranker 3``, ``promote 3``, ``promote ranker`` and ``--model ranker
    --version 3`` alike. Versions are whole numbers (``repository.VERSION_RE``), so a lone positional
    that is one is the version, anything else the model (a model named like a number: ``--model``).
    A positional and its option both given and different is an error."""
    p.add_argument("target", nargs="*", metavar="[MODEL] [VERSION]", help="same as --model / --version")
    func = p.get_default("func")

    def merged(args: argparse.Namespace) -> int:
        from recpilot.models.repository import VERSION_RE

        t = list(args.target)
        if len(t) > 2 or (len(t) == 2 and not VERSION_RE.match(t[1])):
            raise InvalidArgument(f"expected [MODEL] [VERSION] (a version is a whole number), got {' '.join(t)!r}")
        model = t[0] if len(t) == 2 or (t and not VERSION_RE.match(t[0])) else None
        version = t[-1] if t and VERSION_RE.match(t[-1]) else None
        _fill(args, "model", model)
        _fill(args, "version", version)
        return func(args)

    p.set_defaults(func=merged)


def _kind(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("ranker", "policy"), default="ranker",
                   help="ranker (default) or policy: the model's re-ranking policy, versions of <model>.policy in the "
                        "repository (the ranker's order serves while none is deployed)")


def register(sub: argparse._SubParsersAction) -> None:
    mp = sub.add_parser("models", help="model repository and deployment control (deploy, canary, promote, ...)")
    ms = mp.add_subparsers(dest="models_command", metavar="ACTION")
    mp.set_defaults(func=lambda a: (mp.print_help(), 2)[1])

    p = ms.add_parser("list", help="models and versions in the repository, with metrics and roles")
    _repository(p)
    _topic_json(p)
    p.add_argument("--no-state", action="store_true", help="do not read the deployment state from Kafka")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for Kafka")
    p.set_defaults(func=cmd_list)

    p = ms.add_parser("verify", help="re-hash a model's files against the manifest written with each version (also: files "
                      "not in it, symbolic links, versions without one)")
    p.add_argument("--model", help="model name (default: the only model in the repository)")
    p.add_argument("--version", help="default: every version")
    _repository(p)
    p.set_defaults(func=cmd_verify)
    _target(p)

    p = ms.add_parser("deploy", help="make a version available (it becomes production if there is none)")
    _common(p)
    _kind(p)
    p.add_argument("--version", help="default: the latest version")
    p.set_defaults(func=cmd_deploy)
    _target(p)

    p = ms.add_parser("promote", help="make a version production (refused if its offline metrics are worse)")
    _common(p)
    _kind(p)
    p.add_argument("--version", help="default: the current canary")
    p.add_argument("--force", action="store_true", help="override the metric gate (needs --reason; recorded)")
    p.add_argument("--auc-tolerance", type=float, default=None,
                   help="refuse if auc < production auc - this (default RECPILOT_DEPLOY_AUC_TOLERANCE=0.005)")
    p.add_argument("--logloss-tolerance", type=float, default=None,
                   help="refuse if logloss > production logloss + this (default RECPILOT_DEPLOY_LOGLOSS_TOLERANCE=0.01)")
    p.set_defaults(func=cmd_promote)
    _target(p)

    p = ms.add_parser("canary", help="send a share of users to a version (stable_hash(user) routing)")
    _common(p)
    p.add_argument("--version", help="default: the latest version")
    p.add_argument("--percent", type=float, help="share of users, 0 < P <= 100 (0 clears the canary)")
    _kind(p)
    p.add_argument("--clear", action="store_true", help="stop the canary")
    p.set_defaults(func=cmd_canary)
    _target(p)

    p = ms.add_parser("shadow", help="score every request with a version too, log it, never serve it")
    _common(p)
    p.add_argument("--version", help="default: the latest version")
    p.add_argument("--clear", action="store_true", help="stop shadowing")
    p.set_defaults(func=cmd_shadow)
    _target(p)

    p = ms.add_parser("rollback", help="return production to the previous production version")
    _common(p)
    _kind(p)
    p.add_argument("--version", help="optional: the version you expect to return to (refused if it is not)")
    p.set_defaults(func=cmd_rollback)
    _target(p)

    p = ms.add_parser("status", help="deployment state, history (who/why/when) and replica acknowledgements")
    _common(p, state_changing=False)
    p.add_argument("--history", type=int, default=10, metavar="N", help="last N commands per model (default 10)")
    p.add_argument("--all", action="store_true", help="the whole history")
    p.set_defaults(func=cmd_status)
    _positional(p, "model")
