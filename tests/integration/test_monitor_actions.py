"""The monitor's actions and drift report on the real test broker: a real DeploymentController with
actor ``monitor`` on a control topic of the test's own, a model repository with tiny real versions;
the report reads metric events produced to a metrics topic of the test's own."""

from __future__ import annotations

import re

import pytest

from recpilot import cli
from recpilot.metricevents import metric_event, summary
from recpilot.models.deployments import ACTION_NAMES, DeploymentController, replay
from recpilot.models.repository import ModelRepository
from recpilot.pb import deployments_pb2 as pb
from recpilot.topics import acks_topic
from services.monitor.actions import controller_actuator, enabled_check
from services.monitor.alerts import Alert
from tests.support.repository import tiny_writer

pytestmark = pytest.mark.timeout(120)

POLICY = {"CtrRegression": "rollback", "CanaryCtrRegression": "abort_canary"}


@pytest.fixture
def topics(stack, platform_settings, unique):
    control, metrics = f"test.deployments.{unique}", f"test.metrics.inference.{unique}"
    yield control, metrics
    from recpilot.kafka import delete_topics

    delete_topics(platform_settings, [control, acks_topic(control), metrics], timeout=10)


# a drift reference as recpilot.models.evaluate writes it: one count per upper bound
REF = {"mean": 0.5, "std": 0.25, "min": 0.0, "max": 1.0,
       "histogram": {"bounds": [0.0, 0.5, 1.0], "counts": [0, 430, 570]}}


@pytest.fixture
def repo(tmp_path):
    r = ModelRepository(tmp_path / "models")
    for auc, ll in ((0.70, 0.40), (0.72, 0.39), (0.725, 0.39)):   # 1, 2 (better), 3 (a canary)
        r.create_version("ranker", tiny_writer("torch", payload=f"w{auc}".encode(), auc=auc, logloss=ll,
                                               reference={"item_ctr": REF, "score": REF}))
    return r


def alert(name: str, version: str) -> Alert:
    return Alert(name=name, labels={"model": "ranker", "version": version}, severity="page", value=0.31,
                 threshold=0.1, statistic="relative_drop", starts_ms=1)


def test_rollback_cooldown_and_abort_canary_through_the_control_topic(platform_settings, topics, repo, tmp_path,
                                                                      wait_until):
    control, _ = topics
    with DeploymentController(platform_settings, repo, topic=control, actor="operator") as op, \
            DeploymentController(platform_settings, repo, topic=control, actor="monitor") as mon:
        op.submit("deploy", "ranker", "1")
        op.submit("promote", "ranker", "2")
        audit: list = []
        a = controller_actuator(mon, POLICY, cooldown_s=600, enabled=enabled_check(True, tmp_path / "state"),
                                audit=audit.append, instance="mon-test")
        try:
            bad = alert("CtrRegression", "2")
            assert a.handle(bad) is None                     # queued for the worker: the loop does not wait
            wait_until(lambda: audit, 60, lambda: f"no audit record; history {a.history()}")
            rec = audit[0]
            assert rec.outcome == "executed", rec.detail
            assert rec.command_id and rec.alert_fingerprint == bad.fingerprint and rec.instance == "mon-test"

            state = replay(platform_settings, control, timeout=20, repository=repo.root).state("ranker")
            assert state.production_version == "1"
            last = state.history[-1]
            assert ACTION_NAMES[last.action] == "rollback" and last.actor == "monitor" and last.version == "1"
            assert last.command_id == rec.command_id
            assert "CtrRegression" in last.reason and bad.fingerprint in last.reason and "version=2" in last.reason

            # an operator promotes 2 again; a second regression alert within the cool-down is not acted on
            op.submit("promote", "ranker", "2")
            again = a.handle(bad)
            assert again is not None and again.outcome == "cooldown" and "cool-down 600 s" in again.detail
            assert replay(platform_settings, control, timeout=20).state("ranker").production_version == "2"

            # a canary of 3 regresses: the monitor clears it (another action: no cool-down shared)
            op.submit("canary", "ranker", "3", percent=10)
            assert a.handle(alert("CanaryCtrRegression", "3")) is None
            assert a.join(60)
            assert [r.outcome for r in audit] == ["executed", "cooldown", "executed"], [r.detail for r in audit]
            state = replay(platform_settings, control, timeout=20).state("ranker")
            assert state.canary_version == "" and state.production_version == "2"
            assert ACTION_NAMES[state.history[-1].action] == "clear_canary" and state.history[-1].actor == "monitor"

            # an alert about a version that is no longer production is refused, nothing published
            before = len(state.history)
            a.handle(alert("CtrRegression", "1"))   # cool-down is per (action, model): still blocked
            assert audit[-1].outcome == "cooldown"
            assert len(replay(platform_settings, control, timeout=20).state("ranker").history) == before
        finally:
            a.close()


def test_refused_when_the_alerts_version_is_not_production(platform_settings, topics, repo, tmp_path, wait_until):
    control, _ = topics
    with DeploymentController(platform_settings, repo, topic=control, actor="monitor") as mon:
        mon.submit("deploy", "ranker", "1")
        mon.submit("promote", "ranker", "2")
        audit: list = []
        a = controller_actuator(mon, POLICY, cooldown_s=600, enabled=lambda: True, audit=audit.append,
                                background=False)
        rec = a.handle(alert("CtrRegression", "1"))
        assert rec.outcome == "refused" and "no longer production (production: 2)" in rec.detail
        assert replay(platform_settings, control, timeout=20).state("ranker").production_version == "2"


def _feature_event(name: str, counts: list[int], version: str, instance: str, labels_extra=None):
    labels = {"model": "ranker", "version": version, **(labels_extra or {})}
    if name != "score":
        labels["feature"] = name
    n = sum(counts)
    return metric_event("inference", instance, "feature" if name != "score" else "score", 0.5, labels,
                        summary=summary(n, 0.5 * n, 0.0, 1.0, bucket_bounds=[0.0, 0.5, 1.0], bucket_counts=counts))


def test_report_drift_from_metric_events_on_kafka(platform_settings, topics, repo, tmp_path, capsys):
    from recpilot.kafka import create_topics, producer

    control, metrics = topics
    with DeploymentController(platform_settings, repo, topic=control, actor="operator") as op:
        op.submit("deploy", "ranker", "1")
        op.submit("promote", "ranker", "2")
    create_topics(platform_settings, [metrics], 1)
    prod = producer(platform_settings)
    for inst in ("r1", "r2"):
        for _ in range(3):   # three intervals from two replicas
            prod.produce(metrics, _feature_event("item_ctr", [60, 30, 10, 0], "2", inst).SerializeToString())  # down
            prod.produce(metrics, _feature_event("score", [0, 44, 56, 0], "2", inst,
                                                 {"variant": "production"}).SerializeToString())
            prod.produce(metrics, _feature_event("item_ctr", [0, 43, 57, 0], "1", inst).SerializeToString())  # not prod
    assert prod.flush(20) == 0
    out = tmp_path / "r" / "report.html"
    base = ["report", "drift", "--model", "ranker", "--repository", str(repo.root), "--topic", metrics,
            "--control-topic", control, "--minutes", "5", "--timeout", "30"]
    rc = cli.main([*base, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ranker/2: 12 events" in captured.out and "1 of 2 drifted (item_ctr)" in captured.out
    page = out.read_text()
    assert "Drift report: ranker version 2" in page and "Drift in 1 of 2: item_ctr" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    row = re.search(r'<tr><td><a href="#f-score">score</a></td><td>600</td>(.*?)</tr>', page).group(1)
    assert "no drift" in row
    # a window with no events of the version: a clear error, no file
    rc = cli.main([*base, "--version", "3", "--out", str(tmp_path / "none.html")])
    err = capsys.readouterr().err
    assert rc == 1 and "no feature or score events of ranker/3" in err and not (tmp_path / "none.html").exists()


def test_retrain_trains_in_a_subprocess_and_promotes_through_the_gate(platform_settings, topics, tmp_path):
    from services.monitor.actions import TrainSubprocess

    control, _ = topics
    repo = ModelRepository(tmp_path / "models")
    # the same small simulated window and seed each time: the retrained version's holdout metrics
    # equal production's, so the promotion gate lets it through
    train = TrainSubprocess(data="sim:3000:1", repository=repo.root, timeout_s=90,
                            extra_args=("--epochs", "1", "--no-production"))
    assert train("ranker") == "1"
    with DeploymentController(platform_settings, repo, topic=control, actor="monitor") as mon:
        mon.submit("deploy", "ranker", "1")
        audit: list = []
        a = controller_actuator(mon, {"FeatureDrift": "retrain"}, cooldown_s=600, enabled=lambda: True,
                                audit=audit.append, retrain=train, background=False)
        drift = Alert(name="FeatureDrift", labels={"model": "ranker", "version": "1", "feature": "item_ctr"})
        rec = a.handle(drift)
        assert rec.outcome == "executed", rec.detail
        assert "trained ranker version 2" in rec.detail and repo.versions("ranker") == ["1", "2"]
        state = replay(platform_settings, control, timeout=20, repository=repo.root).state("ranker")
        assert state.production_version == "2" and state.history[-1].actor == "monitor"
        assert ACTION_NAMES[state.history[-1].action] == "promote" and "FeatureDrift" in state.history[-1].reason
        assert a.handle(drift).outcome == "cooldown" and repo.versions("ranker") == ["1", "2"]
