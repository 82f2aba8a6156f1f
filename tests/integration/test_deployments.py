"""Deployment control on the real test Kafka broker: the CLI, the controller and real followers.

Each test uses its own control topic (``test.deployments.<unique>``, acks on
``test.deployments.<unique>.acks``) and its own model repository
(a tmp dir with tiny real version trees), so tests never see each other's state. Restarts: the
state is rebuilt by replaying the topic in a *fresh process* (and by a new follower); the shared
test broker itself is not restarted here, since other engineers' tests run on it (the broker keeps
the topic on disk with retention -1; see docs/deployments.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from recpilot import cli
from recpilot.models.deployments import (
    CommandRejected,
    DeploymentController,
    DeploymentFollower,
    DeploymentSettings,
    PromotionRefused,
    replay,
)
from recpilot.models.repository import MODEL_JSON, ModelRepository
from recpilot.paths import REPO_ROOT
from recpilot.pb import deployments_pb2 as pb
from recpilot.topics import acks_topic
from tests.support.repository import snapshot, tiny_writer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def topic(stack, platform_settings, unique):
    name = f"test.deployments.{unique}"
    yield name
    from recpilot.kafka import delete_topics

    delete_topics(platform_settings, [name, acks_topic(name)], timeout=10)  # one never created counts as deleted


@pytest.fixture
def repo(tmp_path):
    r = ModelRepository(tmp_path / "models")
    # 1: baseline, 2: better, 3: clearly worse, 4: a tensorflow version, slightly worse (within tolerance)
    for fw, auc, ll in (("torch", 0.70, 0.40), ("torch", 0.72, 0.39), ("torch", 0.60, 0.50),
                        ("tensorflow", 0.698, 0.405)):
        r.create_version("ranker", tiny_writer(fw, payload=f"{fw}{auc}".encode(), auc=auc, logloss=ll))
    return r


def run_cli(capsys, repo, topic, *argv):
    rc = cli.main(["models", *argv, "--repository", str(repo.root), "--topic", topic])
    out = capsys.readouterr()
    return rc, out.out, out.err


def status_json(capsys, repo, topic, *extra):
    rc, out, err = run_cli(capsys, repo, topic, "status", "--json", "--all", *extra)
    assert rc == 0, err
    return json.loads(out)


def log_size(platform_settings, topic) -> int:
    return replay(platform_settings, topic, timeout=20).messages


def bodies(platform_settings, topic) -> list[tuple[str, object]]:
    """(body kind, body) of every message now on ``topic``, read with a plain consumer."""
    from recpilot.kafka import read_to_end

    out = []
    for m in read_to_end(platform_settings, topic, timeout=30):
        msg = pb.ControlMessage.FromString(m.value())
        kind = msg.WhichOneof("body")
        out.append((kind, getattr(msg, kind)))
    return out


def test_deploy_canary_promote_rollback_and_rebuild_in_fresh_process(stack, platform_settings, capsys, repo, topic):
    rc, out, err = run_cli(capsys, repo, topic, "deploy", "--model", "ranker", "--version", "1", "--reason", "first",
                           "--actor", "alice@laptop")
    assert rc == 0, err
    assert "revision 1: production 1" in out
    assert run_cli(capsys, repo, topic, "deploy", "--version", "2")[0] == 0  # --model: the only one
    rc, out, err = run_cli(capsys, repo, topic, "canary", "--version", "2", "--percent", "20", "--reason", "try it")
    assert rc == 0, err
    assert "canary 2 (20%)" in out
    rc, out, err = run_cli(capsys, repo, topic, "promote", "--reason", "canary looked good")  # default: the canary
    assert rc == 0, err
    st = status_json(capsys, repo, topic)["models"][0]
    assert (st["production_version"], st["canary_version"], st["revision"]) == ("2", None, 4)
    rc, out, err = run_cli(capsys, repo, topic, "shadow", "--version", "4", "--json")
    assert rc == 0, err
    assert json.loads(out)["state"]["shadow_version"] == "4"
    rc, out, err = run_cli(capsys, repo, topic, "rollback", "--reason", "ctr dropped", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["applied"] and res["command"]["version"] == "1"
    assert (res["state"]["production_version"], res["state"]["shadow_version"]) == ("1", "4")

    st = status_json(capsys, repo, topic)["models"][0]
    assert [(h["action"], h["version"], h["reason"]) for h in st["history"]] == [
        ("deploy", "1", "first"), ("deploy", "2", ""), ("canary", "2", "try it"),
        ("promote", "2", "canary looked good"), ("shadow", "4", ""), ("rollback", "1", "ctr dropped")]
    assert st["history"][0]["actor"] == "alice@laptop"
    assert all(h["actor"] and h["timestamp_ms"] > 0 and h["applied"] for h in st["history"])
    assert [h["revision"] for h in st["history"]] == [1, 2, 3, 4, 5, 6]
    assert st["history"][2]["percent"] == 20.0

    # `models list --json`: versions, metrics and roles
    rc, out, err = run_cli(capsys, repo, topic, "list", "--json")
    assert rc == 0, err
    listed = json.loads(out)["models"][0]
    assert listed["production_version"] == "1" and listed["shadow_version"] == "4"
    roles = {v["version"]: v["roles"] for v in listed["versions"]}
    assert roles == {"1": ["production"], "2": [], "3": [], "4": ["shadow"]}
    assert listed["versions"][1]["metrics"]["auc"] == 0.72 and listed["versions"][3]["framework"] == "tensorflow"

    # A fresh process (nothing in memory) rebuilds the same state from the topic alone.
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "recpilot.cli", "models", "status", "--json", "--all",
                           "--topic", topic, "--repository", str(repo.root)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["models"][0] == st


def test_refused_promotion_and_forced_override(stack, platform_settings, capsys, repo, topic):
    assert run_cli(capsys, repo, topic, "deploy", "--version", "1")[0] == 0
    before = log_size(platform_settings, topic)
    rc, out, err = run_cli(capsys, repo, topic, "promote", "--version", "3")
    assert rc == 1
    assert "promotion of ranker/3 refused" in err
    assert "auc 0.6000 of ranker/3 is below production ranker/1's 0.7000 by 0.1000 (tolerance 0.005; each on its own holdout)" in err
    assert "logloss 0.5000 of ranker/3 is above production ranker/1's 0.4000" in err
    assert "--force --reason" in err
    assert log_size(platform_settings, topic) == before  # nothing published

    rc, out, err = run_cli(capsys, repo, topic, "promote", "--version", "3", "--force")
    assert rc == 2 and "--force needs --reason" in err  # a usage error
    assert log_size(platform_settings, topic) == before

    # within tolerance: version 4 is 0.002 auc / 0.005 logloss worse -> allowed
    rc, out, err = run_cli(capsys, repo, topic, "promote", "--version", "4")
    assert rc == 0, err
    # a configurable tolerance: the same 0.002 is refused with a zero tolerance ...
    rc, out, err = run_cli(capsys, repo, topic, "promote", "--version", "1", "--auc-tolerance", "0")
    assert rc == 0, err  # 1 is better than 4: passes
    rc, out, err = run_cli(capsys, repo, topic, "promote", "--version", "4", "--auc-tolerance", "0",
                           "--logloss-tolerance", "0")
    assert rc == 1 and "auc 0.6980 of ranker/4 is below production ranker/1's 0.7000 by 0.0020 (tolerance 0; each on its own holdout)" in err

    rc, out, err = run_cli(capsys, repo, topic, "promote", "--version", "3", "--force", "--reason", "hotfix for bug 42",
                           "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["applied"] and res["state"]["production_version"] == "3"
    assert res["command"]["force"] is True
    assert res["command"]["reason"].startswith("hotfix for bug 42 [promotion gate overridden: auc 0.6000")
    last = status_json(capsys, repo, topic)["models"][0]["history"][-1]
    assert last["force"] is True and last["reason"] == res["command"]["reason"]


def test_bad_input_publishes_nothing_and_changes_nothing(stack, platform_settings, capsys, repo, topic):
    # nothing deployed yet: rollback / canary are refused before publishing
    rc, _, err = run_cli(capsys, repo, topic, "rollback")
    assert rc == 1 and "no previous production version" in err and "nothing published" in err
    rc, _, err = run_cli(capsys, repo, topic, "canary", "--version", "2", "--percent", "10")
    assert rc == 1 and "has no production version yet" in err
    assert log_size(platform_settings, topic) == 0

    assert run_cli(capsys, repo, topic, "deploy", "--version", "1")[0] == 0
    assert log_size(platform_settings, topic) == 1

    # corrupt a version directory behind the repository's back
    v2 = repo.path("ranker", "2")
    os.chmod(v2, 0o755)
    os.chmod(v2 / MODEL_JSON, 0o644)
    (v2 / MODEL_JSON).write_text("{ truncated")

    def models_only(root):  # the deployment snapshot beside them changes with each applied command
        return {k: v for k, v in snapshot(root).items() if not k.startswith(".deployments")}

    repo_before = models_only(repo.root)
    cases = [
        (("promote", "--version", "9"), "model 'ranker' has no version '9'"),
        (("promote", "--version", "2"), "model ranker/2 is corrupt"),
        (("deploy", "--version", "2"), "is not valid JSON"),
        (("canary", "--version", "2", "--percent", "5"), "model ranker/2 is corrupt"),
        (("deploy", "--model", "nope", "--version", "1"), "no model 'nope'"),
        (("canary", "--version", "3", "--percent", "0.0001", "--model", "ranker"), None),  # valid, published
    ]
    for argv, message in cases:
        size = log_size(platform_settings, topic)
        rc, _, err = run_cli(capsys, repo, topic, *argv)
        if message is None:
            assert rc == 0, err
            assert log_size(platform_settings, topic) == size + 1
            continue
        assert rc == 1, argv
        assert message in err, (argv, err)
        assert log_size(platform_settings, topic) == size, argv
    assert models_only(repo.root) == repo_before
    st = status_json(capsys, repo, topic)["models"][0]
    assert (st["production_version"], st["canary_version"], st["revision"]) == ("1", "3", 2)
    # list shows the corrupt version as such
    rc, out, _ = run_cli(capsys, repo, topic, "list", "--json")
    v = json.loads(out)["models"][0]["versions"][1]
    assert v["valid"] is False and "is not valid JSON" in v["error"]


class Recorder:
    """on_change of a fake replica: remembers what it saw, acks every live command."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[str, str, float, str, str]] = []
        self.follower: DeploymentFollower | None = None
        self.fail_on = fail_on
        self.event = threading.Event()

    def __call__(self, state: pb.DeploymentState, command: pb.DeploymentCommand) -> None:
        self.calls.append((state.production_version, state.canary_version, state.canary_percent,
                           pb.DeploymentAction.Name(command.action), command.version))
        self.event.set()
        if self.fail_on is not None and command.action == self.fail_on:
            raise RuntimeError(f"cannot load version {command.version}")
        if self.follower is not None and self.follower.ready:
            self.follower.ack(command, pb.APPLIED, f"serving {state.production_version}")


def start_follower(settings, replica, topic, recorder) -> DeploymentFollower:
    f = DeploymentFollower(settings, replica, recorder, topic=topic)
    recorder.follower = f
    f.start()
    assert f.wait_ready(60), f"follower {replica} did not catch up: {f.error}"
    return f


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_follower_applies_acks_and_rebuilds_after_restart(stack, platform_settings, capsys, repo, topic):
    deploy = DeploymentSettings(topic=topic)
    with DeploymentController(platform_settings, repo, deploy, actor="ops@ci") as ctl:
        ctl.submit("deploy", "ranker", "1", reason="before the replica started")
        ctl.submit("deploy", "ranker", "2")

        rec = Recorder(fail_on=pb.SHADOW)
        f1 = start_follower(platform_settings, "replica-a", topic, rec)
        try:
            # caught up: one call with the replayed state and the last applied command
            assert rec.calls == [("1", "", 0.0, "DEPLOY", "2")]
            assert f1.ready and f1.state("ranker").revision == 2

            sub = ctl.submit("canary", "ranker", "2", percent=30, wait_acks_s=30)
            assert sub.outcome.applied
            assert [(a.replica, a.status, a.message, a.revision) for a in sub.acks] == [
                ("replica-a", pb.APPLIED, "serving 1", 3)]
            assert wait_for(lambda: len(rec.calls) == 2)
            assert rec.calls[1] == ("1", "2", 30.0, "CANARY", "2")

            sub = ctl.submit("promote", "ranker", "2", reason="good", wait_acks_s=30)
            assert [a.status for a in sub.acks] == [pb.APPLIED]
            assert rec.calls[2] == ("2", "", 0.0, "PROMOTE", "2")
            assert f1.state("ranker").production_version == "2"

            # on_change raising -> a FAILED ack with the error, published by the follower
            sub = ctl.submit("shadow", "ranker", "3", wait_acks_s=30)
            assert [(a.status, a.message) for a in sub.acks] == [(pb.FAILED, "RuntimeError: cannot load version 3")]

            sub = ctl.submit("rollback", "ranker", reason="regression", wait_acks_s=30)
            assert sub.command.version == "1"
            assert rec.calls[-1] == ("1", "", 0.0, "ROLLBACK", "1")
            final = f1.state("ranker")
        finally:
            f1.stop()
        assert f1.ready is False

        # a command while no replica runs is applied to the durable state all the same
        ctl.submit("clear_shadow", "ranker")

        # restart: a new follower rebuilds the same state from the topic
        rec2 = Recorder()
        f2 = start_follower(platform_settings, "replica-b", topic, rec2)
        try:
            st = f2.state("ranker")
            assert (st.production_version, st.canary_version, st.shadow_version, st.revision) == ("1", "", "", 7)
            expected = pb.DeploymentState()
            expected.CopyFrom(final)
            assert list(st.history)[:6] == list(expected.history)
            assert rec2.calls == [("1", "", 0.0, "CLEAR_SHADOW", "")]
            assert f2.state("unknown-model") == pb.DeploymentState(model_name="unknown-model")
        finally:
            f2.stop()

    # status shows the acks per command, and waits for them when asked
    st = status_json(capsys, repo, topic)["models"][0]
    acks = {h["action"]: [(a["replica"], a["status"]) for a in h["acks"]] for h in st["history"]}
    assert acks["deploy"] == []
    assert acks["canary"] == [("replica-a", "APPLIED")]
    assert acks["shadow"] == [("replica-a", "FAILED")]
    assert acks["clear_shadow"] == []
    rc, out, err = run_cli(capsys, repo, topic, "status", "--wait", "0.5")
    assert rc == 0 and "ack FAILED   replica-a" in out and "cannot load version 3" in out

    # the replicas wrote their acks to the acks topic and nothing to the control topic
    on_control = bodies(platform_settings, topic)
    assert [k for k, _ in on_control] == ["command"] * 7
    on_acks = bodies(platform_settings, acks_topic(topic))
    assert [(k, a.replica, pb.AckStatus.Name(a.status)) for k, a in on_acks] == [
        ("ack", "replica-a", s) for s in ("APPLIED", "APPLIED", "FAILED", "APPLIED")]  # canary .. rollback
    assert {a.command_id for _, a in on_acks} <= {c.command_id for _, c in on_control}


def test_acks_of_an_earlier_version_on_the_control_topic_are_skipped(stack, platform_settings, capsys, repo, topic):
    """A control topic written by the previous version (acks beside the commands): every reader
    skips those acks, rebuilds the same state, and looks for acks on the acks topic only."""
    from recpilot.kafka import flush_or_raise, producer
    from recpilot.models.deployments import new_command

    prod = producer(platform_settings)
    cmds = [new_command("deploy", "ranker", "1", actor="old"), new_command("canary", "ranker", "2", percent=10,
                                                                           actor="old")]
    for c in cmds:
        prod.produce(topic, key=b"ranker", value=pb.ControlMessage(command=c).SerializeToString())
        old_ack = pb.DeploymentAck(command_id=c.command_id, model_name="ranker", version=c.version,
                                   status=pb.APPLIED, replica="old-replica", timestamp_ms=c.timestamp_ms)
        prod.produce(topic, key=b"ranker", value=pb.ControlMessage(ack=old_ack).SerializeToString())
    flush_or_raise(prod, 20)

    book = replay(platform_settings, topic)
    assert book.stray == 2 and book.acks == {} and book.state("ranker").revision == 2
    rec = Recorder()
    f = start_follower(platform_settings, "replica-new", topic, rec)
    try:
        assert rec.calls == [("1", "2", 10.0, "CANARY", "2")]
        with DeploymentController(platform_settings, repo, DeploymentSettings(topic=topic), actor="ops") as ctl:
            sub = ctl.submit("clear_canary", "ranker", wait_acks_s=30)
        assert [(a.replica, a.status) for a in sub.acks] == [("replica-new", pb.APPLIED)]
    finally:
        f.stop()
    assert f.book.stray == 2
    st = status_json(capsys, repo, topic)["models"][0]
    assert [[a["replica"] for a in h["acks"]] for h in st["history"]] == [[], [], ["replica-new"]]


def test_control_topic_configuration_is_checked(stack, platform_settings, topic):
    from recpilot.kafka import flush_or_raise, producer
    from recpilot.models.deployments import ensure_control_topic

    # created by recpilot: 1 partition, retention forever -> nothing to warn about
    assert ensure_control_topic(platform_settings, topic) == []
    # a control topic that a bare producer auto-created keeps the broker default retention (7 days)
    auto = topic + ".auto"
    prod = producer(platform_settings)
    prod.produce(auto, b"x")
    flush_or_raise(prod, 20)
    try:
        warnings = ensure_control_topic(platform_settings, auto)
        assert len(warnings) == 1 and "retention.ms=604800000" in warnings[0]
    finally:
        from recpilot.kafka import delete_topics

        assert delete_topics(platform_settings, [auto], timeout=10) == {}


def test_controller_without_repository_access(stack, platform_settings, repo, topic, tmp_path):
    """The monitor on another host: no repository, but it can roll back and clear a canary."""
    deploy = DeploymentSettings(topic=topic)
    with DeploymentController(platform_settings, repo, deploy, actor="alice@laptop") as ctl:
        ctl.submit("deploy", "ranker", "1")
        ctl.submit("promote", "ranker", "2")
        ctl.submit("canary", "ranker", "4", percent=5)
    nowhere = ModelRepository(tmp_path / "not-mounted")
    with DeploymentController(platform_settings, nowhere, deploy, actor="monitor",
                              verify_repository=False) as mon:
        with pytest.raises(PromotionRefused, match="the metric gate needs the model repository"):
            mon.submit("promote", "ranker", "3")
        sub = mon.submit("clear_canary", "ranker", reason="ctr drift on canary")
        assert sub.outcome.applied and sub.state.canary_version == ""
        sub = mon.submit("rollback", "ranker", reason="latency SLO breached")
        assert sub.outcome.applied and sub.command.version == "1" and sub.state.production_version == "1"
        with pytest.raises(CommandRejected, match="no previous production version"):
            mon.submit("rollback", "ranker")
        assert [h.actor for h in sub.state.history] == ["alice@laptop"] * 3 + ["monitor"] * 2
    assert not (tmp_path / "not-mounted").exists()


def test_unreachable_broker_is_a_clear_error(capsys, repo, monkeypatch, unique):
    from recpilot.net import free_port

    port = free_port()  # nothing listens there once closed
    monkeypatch.setenv("RECPILOT_KAFKA_PORT", str(port))
    monkeypatch.setenv("RECPILOT_DEPLOY_REPLAY_TIMEOUT_S", "2")
    t = f"test.deployments.{unique}"
    rc, out, err = run_cli(capsys, repo, t, "deploy", "--version", "1")
    assert rc == 1
    assert f"cannot read {t} from Kafka at 127.0.0.1:{port}" in err and "(nothing published)" in err
    assert "Traceback" not in err
    # list still shows the repository, with the reason the roles are missing
    rc, out, err = run_cli(capsys, repo, t, "list", "--json", "--timeout", "2")
    assert rc == 0
    listed = json.loads(out)
    assert [v["version"] for v in listed["models"][0]["versions"]] == ["1", "2", "3", "4"]
    assert f"127.0.0.1:{port}" in listed["deployment_state_error"]


def test_race_loser_is_recorded_as_rejected(stack, platform_settings, capsys, repo, topic):
    """Two operators validated against the same state; the log order decides, for every replayer."""
    from recpilot.kafka import flush_or_raise, producer
    from recpilot.models.deployments import new_command

    deploy = DeploymentSettings(topic=topic)
    with DeploymentController(platform_settings, repo, deploy, actor="alice@a") as alice, \
            DeploymentController(platform_settings, repo, deploy, actor="bob@b") as bob:
        alice.submit("deploy", "ranker", "1")
        alice.submit("promote", "ranker", "2")
        a_cmd, _ = alice.plan("rollback", "ranker", reason="alice: bad ctr")
        b_cmd, _ = bob.plan("rollback", "ranker", reason="bob: bad latency")  # same state, same target
        assert a_cmd.version == b_cmd.version == "1"
        a = alice.publish(a_cmd)
        b = bob.publish(b_cmd)
    assert a.outcome.applied and a.state.production_version == "1"
    assert not b.outcome.applied
    assert "no previous production version" in b.outcome.reason
    assert b.state.production_version == "1" and b.state.revision == 3
    st = status_json(capsys, repo, topic)["models"][0]
    assert [(h["actor"], h["applied"]) for h in st["history"]] == [
        ("alice@a", True), ("alice@a", True), ("alice@a", True), ("bob@b", False)]
    assert st["history"][-1]["revision"] is None and "no previous" in st["history"][-1]["rejected"]
    rc, out, _ = run_cli(capsys, repo, topic, "status")
    assert rc == 0
    assert "by bob@b -- bob: bad latency  REJECTED: model ranker has no previous production version" in out
    # a raw producer bypassing the CLI cannot corrupt the state either
    prod = producer(platform_settings)
    bad = new_command("canary", "ranker", "1", percent=10, actor="script")  # 1 is production now
    prod.produce(topic, key=b"ranker", value=pb.ControlMessage(command=bad).SerializeToString())
    flush_or_raise(prod, 20)
    book = replay(platform_settings, topic)
    assert not book.outcomes[bad.command_id].applied
    assert book.state("ranker").canary_version == "" and book.state("ranker").revision == 3


def test_policy_commands_through_the_cli(stack, platform_settings, capsys, repo, topic):
    """`recpilot models ... --kind policy`: a policy canary beside the ranker's order, promote, a
    rollback, a missing or tampered policy version refused before publishing; `status` and `list`
    show the policies (and nothing takes `ranker.policy` for a ranker)."""
    from tests.support.policy import write_toy_policy

    p1 = write_toy_policy(repo.root, exploration="epsilon_greedy:0.1")
    p2 = write_toy_policy(repo.root, exploration="softmax:0.5")
    bad = write_toy_policy(repo.root, tampered=True)
    assert run_cli(capsys, repo, topic, "deploy", "1")[0] == 0  # --model: the only ranker, not ranker.policy
    rc, out, _ = run_cli(capsys, repo, topic, "canary", p1, "--kind", "policy", "--percent", "50")
    assert rc == 0 and f"policy canary ranker version {p1} 50%" in out and "policy canary 1 (50%)" in out
    rc, _, err = run_cli(capsys, repo, topic, "promote", "--kind", "policy")  # default: the policy canary
    assert rc == 0, err
    assert run_cli(capsys, repo, topic, "promote", p2, "--kind", "policy")[0] == 0
    before = log_size(platform_settings, topic)
    for version, why in (("9", "has no version '9'"), (bad, "sha256 mismatch")):
        rc, _, err = run_cli(capsys, repo, topic, "canary", version, "--kind", "policy", "--percent", "10")
        assert rc == 1 and why in err and "nothing published" in err
    assert log_size(platform_settings, topic) == before
    assert run_cli(capsys, repo, topic, "rollback", "--kind", "policy")[0] == 0
    (m,) = status_json(capsys, repo, topic)["models"]
    assert (m["production_version"], m["policy_version"], m["policy_canary_version"]) == ("1", p1, None)
    assert [(h["kind"], h["action"], h["version"]) for h in m["history"]] == [
        ("ranker", "deploy", "1"), ("policy", "canary", p1), ("policy", "promote", p1), ("policy", "promote", p2),
        ("policy", "rollback", p1)]
    rc, out, _ = run_cli(capsys, repo, topic, "status")
    assert rc == 0 and f"policy {p1}" in out and f"policy rollback {p1}" in out
    rc, out, err = run_cli(capsys, repo, topic, "list", "--json")
    listed = {x["name"]: x for x in json.loads(out)["models"]}
    assert listed["ranker.policy"]["kind"] == "policy"
    assert [v["roles"] for v in listed["ranker.policy"]["versions"]] == [["production"], [], []]
