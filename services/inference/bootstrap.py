"""First run: when the deployment state has no production version of the default model, make
the server able to turn SERVING with no manual step.

* the repository already holds versions of the model -> DEPLOY the newest one;
* it holds none -> train a small ranker with the training code's Python API
  (`recpilot.models.train.train_and_register`) on generated impressions with the serving feature
  set (featurespec), register it, and DEPLOY it.

The DEPLOY goes through ``control.deployments`` (DeploymentController), like any operator command,
so the state stays event-sourced and every replica follows. Off with
``RECPILOT_INFERENCE_BOOTSTRAP=false``. Several replicas starting together may each publish a
DEPLOY; the state machine rejects the duplicates ("already production").
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

BOOTSTRAP_ROWS = 20_000
BOOTSTRAP_HP = {"epochs": 1, "embedding_dim": 8, "bottom": [32], "top": [32], "batch_size": 1024}


def train_bootstrap_model(name: str, repository, seed: int = 0) -> str:
    """Train + register a small ranker; return its version. Generated impressions, not the OBD
    sample: OBD models use the "obd" feature set, and Recommend feeds featurespec's features."""
    from recpilot.models.data import examples_from_impressions, synthetic_impressions
    from recpilot.models.train import train_and_register

    df = synthetic_impressions(BOOTSTRAP_ROWS, seed=seed)
    ds = examples_from_impressions(df, None, source=f"bootstrap:synthetic_impressions({BOOTSTRAP_ROWS}, seed={seed})")
    report = train_and_register(ds, "torch", name=name, hp=dict(BOOTSTRAP_HP), seed=seed, repository=repository)
    return str(report.version)


def bootstrap_when_empty(settings, platform, sync, wait_s: float = 120.0) -> str | None:
    """Run in a thread after start-up; returns the version deployed (None: nothing to do / failed)."""
    t0 = time.monotonic()
    while not sync.ready and time.monotonic() - t0 < wait_s:
        time.sleep(0.2)
    if not sync.ready:
        log.warning("bootstrap skipped: the deployment state was not replayed in time")
        return None
    name = settings.default_model
    if sync.follower.state(name).production_version:
        return None
    try:
        from recpilot.models.deployments import DeploymentController
        from recpilot.models.repository import ModelRepository

        repo = ModelRepository(platform.model_repo)
        versions = repo.versions(name) if name in repo.models() else []
        if versions:
            version = versions[-1]
            reason = f"bootstrap: no production version; deploying the newest in the repository ({version})"
        else:
            log.info("bootstrap: the repository has no model; training a small one", extra={"model": name})
            version = train_bootstrap_model(name, repo)
            reason = "bootstrap: first run, small ranker trained on generated impressions"
        if sync.follower.state(name).production_version:  # someone deployed meanwhile
            return None
        with DeploymentController(platform, repo, topic=settings.deployments_topic, actor="inference-bootstrap") as ctl:
            cmd, _ = ctl.plan("deploy", name, version, reason=reason)
            ctl.publish(cmd)
        log.info("bootstrap: deployed", extra={"model": name, "model_version": version})
        return version
    except Exception:
        log.exception("bootstrap failed; deploy a model with `recpilot train` and `recpilot models deploy`")
        return None
