"""``python -m recpilot.models.bootstrap``: give an empty platform its first production model.

When the deployment state has no production version of the model (the state as every replayer
with the repository rebuilds it: from the control topic, or from the repository's deployment
snapshot when the topic was lost, so a lost topic never leads to a new production version here):

* the repository already holds versions of it -> DEPLOY the newest one;
* the repository is empty (no model at all, no deployment snapshot) -> train a small ranker with
  the training code's Python API (:func:`recpilot.models.train.train_and_register`) on generated
  impressions with the serving feature set (featurespec), register it, and DEPLOY it;
* otherwise (other models, or a deployment snapshot, but no version of this one) -> nothing is
  trained; the reason is logged and the exit status is 1.

The DEPLOY goes through the control topic (DeploymentController), like any operator command, so
the state stays event-sourced and every replica follows. Several replicas starting together may
each publish a DEPLOY; the state machine rejects the duplicates ("already production").

A serving replica runs this as a child process (``services.inference.bootstrap``), so the serving
process never imports the training code. Platform settings (Kafka, the repository) come from the
environment. Exit status: 0 deployed or nothing to do, 1 failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("recpilot.models.bootstrap")

BOOTSTRAP_ROWS = 20_000
BOOTSTRAP_HP = {"epochs": 1, "embedding_dim": 8, "bottom": [32], "top": [32], "batch_size": 1024}
ACTOR = "inference-bootstrap"


def train_bootstrap_model(name: str, repository, seed: int = 0) -> str:
    """Train + register a small ranker; return its version. Generated impressions, not the OBD
    sample: OBD models use the "obd" feature set, and Recommend feeds featurespec's features."""
    from recpilot.models.data import examples_from_impressions, synthetic_impressions
    from recpilot.models.train import train_and_register

    df = synthetic_impressions(BOOTSTRAP_ROWS, seed=seed)
    ds = examples_from_impressions(df, None, source=f"bootstrap:synthetic_impressions({BOOTSTRAP_ROWS}, seed={seed})")
    # no drift reference: generated impressions are not the shop's traffic (see train_and_register)
    report = train_and_register(ds, "torch", name=name, hp=dict(BOOTSTRAP_HP), seed=seed, repository=repository,
                                drift_reference=False)
    return str(report.version)


class NotEmpty(RuntimeError):
    """The repository is not empty but holds no version of the model: nothing is trained."""


def bootstrap(platform, name: str, topic: str, repository: Path | None = None) -> str | None:
    """Deploy the newest version of ``name``, training one first only when the repository is
    empty; the version deployed, or None when the model already has a production version. Raises
    :class:`NotEmpty` when the repository has other content but no version of ``name``."""
    from recpilot.models.deployments import DeploymentController
    from recpilot.models.deployments.snapshot import read_snapshot
    from recpilot.models.repository import ModelRepository

    repo = ModelRepository(repository or platform.model_repo)
    with DeploymentController(platform, repo, topic=topic, actor=ACTOR) as ctl:
        if ctl.state(name).production_version:
            return None
        versions = repo.versions(name) if name in repo.models() else []
        if versions:
            version = versions[-1]
            reason = f"bootstrap: no production version; deploying the newest in the repository ({version})"
        elif repo.models() or read_snapshot(repo.root, topic) is not None:
            raise NotEmpty(f"the model repository {repo.root} is not empty (models: {', '.join(repo.models()) or 'none'}"
                           f"; deployment snapshot: {'yes' if read_snapshot(repo.root, topic) else 'no'}) but has "
                           f"no version of {name!r}: a first model is trained only into an empty repository")
        else:
            log.info("bootstrap: the repository has no model; training a small one", extra={"model": name})
            version = train_bootstrap_model(name, repo)
            reason = "bootstrap: first run, small ranker trained on generated impressions"
        if ctl.state(name).production_version:  # someone deployed meanwhile
            return None
        cmd, _ = ctl.plan("deploy", name, version, reason=reason)
        ctl.publish(cmd)
    log.info("bootstrap: deployed", extra={"model": name, "model_version": version})
    return version


def main(argv: list[str] | None = None) -> int:
    from recpilot.log import setup_logging
    from recpilot.settings import PlatformSettings, SettingsError, load

    ap = argparse.ArgumentParser(prog="python -m recpilot.models.bootstrap",
                                 description="Give an empty platform its first production model.")
    ap.add_argument("--model", default="ranker", help="the model to give a production version (default: ranker)")
    ap.add_argument("--topic", default="control.deployments", help="the control topic (default: control.deployments)")
    ap.add_argument("--repository", type=Path, default=None, help="model repository (default: the platform's)")
    args = ap.parse_args(argv)
    try:
        platform = load(PlatformSettings)
    except SettingsError as exc:
        print(f"bootstrap: {exc}", file=sys.stderr)
        return 2
    setup_logging("inference-bootstrap", platform.log_level)
    try:
        bootstrap(platform, args.model, args.topic, args.repository)
    except NotEmpty as exc:
        log.error(f"bootstrap: {exc}; deploy a model with `recpilot models deploy`")
        return 1
    except Exception:
        log.exception("bootstrap failed; deploy a model with `recpilot train` and `recpilot models deploy`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
