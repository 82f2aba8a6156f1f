"""Deployment state machine, replay book and promotion gate (pure functions, no Kafka)."""

from __future__ import annotations

import pytest

from recpilot.featurespec import stable_hash
from recpilot.models.deployments import (
    CommandRejected,
    DeploymentBook,
    DeploymentSettings,
    apply_command,
    check_command,
    lineage,
    new_command,
    promotion_gate,
    routes_to_canary,
    serving_version,
)
from recpilot.pb import deployments_pb2 as pb


def run(*cmds):
    """Apply commands through a book, as every replayer does; return (book, outcomes)."""
    book = DeploymentBook()
    outs = []
    for i, c in enumerate(cmds):
        kind, out = book.apply_bytes(pb.ControlMessage(command=c).SerializeToString(), offset=i)
        assert kind == "command"
        outs.append(out)
    return book, outs


def cmd(action, version="", **kw):
    kw.setdefault("timestamp_ms", 1000)
    return new_command(action, "ranker", version, actor="alice@host", **kw)


def test_deploy_canary_promote_rollback():
    book, outs = run(
        cmd("deploy", "1", reason="first", timestamp_ms=1),
        cmd("deploy", "2", timestamp_ms=2),
        cmd("canary", "2", percent=10, timestamp_ms=3),
        cmd("shadow", "3", timestamp_ms=4),
        cmd("promote", "2", reason="canary looked good", timestamp_ms=5),
        cmd("rollback", reason="ctr dropped", timestamp_ms=6),
    )
    assert [o.applied for o in outs] == [True] * 6
    st = book.state("ranker")
    assert (st.production_version, st.canary_version, st.canary_percent, st.shadow_version) == ("1", "", 0.0, "3")
    assert st.revision == 6 and st.updated_ms == 6
    assert [h.action for h in st.history] == [pb.DEPLOY, pb.DEPLOY, pb.CANARY, pb.SHADOW,
                                              pb.PROMOTE, pb.ROLLBACK]
    # the rollback records where it went; who and why are kept
    assert st.history[-1].version == "1"
    assert st.history[-1].reason == "ctr dropped" and st.history[-1].actor == "alice@host"
    assert [o.revision for o in outs] == [1, 2, 3, 4, 5, 6]


def test_intermediate_states():
    states = []
    book = DeploymentBook()
    for c in (cmd("deploy", "1"), cmd("deploy", "2"), cmd("canary", "2", percent=25), cmd("promote", "2")):
        book.apply_command(c)
        s = book.state("ranker")
        states.append((s.production_version, s.canary_version, s.canary_percent))
    # deploy 2 while 1 is production makes it available, not live; promoting the canary clears it
    assert states == [("1", "", 0.0), ("1", "", 0.0), ("1", "2", 25.0), ("2", "", 0.0)]


def test_repeated_rollbacks_walk_back_through_production_history():
    book, outs = run(cmd("deploy", "1"), cmd("promote", "2"), cmd("promote", "3"),
                     cmd("rollback"), cmd("rollback"), cmd("rollback"))
    assert [o.applied for o in outs] == [True, True, True, True, True, False]
    st = book.state("ranker")
    assert st.production_version == "1"
    assert lineage(st) == ["1"]
    assert "no previous production version" in outs[-1].reason
    assert st.revision == 5  # the rejected rollback changed nothing


@pytest.mark.parametrize("setup, bad, reason", [
    ([], cmd("rollback"), "no previous production version"),
    ([], cmd("canary", "2", percent=5), "has no production version yet"),
    ([cmd("deploy", "1")], cmd("canary", "2", percent=0), "canary percent must be in (0, 100]"),
    ([cmd("deploy", "1")], cmd("canary", "2", percent=150), "canary percent must be in (0, 100]"),
    ([cmd("deploy", "1")], cmd("canary", "1", percent=5), "version 1 is production"),
    ([cmd("deploy", "1")], cmd("promote", "1"), "already production"),
    ([cmd("deploy", "1")], cmd("clear_canary"), "has no canary"),
    ([cmd("deploy", "1")], cmd("clear_shadow"), "has no shadow"),
    ([cmd("deploy", "1")], cmd("promote", ""), "promote needs a version"),
    ([cmd("deploy", "1")], cmd("promote", "2", force=True), "--force needs a --reason"),
    ([cmd("deploy", "1"), cmd("promote", "2")], cmd("rollback", "3"), "is not the previous production version 1"),
])
def test_rejections(setup, bad, reason):
    book, _ = run(*setup)
    before = book.state("ranker")
    assert reason in (check_command(before, bad) or "")
    with pytest.raises(CommandRejected, match=None):
        apply_command(before, bad)
    out = book.apply_command(bad)
    assert not out.applied and reason in out.reason
    assert book.state("ranker") == before


def test_replay_is_deterministic_and_duplicates_are_ignored():
    cmds = [cmd("deploy", "1"), cmd("promote", "2"), cmd("canary", "3", percent=50), cmd("rollback")]
    a, _ = run(*cmds)
    b, _ = run(*(cmds[:2] + [cmds[1]] + cmds[2:]))  # a producer retry delivered promote twice
    assert a.state("ranker") == b.state("ranker")
    assert a.state("ranker").revision == 4


def test_acks_and_garbage_in_the_book():
    book, _ = run(cmd("deploy", "1"))
    c = book.state("ranker").history[0]
    for replica, status in (("host:1", pb.APPLIED), ("host:2", pb.FAILED), ("host:1", pb.APPLIED)):
        ack = pb.DeploymentAck(command_id=c.command_id, model_name="ranker", replica=replica, status=status)
        assert book.apply_ack_bytes(pb.ControlMessage(ack=ack).SerializeToString())[0] == "ack"
    assert {r: a.status for r, a in book.acks[c.command_id].items()} == {"host:1": pb.APPLIED, "host:2": pb.FAILED}
    assert book.apply_bytes(b"\xff\xff not protobuf")[0] == "bad"
    assert book.apply_ack_bytes(b"\xff\xff not protobuf")[0] == "bad"
    assert book.undecodable == 2 and book.stray == 0 and book.ack_messages == 4
    assert book.state("ranker").production_version == "1"


def test_the_acks_topic_follows_the_control_topic_unless_named(monkeypatch):
    from services.inference.settings import InferenceSettings

    for var in ("RECPILOT_DEPLOY_TOPIC", "RECPILOT_DEPLOY_ACKS_TOPIC"):
        monkeypatch.delenv(var, raising=False)
    assert DeploymentSettings().acks_topic_for() == "control.acks"
    assert DeploymentSettings(topic="t").acks_topic_for() == "t.acks"
    assert DeploymentSettings(topic="t", acks_topic="a").acks_topic_for() == "a"
    assert DeploymentSettings(topic="t", acks_topic="a").acks_topic_for("u") == "u.acks"  # another control topic
    assert InferenceSettings().deployments_acks_topic == ""  # derived: control.acks


def test_each_topic_takes_only_its_own_kind_of_message():
    """An ack on the control topic (a log written by the previous version, where acks shared the
    topic) is skipped; a command on the acks topic (which every replica may write) is never applied."""
    book, _ = run(cmd("deploy", "1"))
    c = book.state("ranker").history[0]
    legacy = pb.ControlMessage(ack=pb.DeploymentAck(command_id=c.command_id, model_name="ranker", replica="old:1",
                                                    status=pb.APPLIED)).SerializeToString()
    kind, ack = book.apply_bytes(legacy, 1)
    assert kind == "stray" and ack.replica == "old:1"
    assert book.acks == {} and book.stray == 1
    # replay goes on past it: the next command is applied
    kind, out = book.apply_bytes(pb.ControlMessage(command=cmd("deploy", "2")).SerializeToString(), 2)
    assert kind == "command" and out.applied and book.state("ranker").revision == 2

    forged = cmd("promote", "2")
    kind, _ = book.apply_ack_bytes(pb.ControlMessage(command=forged).SerializeToString(), 0)
    assert kind == "stray" and book.stray == 2
    assert forged.command_id not in book.outcomes and book.state("ranker").production_version == "1"
    assert book.apply_ack_bytes(pb.ControlMessage(state=pb.DeploymentState()).SerializeToString())[0] == "stray"


def test_policy_versions_are_tracked_separately():
    book, outs = run(cmd("deploy", "1"),
                     cmd("promote", "p1", kind=pb.POLICY), cmd("promote", "p2", kind=pb.POLICY),
                     cmd("rollback", kind=pb.POLICY), cmd("shadow", "p3", kind=pb.POLICY))
    st = book.state("ranker")
    assert st.production_version == "1" and st.policy_version == "p1"
    assert [o.applied for o in outs] == [True, True, True, True, False]
    assert "shadow is not supported for policies" in outs[-1].reason
    assert lineage(st, pb.RANKER) == ["1"] and lineage(st, pb.POLICY) == ["p1"]


def test_policy_canary_and_clear_canary():
    P = pb.POLICY
    book, outs = run(cmd("deploy", "1"),
                     cmd("canary", "3", percent=50, kind=P),      # beside the ranker's order: no policy yet
                     cmd("deploy", "2", kind=P),                  # the first policy: production
                     cmd("canary", "2", percent=5, kind=P),       # production is not a canary
                     cmd("clear_canary", kind=P),
                     cmd("clear_canary", kind=P),                 # none left
                     cmd("canary", "3", percent=150, kind=P),
                     cmd("canary", "3", percent=25, kind=P),
                     cmd("promote", "3", kind=P))                 # promoting the canary ends it
    assert [o.applied for o in outs] == [True, True, True, False, True, False, False, True, True]
    assert "version 2 is production" in outs[3].reason
    assert "policy ranker has no canary" in outs[5].reason
    assert "canary percent must be in (0, 100]" in outs[6].reason
    st = book.state("ranker")
    assert (st.policy_version, st.policy_canary_version, st.policy_canary_percent) == ("3", "", 0.0)
    # the ranker's canary fields are untouched by policy commands, and the other way round
    assert (st.production_version, st.canary_version, st.canary_percent) == ("1", "", 0.0)
    book2, _ = run(cmd("deploy", "1"), cmd("deploy", "2"), cmd("canary", "2", percent=10),
                   cmd("canary", "7", percent=30, kind=P))
    st2 = book2.state("ranker")
    assert (st2.canary_version, st2.canary_percent, st2.policy_canary_version, st2.policy_canary_percent) == \
        ("2", 10.0, "7", 30.0)
    # clear_canary of the ranker keeps the policy canary
    book2.apply_command(cmd("clear_canary"))
    st2 = book2.state("ranker")
    assert st2.canary_version == "" and st2.policy_canary_version == "7"


def test_a_policy_store_is_not_a_model_of_its_own():
    for kind in (pb.RANKER, pb.POLICY):
        c = new_command("deploy", "ranker.policy", "1", kind=kind)
        assert "holds the re-ranking policies of ranker, not a model" in check_command(pb.DeploymentState(), c)


def test_policy_canary_routes_by_the_ranker_canarys_hash():
    st = pb.DeploymentState(model_name="ranker", production_version="1", policy_version="2",
                            policy_canary_version="5", policy_canary_percent=20)
    users = [f"u{i}" for i in range(2000)]
    routed = [u for u in users if routes_to_canary(st, u, pb.POLICY)]
    assert routed == [u for u in users if stable_hash(u, 10_000) < 2000]
    assert not any(routes_to_canary(st, u) for u in users)  # no ranker canary
    assert {serving_version(st, u, pb.POLICY) for u in routed} == {"5"}
    assert {serving_version(st, u, pb.POLICY) for u in users if u not in routed} == {"2"}
    assert {serving_version(st, u) for u in users} == {"1"}


def test_canary_routing_uses_stable_hash():
    st = pb.DeploymentState(model_name="ranker", production_version="1", canary_version="2", canary_percent=10)
    users = [f"u{i}" for i in range(2000)]
    routed = [u for u in users if routes_to_canary(st, u)]
    assert routed == [u for u in users if stable_hash(u, 10_000) < 1000]
    assert 120 < len(routed) < 280  # about 10% of 2000
    assert {serving_version(st, u) for u in routed} == {"2"}
    assert serving_version(pb.DeploymentState(production_version="1"), "u1") == "1"


def _meta(version, auc, logloss):
    return {"name": "ranker", "version": version, "metrics": {"auc": auc, "logloss": logloss}}


def test_promotion_gate():
    prod = _meta("1", 0.70, 0.40)
    assert promotion_gate(_meta("2", 0.71, 0.39), prod, 0.005, 0.01) == []
    assert promotion_gate(_meta("2", 0.696, 0.409), prod, 0.005, 0.01) == []  # within tolerance
    problems = promotion_gate(_meta("2", 0.65, 0.45), prod, 0.005, 0.01)
    assert problems == [
        "auc 0.6500 of ranker/2 is below production ranker/1's 0.7000 by 0.0500 (tolerance 0.005; each on its own holdout)",
        "logloss 0.4500 of ranker/2 is above production ranker/1's 0.4000 by 0.0500 (tolerance 0.01; each on its own holdout)",
    ]
    assert promotion_gate(_meta("2", 0.65, 0.45), prod, 0.1, 0.1) == []
    assert promotion_gate(_meta("2", None, 0.40), prod, 0.005, 0.01) == [
        "auc of ranker/2 is undefined while production ranker/1 has 0.7000 (each on its own holdout)"]
    assert promotion_gate(_meta("2", 0.1, 9.0), None, 0.0, 0.0) == []  # nothing in production yet


def test_promotion_gate_compares_head_to_head_on_the_candidates_holdout():
    """When the candidate's model.json scored this production version on its own holdout, those
    same-rows figures decide, not production's figures from another week."""
    prod = _meta("1", 0.80, 0.30)               # production looked better on its own (easier) week
    cand = _meta("2", 0.70, 0.40)
    cand["metrics"]["production"] = {"version": "1", "auc": 0.68, "logloss": 0.41}   # same rows: worse
    assert promotion_gate(cand, prod, 0.005, 0.01) == []
    cand["metrics"]["production"] = {"version": "1", "auc": 0.72, "logloss": 0.40}
    assert promotion_gate(cand, prod, 0.005, 0.01) == [
        "auc 0.7000 of ranker/2 is below production ranker/1's 0.7200 by 0.0200 (tolerance 0.005; "
        "both scored on ranker/2's holdout)"]
    # scored against another version (production moved since): back to each model's own figures
    cand["metrics"]["production"] = {"version": "7", "auc": 0.50, "logloss": 0.9}
    assert [x.split(" (")[1] for x in promotion_gate(cand, prod, 0.005, 0.01)] == [
        "tolerance 0.005; each on its own holdout)", "tolerance 0.01; each on its own holdout)"]
