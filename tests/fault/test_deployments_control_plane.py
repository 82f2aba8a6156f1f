"""Only the control plane changes what is served.

Forged commands are written straight to the control topic with a plain ``confluent_kafka``
producer, bypassing the CLI's checks, and to the acks topic (which every replica may write); the
control topic is deleted, and truncated, under a replica's deployment state. The replica is the serving process's deployment side in-process (a real
``DeploymentFollower`` feeding ``DeploymentSync`` and a ``ModelManager`` over real TorchScript
versions). Each test uses its own control topic on the shared broker and its own repository.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from bench.toymodel import write_version
from recpilot import cli
from recpilot.models.deployments import DeploymentController, DeploymentFollower, DeploymentSettings, replay
from recpilot.models.repository import ModelRepository
from recpilot.pb import deployments_pb2 as pb
from recpilot.topics import acks_topic
from services.inference.routing import DeploymentSync, ModelManager
from services.inference.settings import BatchingConfig

pytestmark = [pytest.mark.timeout(150)]


@pytest.fixture
def topic(stack, platform_settings, unique):
    name = f"test.deployments.{unique}"
    yield name
    from recpilot.kafka import delete_topics

    delete_topics(platform_settings, [name, acks_topic(name)], timeout=10)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "models"
    good = [write_version(root, "ranker", seed=s) for s in (1, 2)]
    bad = write_version(root, "ranker", corrupt=True)   # a valid model.json over an artifact that does not load
    return ModelRepository(root), good, bad


class Replica:
    """The deployment side of one serving replica, in this process."""

    def __init__(self, platform, root, topic, name) -> None:
        self.ex = ThreadPoolExecutor(1)
        self.models = ModelManager(root, ["ranker"], device="cpu", executor=self.ex,
                                   batching_for=lambda _n: BatchingConfig())
        self.sync = DeploymentSync(self.models, lambda cb: DeploymentFollower(platform, name, cb, topic,
                                                                               repository=root))
        self.sync.start()

    @property
    def serving(self) -> str | None:
        mv = self.models.routes("ranker").production
        return mv.version if mv is not None else None

    def close(self) -> None:
        self.sync.stop()
        self.ex.shutdown()


def controller(platform, repo, topic):
    return DeploymentController(platform, repo, DeploymentSettings(topic=topic), actor="ops@ci")


def status(capsys, repo, topic) -> dict:
    rc = cli.main(["models", "status", "--json", "--all", "--repository", str(repo.root), "--topic", topic])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return json.loads(out.out)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_forged_commands_are_rejected_and_the_replica_keeps_serving(stack, platform_settings, capsys, repo, topic,
                                                                   wait_until):
    from confluent_kafka import Producer

    repository, (v1, v2), bad = repo
    with controller(platform_settings, repository, topic) as ctl:
        ctl.submit("deploy", "ranker", v1, reason="first")
    replica = Replica(platform_settings, repository.root, topic, "replica-a")
    try:
        wait_until(lambda: replica.sync.ready and replica.serving == v1, 60, "the replica did not serve version 1")
        rejected_before = metric("recpilot_deployments_commands_rejected_total")

        prod = Producer({"bootstrap.servers": platform_settings.kafka_bootstrap})  # no CLI, no checks

        def forge(action, version, on=topic, **kw) -> pb.DeploymentCommand:
            c = pb.DeploymentCommand(command_id=uuid.uuid4().hex, action=action, kind=pb.RANKER, model_name="ranker",
                                     version=version, actor="forger@nowhere", timestamp_ms=1, **kw)
            prod.produce(on, key=b"ranker", value=pb.ControlMessage(command=c).SerializeToString())
            assert prod.flush(20) == 0
            return c

        # a valid promotion written to the acks topic (a replica's credentials allow that much): nobody applies it
        via_acks = forge(pb.PROMOTE, v2, on=acks_topic(topic), force=True, reason="forged on the acks topic")
        traversal = forge(pb.PROMOTE, "../x", force=True, reason="forced")
        missing = forge(pb.PROMOTE, "99", force=True, reason="forced")
        shadow_missing = forge(pb.SHADOW, "99")
        broken = forge(pb.PROMOTE, bad, force=True, reason="passes the checks, fails to load")
        with controller(platform_settings, repository, topic) as ctl:
            acks = {c.command_id: ctl.wait_acks(c.command_id, 30) for c in (traversal, missing, shadow_missing, broken)}
        got = {cid: [(a.replica, pb.AckStatus.Name(a.status), a.message) for a in acks[cid]] for cid in acks}
        (_, status_a, why_a), = got[traversal.command_id]
        assert status_a == "REJECTED" and "invalid version '../x'" in why_a
        (_, status_m, why_m), = got[missing.command_id]
        assert status_m == "REJECTED" and "model 'ranker' has no version '99'" in why_m
        assert got[shadow_missing.command_id][0][1] == "REJECTED"
        (_, status_b, why_b), = got[broken.command_id]
        assert status_b == "FAILED" and "TorchScript" in why_b
        assert replica.serving == v1  # never without a model, never another one
        assert replica.sync.follower.state("ranker").revision == 2  # the rejected ones changed nothing
        assert via_acks.command_id not in replica.sync.follower.book.outcomes
        assert metric("recpilot_deployments_commands_rejected_total") - rejected_before == 3

        # `recpilot models status` shows the rejections with the reason and the replica's ack
        history = status(capsys, repository, topic)["models"][0]["history"]
        by_id = {h["command_id"]: h for h in history}
        h = by_id[traversal.command_id]
        assert not h["applied"] and "invalid version '../x'" in h["rejected"]
        assert [(a["replica"], a["status"]) for a in h["acks"]] == [("replica-a", "REJECTED")]
        assert not by_id[missing.command_id]["applied"] and by_id[broken.command_id]["applied"]
        assert via_acks.command_id not in by_id
    finally:
        replica.close()

    # a replica starting now meets production = the version that does not load: it serves the
    # earlier production version rather than nothing, and says so
    again = Replica(platform_settings, repository.root, topic, "replica-b")
    try:
        wait_until(lambda: again.sync.ready and again.serving == v1, 60, "the new replica serves no model")
        with controller(platform_settings, repository, topic) as ctl:
            acks = ctl.wait_acks(broken.command_id, 30, replicas=2)
        mine = [a for a in acks if a.replica == "replica-b"]
        assert mine and mine[0].status == pb.FAILED
        assert f"serving the earlier production version {v1}" in mine[0].message
    finally:
        again.close()


def test_deleted_control_topic_keeps_the_snapshots_production(stack, platform_settings, capsys, repo, topic,
                                                             wait_until):
    from recpilot.kafka import delete_topics
    from recpilot.models.bootstrap import bootstrap

    repository, (v1, v2), _bad = repo
    with controller(platform_settings, repository, topic) as ctl:
        ctl.submit("deploy", "ranker", v1)
        ctl.submit("promote", "ranker", v2, reason="better")
    assert delete_topics(platform_settings, [topic], timeout=20) == {}

    replica = Replica(platform_settings, repository.root, topic, "replica-a")
    try:
        wait_until(lambda: replica.sync.ready and replica.serving == v2, 60,
                   lambda: f"serving {replica.serving}; problems {replica.sync.follower.problems}")
        problems = replica.sync.follower.problems
        assert any("the deployment log was lost" in p and f"production {{'ranker': '{v2}'}}" in p for p in problems)
        assert metric("recpilot_deployments_control_log_lost") == 1
        ok, details = replica.sync.readiness()
        assert ok and details["deployments_log"] == problems

        st = status(capsys, repository, topic)
        assert st["models"][0]["production_version"] == v2
        assert any("the deployment log was lost" in p for p in st["log_problems"])
        # the first-run bootstrap sees the snapshot's production version: nothing deployed, nothing trained
        assert bootstrap(platform_settings, "ranker", topic, repository.root) is None
        assert not [o for o in replay(platform_settings, topic).outcomes.values()]

        # commands go on on top of the restored state, and the next replayer rebuilds the same
        with controller(platform_settings, repository, topic) as ctl:
            sub = ctl.submit("canary", "ranker", v1, percent=5, wait_acks_s=30)
        assert sub.outcome.applied and [a.status for a in sub.acks] == [pb.APPLIED]
        st = replay(platform_settings, topic, repository=repository.root).state("ranker")
        assert (st.production_version, st.canary_version) == (v2, v1)
        assert replica.serving == v2
    finally:
        replica.close()


def test_truncated_control_topic_is_reported_and_restored_from_the_snapshot(stack, platform_settings, repo, topic):
    from confluent_kafka import TopicPartition

    from recpilot.kafka import admin

    repository, (v1, v2), _bad = repo
    with controller(platform_settings, repository, topic) as ctl:
        ctl.submit("deploy", "ranker", v1)
        ctl.submit("promote", "ranker", v2, reason="better")
        ctl.submit("canary", "ranker", v1, percent=5)
        want = ctl.state("ranker")
    adm = admin(platform_settings)
    for fut in adm.delete_records([TopicPartition(topic, 0, 2)], request_timeout=20).values():
        fut.result(20)
    # without the repository, a replay sees only what is left (the canary, with no production)
    assert replay(platform_settings, topic).state("ranker").production_version == ""
    with controller(platform_settings, repository, topic) as ctl:
        st = ctl.state("ranker")
        problems = ctl.problems
    assert (st.production_version, st.canary_version, st.revision) == (want.production_version, want.canary_version,
                                                                       want.revision)
    assert any("does not start at offset 0 (low watermarks {0: 2})" in p for p in problems)
    assert metric("recpilot_deployments_control_log_truncated") == 1
