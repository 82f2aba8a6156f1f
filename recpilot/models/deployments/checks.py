"""The checks that need the model repository, shared by the controller (before publishing) and by
every replayer that holds the repository (while replaying, :func:`repository_admission`): the
version a command names exists and is intact (its ``model.json`` valid, its files present), and a
promotion over another production version passes the offline-metric gate
(:func:`promotion_gate`) unless forced with a reason. No Kafka here.
"""

from __future__ import annotations

import logging

from recpilot.models.deployments.state import Admission, previous_production
from recpilot.pb import deployments_pb2 as pb

log = logging.getLogger(__name__)


def promotion_gate(candidate: dict, production: dict | None, auc_tolerance: float,
                   logloss_tolerance: float) -> list[str]:
    """Reasons to refuse promoting ``candidate`` over ``production`` (model.json dicts); empty: pass.
    auc is higher-better (refused if below production - auc_tolerance), logloss lower-better
    (refused if above production + logloss_tolerance). A metric that is missing/undefined on the
    candidate while production has it counts as a failure (it cannot be shown not to be worse).

    Head to head when possible: if the candidate's model.json scored this very production version on
    the candidate's holdout (``metrics.production``, written by ``recpilot train``), both are judged
    on those same rows. Otherwise each model's own figures are compared, which come from different
    holdouts (different weeks): the message says which."""
    if production is None:
        return []
    cm = candidate.get("metrics") or {}
    cname = f"{candidate.get('name')}/{candidate.get('version')}"
    pname = f"production {production.get('name')}/{production.get('version')}"
    same = cm.get("production")
    if isinstance(same, dict) and str(same.get("version")) == str(production.get("version")):
        pm, basis = same, f"both scored on {cname}'s holdout"
    else:
        pm, basis = production.get("metrics") or {}, "each on its own holdout"
    problems = []
    for key, tol, higher in (("auc", auc_tolerance, True), ("logloss", logloss_tolerance, False)):
        c, p = cm.get(key), pm.get(key)
        if p is None:
            continue
        if c is None:
            problems.append(f"{key} of {cname} is undefined while {pname} has {p:.4f} ({basis})")
        elif higher and c < p - tol:
            problems.append(f"{key} {c:.4f} of {cname} is below {pname}'s {p:.4f} by {p - c:.4f} "
                            f"(tolerance {tol:g}; {basis})")
        elif not higher and c > p + tol:
            problems.append(f"{key} {c:.4f} of {cname} is above {pname}'s {p:.4f} by {c - p:.4f} "
                            f"(tolerance {tol:g}; {basis})")
    if candidate.get("feature_set") and production.get("feature_set") and \
            candidate["feature_set"] != production["feature_set"] and not problems:
        log.warning("promotion gate compares models trained on different feature sets",
                    extra={"candidate": cname, "production": pname})
    return problems


def gate_problems(repository, model: str, candidate: dict, production_version: str, auc_tolerance: float,
                  logloss_tolerance: float) -> list[str]:
    """:func:`promotion_gate` of ``candidate`` over ``production_version`` read from ``repository``;
    a production version that cannot be read fails the gate (the candidate cannot be shown not to
    be worse)."""
    try:
        production = repository.meta(model, production_version)
        return promotion_gate(candidate, production, auc_tolerance, logloss_tolerance)
    except Exception as exc:
        return [f"production {model}/{production_version} cannot be compared: {exc}"]


def gate_tolerances(cmd: pb.DeploymentCommand, auc_tolerance: float, logloss_tolerance: float) -> tuple[float, float]:
    """The tolerances recorded in ``cmd`` by its publisher, else the given defaults."""
    return (cmd.auc_tolerance if cmd.HasField("auc_tolerance") else auc_tolerance,
            cmd.logloss_tolerance if cmd.HasField("logloss_tolerance") else logloss_tolerance)


def policy_target(state: pb.DeploymentState, cmd: pb.DeploymentCommand) -> str:
    """The policy version a POLICY command makes serve ("" for none: clear_canary)."""
    if cmd.action in (pb.DEPLOY, pb.PROMOTE, pb.CANARY):
        return cmd.version
    if cmd.action == pb.ROLLBACK:
        return previous_production(state, pb.POLICY) or ""
    return ""


def policy_problem(repository, model: str, version: str, verify: bool = False) -> str | None:
    """Why version ``version`` of ``model``'s re-ranking policies (``<model>.policy`` in the
    repository) cannot be served, or None: it is the ranker's own order
    (:data:`~recpilot.models.repository.DEFAULT_POLICY_VERSION`, which every replica serves without
    a file), or it exists and its model.json is a valid policy
    (:func:`~recpilot.models.repository.validate_policy_meta`); with ``verify`` (the controller,
    before publishing) also every file against the manifest, as a replica checks before loading."""
    from recpilot.models.repository import DEFAULT_POLICY_VERSION, POLICY_SUFFIX, ModelRepositoryError, \
        validate_policy_meta

    if version == DEFAULT_POLICY_VERSION:  # the ranker's own order: nothing to load (a pause of the learned policy)
        return None
    name = model + POLICY_SUFFIX
    try:
        meta = repository.verify(name, version) if verify else repository.meta(name, version)
    except ModelRepositoryError as exc:
        return f"policy version {version} of {model} cannot be served: {exc}"
    problems = validate_policy_meta(meta, name, str(version)) if meta.get("kind") == "policy" else \
        [f"kind is {meta.get('kind')!r}, not 'policy'"]
    if problems:
        return f"policy version {version} of {model} is not a valid policy: " + "; ".join(problems)
    return None


def policy_admission(repository, state: pb.DeploymentState, cmd: pb.DeploymentCommand) -> str | None:
    """Why a POLICY command cannot be applied given the repository (None: it can)."""
    target = policy_target(state, cmd)
    return policy_problem(repository, cmd.model_name, target) if target else None


def repository_admission(repository, auc_tolerance: float, logloss_tolerance: float) -> Admission:
    """``admit(state, command)`` for a :class:`~.state.DeploymentBook`: why a ranker command cannot be
    applied given the model repository (None: it can). The same checks the controller runs before
    publishing; gate tolerances are the command's own when its publisher recorded them."""
    from recpilot.models.repository import ModelRepositoryError

    def admit(state: pb.DeploymentState, cmd: pb.DeploymentCommand) -> str | None:
        if (cmd.kind or pb.RANKER) == pb.POLICY:
            return policy_admission(repository, state, cmd)
        act, model = cmd.action, cmd.model_name
        if act in (pb.DEPLOY, pb.PROMOTE, pb.CANARY, pb.SHADOW):
            target = cmd.version
        elif act == pb.ROLLBACK:
            target = previous_production(state) or ""
        else:
            return None
        try:
            candidate = repository.meta(model, target)
        except ModelRepositoryError as exc:
            return f"version {target} of {model} cannot be served: {exc}"
        if act == pb.PROMOTE and not cmd.force and state.production_version \
                and state.production_version != target:
            problems = gate_problems(repository, model, candidate, state.production_version,
                                     *gate_tolerances(cmd, auc_tolerance, logloss_tolerance))
            if problems:
                return f"promotion of {model}/{target} refused by the promotion gate (not forced): " \
                    + "; ".join(problems)
        return None

    return admit
