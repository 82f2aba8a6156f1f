"""`recpilot policy status`: the serving re-ranking policy, its off-policy estimate, and the policy
lifecycle's last decision with its reason.

Reads the deployment state (replayed from the control topic) and the ``<model>.policy`` versions
in the model repository, whose ``model.json`` holds each candidate's off-policy evaluation and the
gate's decision (services/rl_feedback/learning.py). Light to import.
"""

from __future__ import annotations

import argparse
import json
import time


def _iso(ms: int | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else "-"


def policy_status(platform, repo, model: str, timeout: float = 10.0) -> dict:
    """The status as a dict (what ``--json`` prints)."""
    from recpilot.models.deployments.log import replay
    from recpilot.models.deployments.state import ACTION_NAMES, DeploymentSettings
    from recpilot.models.repository import ModelRepositoryError
    from recpilot.pb import deployments_pb2 as pb
    from recpilot.rl.artifact import DEFAULT_VERSION, policy_repo_name
    from recpilot.settings import load

    book = replay(platform, load(DeploymentSettings).topic, timeout=timeout, repository=repo.root)
    state = book.state(model)
    name = policy_repo_name(model)
    versions = []
    for v in repo.versions(name):
        try:
            meta = repo.meta(name, v)
        except ModelRepositoryError as exc:
            versions.append({"version": v, "error": str(exc)})
            continue
        ope = meta.get("ope") or {}
        versions.append({"version": v, "created": _iso(meta.get("created_ms")), "exploration": meta["policy"]["exploration"],
                         "estimate": ope.get("candidate") or None, "serving_estimate": ope.get("serving") or None,
                         "judged_against": ope.get("serving_version"), "estimator": ope.get("estimator"),
                         "decisions": ope.get("decisions"), "decision": meta.get("decision")})
    serving = state.policy_version or DEFAULT_VERSION
    by_version = {v["version"]: v for v in versions}
    history = [h for h in state.history if h.kind == pb.POLICY]  # oldest first
    last = versions[-1] if versions else None
    return {
        "model": model,
        "serving": {"version": serving, "estimate": (by_version.get(serving) or {}).get("estimate"),
                    "estimator": (by_version.get(serving) or {}).get("estimator")},
        "canary": ({"version": state.policy_canary_version, "percent": state.policy_canary_percent}
                   if state.policy_canary_version else None),
        "last_decision": ({"version": last["version"], **(last.get("decision") or {}), "estimate": last.get("estimate"),
                           "serving_estimate": last.get("serving_estimate"), "judged_against": last.get("judged_against")}
                          if last else None),
        "versions": versions,
        "commands": [{"action": ACTION_NAMES.get(h.action, str(h.action)), "version": h.version, "actor": h.actor, "reason": h.reason,
                      "time": _iso(h.timestamp_ms)} for h in history[-10:]],
    }


def _fmt_est(e: dict | None) -> str:
    if not e:
        return "-"
    return f"{e['value']:.5f} [{e['lo']:.5f}, {e['hi']:.5f}]"


def cmd_status(args: argparse.Namespace) -> int:
    from recpilot.kafka import quiet_client_logs
    from recpilot.models.repository import ModelRepository
    from recpilot.settings import PlatformSettings, load

    quiet_client_logs("recpilot.deployments.kafka")
    platform = load(PlatformSettings)
    repo = ModelRepository(args.repository or platform.model_repo)
    st = policy_status(platform, repo, args.model, args.timeout)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    sv = st["serving"]
    print(f"model {st['model']}: serving policy {sv['version']}"
          + (f", estimated {sv['estimator']} {_fmt_est(sv['estimate'])} when it was judged" if sv["estimate"] else ""))
    if st["canary"]:
        print(f"  canary policy {st['canary']['version']} for {st['canary']['percent']:g}% of users")
    d = st["last_decision"]
    if d is None:
        print("  no candidate policy yet (rl_feedback publishes one every learner_every_rewards rewards)")
    else:
        verdict = "published" if d.get("published") else "held back"
        print(f"  last decision: version {d['version']} {verdict} at {_iso(d.get('at_ms'))}")
        print(f"    candidate {_fmt_est(d.get('estimate'))} vs {d.get('judged_against') or '-'} "
              f"{_fmt_est(d.get('serving_estimate'))}")
        print(f"    reason: {d.get('reason', '-')}")
    if st["versions"]:
        print(f"  {len(st['versions'])} policy versions; the last 5:")
        for v in st["versions"][-5:]:
            dec = v.get("decision") or {}
            print(f"    {v['version']:>4}  {v.get('created', '-')}  {v.get('exploration', '-'):<20} "
                  f"{_fmt_est(v.get('estimate')):<28} {'published' if dec.get('published') else 'held'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    pp = sub.add_parser("policy", help="the re-ranking policy: what serves, its off-policy estimate, the last decision")
    ps = pp.add_subparsers(dest="policy_command", metavar="ACTION")
    pp.set_defaults(func=lambda a: (pp.print_help(), 2)[1])
    p = ps.add_parser("status", help="the serving policy, its OPE estimate and the lifecycle's last decision with its reason")
    p.add_argument("--model", default="ranker", help="the ranker model whose policy to show (default: ranker)")
    p.add_argument("--repository", help="model repository (default: RECPILOT_MODEL_REPOSITORY or <home>/models)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for Kafka")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
