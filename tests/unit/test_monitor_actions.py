"""The monitor's actuator: decisions, cool-down, kill switch, refusals, failures and audit records,
with a fake ``submit`` that records its calls (no Kafka); the kill file; the ranker's order as a
policy version the control accepts (what pause_policy promotes)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from recpilot.errors import InvalidArgument, Unavailable
from recpilot.models.deployments import CommandRejected, PromotionRefused, check_command, new_command
from recpilot.pb import deployments_pb2 as pb
from recpilot.rl.artifact import DEFAULT_VERSION
from services.monitor import actions as act
from services.monitor.actions import Actuator, TrainSubprocess, alert_reason
from services.monitor.alerts import Alert

POLICY = {"CtrRegression": "rollback", "CanaryCtrRegression": "abort_canary",
          "PolicyCtrRegression": "pause_policy", "FeatureDrift": "retrain", "LatencySLOBurn": "none"}


@dataclass
class Sub:
    command: pb.DeploymentCommand
    outcome: object = None


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeControl:
    """Records submit calls; holds one state per model; can be told to raise."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.states: dict[str, pb.DeploymentState] = {}
        self.error: Exception | None = None

    def submit(self, action, model, version="", *, reason, kind):
        self.calls.append((action, model, version, reason, kind))
        if self.error is not None:
            raise self.error
        return Sub(pb.DeploymentCommand(command_id=f"c{len(self.calls)}", version=version or "1"))

    def state(self, model):
        return self.states.get(model, pb.DeploymentState(model_name=model))


def production(model: str, *versions: str) -> pb.DeploymentState:
    st = pb.DeploymentState(model_name=model, production_version=versions[-1])
    for v in versions:
        st.history.add().CopyFrom(new_command("promote", model, v, actor="t"))
    return st


def ctr_alert(version="2", model="ranker", status="firing", name="CtrRegression", **labels) -> Alert:
    return Alert(name=name, labels={"model": model, "version": version, **labels}, severity="page", status=status,
                 value=0.25, threshold=0.1, statistic="relative_drop", starts_ms=1)


@pytest.fixture
def ctl():
    c = FakeControl()
    c.states["ranker"] = production("ranker", "1", "2")
    return c


def actuator(ctl, *, enabled=lambda: True, clock=None, retrain=None, cooldown_s=300.0, background=False):
    audit: list = []
    a = Actuator(POLICY, ctl.submit, cooldown_s=cooldown_s, enabled=enabled, audit=audit.append, retrain=retrain,
                 instance="mon-1", clock=clock or Clock(), state=ctl.state, background=background)
    return a, audit


def test_rollback_executes_with_the_previous_version_and_a_reason_naming_the_alert(ctl):
    a, audit = actuator(ctl)
    rec = a.handle(ctr_alert())
    assert rec.outcome == "executed" and rec.command_id == "c1"
    (action, model, version, reason, kind), = ctl.calls
    assert (action, model, version, kind) == ("rollback", "ranker", "1", pb.RANKER)
    assert "CtrRegression" in reason and "model=ranker" in reason and "version=2" in reason
    assert ctr_alert().fingerprint in reason and "relative_drop=0.25" in reason
    assert audit == [rec]
    assert rec.alert_name == "CtrRegression" and rec.alert_fingerprint == ctr_alert().fingerprint
    assert rec.model_name == "ranker" and rec.version == "2" and rec.instance == "mon-1"
    assert rec.timestamp_ms == 1_000_000
    assert a.history()[0]["outcome"] == "executed" and a.history()[0]["detail"].endswith("from 2 to 1")


def test_resolved_and_unmapped_alerts_do_nothing(ctl):
    a, audit = actuator(ctl)
    assert a.handle(ctr_alert(status="resolved")) is None
    assert a.handle(Alert(name="LatencySLOBurn", labels={"service": "inference", "method": "Recommend"})) is None
    assert a.handle(Alert(name="SomethingElse", labels={"model": "ranker"})) is None
    assert ctl.calls == [] and audit == []


def test_cooldown_per_action_and_model(ctl):
    clock = Clock()
    a, audit = actuator(ctl, clock=clock, cooldown_s=300)
    assert a.handle(ctr_alert()).outcome == "executed"
    ctl.states["ranker"] = production("ranker", "1", "2", "3")   # someone promoted 3 since
    clock.t += 100
    rec = a.handle(ctr_alert(version="3"))
    assert rec.outcome == "cooldown" and "cool-down 300 s" in rec.detail and "200 s left" in rec.detail
    assert len(ctl.calls) == 1
    ctl.states["other"] = production("other", "1", "2")          # another model is not blocked
    assert a.handle(ctr_alert(model="other")).outcome == "executed"
    clock.t += 201                                                 # after the cool-down
    assert a.handle(ctr_alert(version="3")).outcome == "executed"
    assert [c[1:3] for c in ctl.calls] == [("ranker", "1"), ("other", "1"), ("ranker", "2")]
    assert [r.outcome for r in audit] == ["executed", "cooldown", "executed", "executed"]


def test_restored_records_keep_the_cooldown_across_a_restart(ctl):
    clock = Clock()
    first, audit = actuator(ctl, clock=clock, cooldown_s=300)
    assert first.handle(ctr_alert()).outcome == "executed"
    clock.t += 60                                       # the monitor restarts a minute later
    ctl.states["ranker"] = production("ranker", "1", "2", "3")
    second, audit2 = actuator(ctl, clock=clock, cooldown_s=300)
    second.restore(list(audit))                         # what the alerts topic held
    rec = second.handle(ctr_alert(version="3"))
    assert rec.outcome == "cooldown" and "240 s left" in rec.detail
    assert [h["outcome"] for h in second.history()] == ["executed", "cooldown"]
    third, _ = actuator(ctl, clock=clock, cooldown_s=300)
    third.restore([r for r in audit if r.outcome != "executed"])  # only executed or failed actions count
    assert third.handle(ctr_alert(version="3")).outcome == "executed"


def test_kill_switch_both_ways(ctl):
    on = {"v": False}
    a, audit = actuator(ctl, enabled=lambda: on["v"])
    rec = a.handle(ctr_alert())
    assert rec.outcome == "disabled" and "kill switch" in rec.detail and ctl.calls == []
    on["v"] = True
    assert a.handle(ctr_alert()).outcome == "executed" and len(ctl.calls) == 1
    assert [r.outcome for r in audit] == ["disabled", "executed"]


def test_kill_file_disables_and_survives_a_new_check(tmp_path):
    d = tmp_path / "monitor"
    assert act.kill_switch(d) is None and act.enabled_check(True, d)()
    rec = act.disable(d, by="alice", reason="maintenance")
    assert rec["by"] == "alice"
    assert act.kill_switch(d)["reason"] == "maintenance"
    assert not act.enabled_check(True, d)()           # a new process reading the same dir sees it
    assert act.enable(d) and not act.enable(d)
    assert act.enabled_check(True, d)() and not act.enabled_check(False, d)()
    act.kill_file(d).write_text("garbage")             # an unreadable file still disables
    assert not act.enabled_check(True, d)() and act.kill_switch(d) == {"content": "garbage"}


def test_rollback_refused_when_not_production_or_no_previous(ctl):
    a, audit = actuator(ctl)
    rec = a.handle(ctr_alert(version="1"))
    assert rec.outcome == "refused" and "no longer production (production: 2)" in rec.detail
    ctl.states["solo"] = production("solo", "1")
    rec = a.handle(ctr_alert(version="1", model="solo"))
    assert rec.outcome == "refused" and "no previous production version" in rec.detail
    assert ctl.calls == []
    assert a.handle(ctr_alert()).outcome == "executed"   # a refusal by the state check costs no cool-down


def test_control_refusal_and_failure_are_recorded_with_the_error(ctl):
    a, audit = actuator(ctl, cooldown_s=0)
    ctl.error = CommandRejected("cannot rollback ranker: state changed")
    rec = a.handle(ctr_alert())
    assert rec.outcome == "refused" and "state changed" in rec.detail
    ctl.error = Unavailable("broker down at 127.0.0.1:1")
    rec = a.handle(ctr_alert())
    assert rec.outcome == "failed" and "Unavailable: broker down at 127.0.0.1:1" in rec.detail
    assert [r.outcome for r in audit] == ["refused", "failed"]


def test_abort_canary(ctl):
    a, audit = actuator(ctl)
    assert a.handle(ctr_alert(name="CanaryCtrRegression", version="3")).outcome == "refused"   # no canary
    ctl.states["ranker"].canary_version, ctl.states["ranker"].canary_percent = "3", 10.0
    rec = a.handle(ctr_alert(name="CanaryCtrRegression", version="3"))
    assert rec.outcome == "executed" and ctl.calls[-1][:3] == ("clear_canary", "ranker", "")
    assert ctl.calls[-1][4] == pb.RANKER


def test_pause_policy_promotes_the_rankers_order_or_clears_the_policy_canary(ctl):
    a, audit = actuator(ctl, cooldown_s=0)
    st = ctl.states["ranker"]
    st.policy_version, st.policy_canary_version = "4", "5"
    rec = a.handle(ctr_alert(name="PolicyCtrRegression", version="", policy_version="4"))
    assert rec.outcome == "executed" and ctl.calls[-1][:3] == ("promote", "ranker", DEFAULT_VERSION)
    assert ctl.calls[-1][4] == pb.POLICY and rec.version == "4"
    rec = a.handle(ctr_alert(name="PolicyCtrRegression", version="", policy_version="5"))
    assert rec.outcome == "executed" and ctl.calls[-1][:3] == ("clear_canary", "ranker", "")
    assert ctl.calls[-1][4] == pb.POLICY
    st.policy_version, st.policy_canary_version = "", ""
    rec = a.handle(ctr_alert(name="PolicyCtrRegression", version="", policy_version="4"))
    assert rec.outcome == "refused" and "already serves the ranker's order" in rec.detail


def test_the_control_accepts_the_rankers_order_as_a_policy_version(tmp_path):
    from recpilot.models.deployments.checks import policy_admission, policy_problem
    from recpilot.models.repository import ModelRepository

    repo = ModelRepository(tmp_path / "models")
    assert policy_problem(repo, "ranker", DEFAULT_VERSION, verify=True) is None
    st = pb.DeploymentState(model_name="ranker", policy_version="4")
    cmd = new_command("promote", "ranker", DEFAULT_VERSION, kind=pb.POLICY, actor="monitor")
    assert check_command(st, cmd) is None and policy_admission(repo, st, cmd) is None
    assert "cannot be served" in policy_problem(repo, "ranker", "4")


def test_retrain_trains_then_promotes_through_the_gate(ctl):
    trained: list = []

    def retrain(model):
        trained.append(model)
        return "3"

    a, audit = actuator(ctl, retrain=retrain, cooldown_s=0)
    rec = a.handle(ctr_alert(name="FeatureDrift", feature="price"))
    assert rec.outcome == "executed" and trained == ["ranker"]
    assert ctl.calls[-1][:3] == ("promote", "ranker", "3") and ctl.calls[-1][4] == pb.RANKER
    ctl.error = PromotionRefused("auc 0.6 of ranker/3 is below production's 0.7")
    rec = a.handle(ctr_alert(name="FeatureDrift", feature="price"))
    assert rec.outcome == "refused" and "trained ranker version 3" in rec.detail and "auc 0.6" in rec.detail

    def broken(model):
        raise RuntimeError("no data in the window")

    b, _ = actuator(ctl, retrain=broken)
    rec = b.handle(ctr_alert(name="FeatureDrift", feature="price"))
    assert rec.outcome == "failed" and "no data in the window" in rec.detail
    c, _ = actuator(ctl)
    assert c.handle(ctr_alert(name="FeatureDrift")).outcome == "refused"   # no retrain configured


def test_background_worker_never_blocks_the_caller_and_blocks_a_second_meanwhile(ctl):
    gate = threading.Event()
    inner = ctl.submit

    def slow_submit(*args, **kw):
        gate.wait(10)   # the control is slow (a broker far away)
        return inner(*args, **kw)

    audit: list = []
    a = Actuator(POLICY, slow_submit, cooldown_s=60, enabled=lambda: True, audit=audit.append,
                 state=ctl.state, clock=Clock())
    try:
        assert a.handle(ctr_alert()) is None          # queued: returns at once
        second = a.handle(ctr_alert())
        assert second.outcome == "cooldown" and "in progress" in second.detail
        gate.set()
        assert a.join(10)
        assert [r.outcome for r in audit] == ["cooldown", "executed"] and len(ctl.calls) == 1
    finally:
        gate.set()
        a.close()


def test_disabled_while_queued_is_not_published(ctl):
    gate, entered, on = threading.Event(), threading.Event(), {"v": True}
    inner = ctl.submit

    def slow_submit(*args, **kw):
        entered.set()
        gate.wait(10)
        return inner(*args, **kw)

    audit: list = []
    a = Actuator(POLICY, slow_submit, cooldown_s=0, enabled=lambda: on["v"], audit=audit.append, state=ctl.state)
    try:
        ctl.states["b"] = production("b", "1", "2")
        assert a.handle(ctr_alert(model="b")) is None       # the worker is inside submit
        assert a.handle(ctr_alert()) is None                 # queued behind it
        assert entered.wait(10)
        on["v"] = False                                      # the switch is thrown meanwhile
        gate.set()
        assert a.join(10)
        assert [r.outcome for r in audit] == ["executed", "disabled"]
        assert [c[1] for c in ctl.calls] == ["b"]
    finally:
        gate.set()
        a.close()


def test_unknown_action_in_the_policy_is_a_usage_error(ctl):
    with pytest.raises(InvalidArgument, match="reboot"):
        Actuator({"X": "reboot"}, ctl.submit, cooldown_s=1, enabled=lambda: True, audit=print)


def test_a_failing_audit_never_undoes_the_action(ctl):
    def audit(rec):
        raise RuntimeError("alerts topic down")

    a = Actuator(POLICY, ctl.submit, cooldown_s=1, enabled=lambda: True, audit=audit, state=ctl.state,
                 background=False)
    assert a.handle(ctr_alert()).outcome == "executed" and len(ctl.calls) == 1


def test_train_subprocess_command_line(tmp_path):
    t = TrainSubprocess(data="kafka", last_days=2, repository=tmp_path, python="py")
    argv = t.argv("ranker")
    assert argv[:4] == ["py", "-m", "recpilot.cli", "train"]
    assert ["--framework", "torch"] == argv[4:6] and "--json" in argv
    assert argv[argv.index("--data") + 1] == "kafka" and argv[argv.index("--last-days") + 1] == "2"
    assert argv[argv.index("--name") + 1] == "ranker" and argv[argv.index("--repository") + 1] == str(tmp_path)
    assert TrainSubprocess(framework="tensorflow").argv("m")[5] == "tensorflow"


def test_train_runner_from_settings_and_the_newest_versions_framework(tmp_path):
    from recpilot.models.repository import ModelRepository
    from services.monitor.settings import MonitorSettings
    from tests.support.repository import tiny_writer

    repo = ModelRepository(tmp_path / "models")
    repo.create_version("ranker", tiny_writer("torch"))
    repo.create_version("ranker", tiny_writer("tensorflow"))
    t = act.train_runner(MonitorSettings(retrain_last_days=3, retrain_timeout_s=60), repo.root)
    argv = t.argv("ranker")
    assert t.timeout_s == 60 and argv[argv.index("--last-days") + 1] == "3"
    assert argv[argv.index("--framework") + 1] == "tensorflow" and argv[argv.index("--data") + 1] == "kafka"


def test_alert_reason_names_the_alert():
    r = alert_reason(ctr_alert())
    assert r.startswith("monitor: alert CtrRegression{model=ranker,version=2}")
