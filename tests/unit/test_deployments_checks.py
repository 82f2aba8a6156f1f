"""What every replayer checks besides the state machine (name and version format; with the model
repository: the version exists and is intact, the promotion gate), and the deployment snapshot:
writing it, reading it, and where a replay starts (:func:`plan_start`). No Kafka."""

from __future__ import annotations

import json
import os

import pytest

from recpilot.models.deployments import (
    DeploymentBook,
    check_command,
    new_command,
    plan_start,
    read_snapshot,
    repository_admission,
    snapshot_path,
    write_snapshot,
)
from recpilot.models.repository import MODEL_JSON, ModelRepository
from recpilot.pb import deployments_pb2 as pb
from tests.support.repository import tiny_writer


def cmd(action, version="", model="ranker", **kw):
    return new_command(action, model, version, actor="forger@nowhere", timestamp_ms=kw.pop("timestamp_ms", 1000), **kw)


@pytest.mark.parametrize("model,version,why", [
    ("ranker", "../x", "invalid version '../x'"),
    ("ranker", "1/../../2", "invalid version"),
    ("ranker", "01", "invalid version"),
    ("../ranker", "1", "invalid model name '../ranker'"),
    ("ranker\n", "1", "invalid model name"),
    ("x" * 65, "1", "invalid model name"),
])
def test_malformed_names_and_versions_are_rejected_by_the_state_machine(model, version, why):
    problem = check_command(pb.DeploymentState(model_name=model), cmd("deploy", version, model=model))
    assert problem is not None and why in problem
    # forced with a reason changes nothing
    assert check_command(pb.DeploymentState(model_name=model),
                         cmd("promote", version, model=model, force=True, reason="trust me")) is not None
    assert check_command(pb.DeploymentState(), cmd("deploy", "12")) is None
    policy = cmd("deploy", "../p", kind=pb.POLICY)
    assert "invalid policy version" in check_command(pb.DeploymentState(), policy)


@pytest.fixture
def repo(tmp_path):
    r = ModelRepository(tmp_path / "models")
    # 1: baseline, 2: better, 3: clearly worse, 4: corrupt after publishing
    for auc, ll in ((0.70, 0.40), (0.72, 0.39), (0.60, 0.50), (0.71, 0.39)):
        r.create_version("ranker", tiny_writer(auc=auc, logloss=ll, payload=f"{auc}".encode()))
    v4 = r.path("ranker", "4")
    os.chmod(v4, 0o755)
    os.chmod(v4 / MODEL_JSON, 0o644)
    (v4 / MODEL_JSON).write_text("{ truncated")
    return r


def replay(repo, *cmds):
    book = DeploymentBook(admit=repository_admission(repo, 0.005, 0.01))
    outs = [book.apply_bytes(pb.ControlMessage(command=c).SerializeToString(), i)[1] for i, c in enumerate(cmds)]
    return book, outs


def test_a_replayer_with_the_repository_applies_the_controllers_checks(repo):
    book, outs = replay(
        repo,
        cmd("deploy", "1"),
        cmd("deploy", "9"),                                   # missing
        cmd("canary", "4", percent=10),                       # corrupt
        cmd("promote", "3"),                                  # fails the gate
        cmd("promote", "3", force=True, reason=""),           # force without a reason
        cmd("promote", "2"),                                  # better: passes
        cmd("shadow", "9"),
    )
    assert [o.applied for o in outs] == [True, False, False, False, False, True, False]
    assert "model 'ranker' has no version '9'" in outs[1].reason
    assert "ranker/4 is corrupt" in outs[2].reason
    assert "refused by the promotion gate (not forced)" in outs[3].reason and "auc 0.6000" in outs[3].reason
    assert "--force needs a --reason" in outs[4].reason
    st = book.state("ranker")
    assert (st.production_version, st.canary_version, st.shadow_version, st.revision) == ("2", "", "", 2)

    # forced with a reason: the gate is overridden (recorded), as with the CLI
    book2, outs2 = replay(repo, cmd("deploy", "1"), cmd("promote", "3", force=True, reason="hotfix"))
    assert outs2[1].applied and book2.state("ranker").production_version == "3"
    # the tolerances the publisher recorded are the ones every replayer uses
    loose = cmd("promote", "3")
    loose.auc_tolerance, loose.logloss_tolerance = 0.2, 0.2
    strict = cmd("promote", "2")
    strict.auc_tolerance, strict.logloss_tolerance = 0.0, 0.0
    book3, outs3 = replay(repo, cmd("deploy", "1"), loose, cmd("rollback"), strict)
    assert [o.applied for o in outs3] == [True, True, True, True]


def test_a_rollback_to_a_version_that_became_corrupt_is_rejected(repo):
    book, outs = replay(repo, cmd("deploy", "1"), cmd("promote", "2"))
    v1 = repo.path("ranker", "1")
    os.chmod(v1, 0o755)
    os.remove(v1 / "model.pt")
    out = book.apply_command(cmd("rollback"))
    assert not out.applied and "artifact 'model.pt' is missing" in out.reason
    assert book.state("ranker").production_version == "2"


def book_with(*cmds):
    book = DeploymentBook()
    for i, c in enumerate(cmds):
        book.apply_bytes(pb.ControlMessage(command=c).SerializeToString(), i)
    return book


def test_snapshot_round_trip_and_a_newer_snapshot_is_kept(tmp_path):
    book = book_with(cmd("deploy", "1"), cmd("deploy", "2"), cmd("promote", "2"))
    path = write_snapshot(tmp_path, "control.t", book, "id-1", {0: 3}, writer="ops")
    assert path == snapshot_path(tmp_path, "control.t") and path.parent.name == ".deployments"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    snap = read_snapshot(tmp_path, "control.t")
    assert snap.topic_id == "id-1" and snap.offsets == {0: 3} and snap.base is None
    assert snap.states["ranker"] == book.state("ranker") and snap.productions() == {"ranker": "2"}
    older = book_with(cmd("deploy", "1"))
    assert write_snapshot(tmp_path, "control.t", older, "id-1", {0: 1}) is None  # a slower writer
    assert read_snapshot(tmp_path, "control.t").offsets == {0: 3}
    assert read_snapshot(tmp_path, "control.other") is None
    path.write_text("{ not json")
    assert read_snapshot(tmp_path, "control.t") is None  # reported, treated as none


def snap_of(tmp_path, book, topic_id="id-1", offsets=None):
    write_snapshot(tmp_path, "t", book, topic_id, offsets or {0: 3})
    return read_snapshot(tmp_path, "t")


def test_plan_start_intact_truncated_and_lost(tmp_path):
    book = book_with(cmd("deploy", "1"), cmd("deploy", "2"), cmd("promote", "2"))
    snap = snap_of(tmp_path, book)
    # no snapshot: the whole log; a truncated log is reported
    assert plan_start(None, "id-1", {0: 0}, {0: 3}).problems == []
    p = plan_start(None, "id-1", {0: 2}, {0: 3})
    assert p.truncated and p.seed is None and "low watermarks {0: 2}" in p.problems[0]
    # intact: the whole log, the snapshot is only a copy
    p = plan_start(snap, "id-1", {0: 0}, {0: 5})
    assert (p.read_from, p.seed, p.lost, p.problems) == ({0: 0}, None, False, [])
    # truncated, but the log still holds everything after the snapshot: exact, reported
    p = plan_start(snap, "id-1", {0: 2}, {0: 5})
    assert p.read_from == {0: 3} and p.seed["ranker"].production_version == "2" and not p.lost and p.truncated
    # lost: deleted (missing), recreated (new id), emptied, truncated past the snapshot
    for topic_id, lows, ends, what in ((None, {}, {}, "missing or empty"),
                                       ("id-2", {0: 0}, {0: 0}, "missing or empty"),
                                       ("id-2", {0: 0}, {0: 7}, "was recreated"),
                                       (None, {0: 0}, {0: 1}, "before the offsets the snapshot includes"),
                                       ("id-1", {0: 4}, {0: 6}, "truncated past the snapshot")):
        p = plan_start(snap, topic_id, lows, ends, "control.t")
        assert p.lost and p.seed["ranker"].production_version == "2", what
        assert p.read_from == lows and what in p.problems[-1] and "production {'ranker': '2'}" in p.problems[-1]


def test_a_restored_base_is_carried_by_the_next_snapshot(tmp_path):
    old = book_with(cmd("deploy", "1"), cmd("deploy", "2"), cmd("promote", "2"))
    snap = snap_of(tmp_path, old)
    p = plan_start(snap, "id-2", {0: 0}, {0: 0})          # the topic was recreated
    book = DeploymentBook()
    book.seed(p.seed, p.read_from)
    book.apply_bytes(pb.ControlMessage(command=cmd("canary", "1", percent=5)).SerializeToString(), 0)
    assert book.state("ranker").canary_version == "1" and book.state("ranker").production_version == "2"
    write_snapshot(tmp_path, "t", book, "id-2", {0: 1})
    again = read_snapshot(tmp_path, "t")
    raw = json.loads(snapshot_path(tmp_path, "t").read_text())
    assert raw["base"]["offsets"] == {"0": 0}
    # the next start on the same (new) topic rebuilds seed + log, silently
    p2 = plan_start(again, "id-2", {0: 0}, {0: 1})
    assert (p2.read_from, p2.lost, p2.problems) == ({0: 0}, False, [])
    assert p2.seed["ranker"].production_version == "2" and p2.seed["ranker"].canary_version == ""


def test_policy_commands_are_checked_against_the_models_policy_versions(repo):
    """A POLICY command names a version of ``<model>.policy`` that exists and is a valid policy; the
    controller's full check (every file against the manifest) refuses a tampered one too."""
    from recpilot.models.deployments.checks import policy_problem
    from tests.support.policy import write_toy_policy

    good = write_toy_policy(repo.root, exploration="softmax:0.5")
    tampered = write_toy_policy(repo.root, tampered=True)
    P = pb.POLICY
    book, outs = replay(repo, cmd("deploy", "1"),
                        cmd("deploy", "9", kind=P),                   # no such policy version
                        cmd("canary", good, percent=50, kind=P),
                        cmd("promote", good, kind=P),
                        cmd("canary", "3", percent=10, kind=P))       # "3" of the ranker exists, of its policies not
    assert [o.applied for o in outs] == [True, False, True, True, False]
    assert "policy version 9 of ranker cannot be served" in outs[1].reason
    assert "model 'ranker.policy' has no version '3'" in outs[4].reason
    st = book.state("ranker")
    assert (st.production_version, st.policy_version, st.policy_canary_version) == ("1", good, "")
    assert policy_problem(repo, "ranker", good, verify=True) is None
    assert policy_problem(repo, "ranker", tampered) is None  # sizes match: replayers apply it, the load fails
    assert "sha256 mismatch" in policy_problem(repo, "ranker", tampered, verify=True)
    assert "cannot be served" in policy_problem(repo, "ranker", "1.5")
    # the repository lists the policies as a model of their own; nothing treats them as a ranker
    assert repo.models() == ["ranker", "ranker.policy"] and repo.rankers() == ["ranker"]
    listed = {m["name"]: m for m in repo.describe()}
    assert listed["ranker.policy"]["kind"] == "policy" and listed["ranker"]["kind"] == "ranker"
    assert [v["exploration"] for v in listed["ranker.policy"]["versions"] if v["valid"]] == ["softmax:0.5", "greedy"]
