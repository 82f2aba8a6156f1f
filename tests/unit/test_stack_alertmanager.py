"""The local stack's Alertmanager without starting it: its command line, its configuration, and what
`recpilot up`/`status` do with it (the real process: tests/integration/test_stack.py and
tests/integration/test_monitor_alertmanager.py)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import yaml

from recpilot.settings import PlatformSettings
from recpilot.stack import alertmanager as amod
from recpilot.stack.manager import Stack
from recpilot.stack.process import PidRecord, ProcessTable, _start_ticks


def _am(tmp_path, **kw) -> amod.Alertmanager:
    s = PlatformSettings(home=tmp_path, **kw)
    return amod.Alertmanager(s, ProcessTable(tmp_path / "run"))


def test_alertmanager_listens_on_its_own_port_without_gossip_and_keeps_state_under_the_home(tmp_path):
    am = _am(tmp_path)
    assert am.port == 9095 != PlatformSettings().kafka_controller_port
    cmd = am.command("/usr/bin/prometheus-alertmanager")
    assert "--web.listen-address=127.0.0.1:9095" in cmd
    assert "--cluster.listen-address=" in cmd  # empty: no HA gossip listener on :9094
    assert f"--storage.path={tmp_path / 'alertmanager' / 'data'}" in cmd
    assert f"--config.file={tmp_path / 'alertmanager' / 'alertmanager.yml'}" in cmd
    assert _am(tmp_path, alertmanager_port=22095).address == "127.0.0.1:22095"


def test_generated_config_routes_everything_to_a_receiver_that_notifies_no_one(tmp_path):
    am = _am(tmp_path)
    am.write_config()
    doc = yaml.safe_load(am.config.read_text())
    assert doc["route"]["receiver"] == "local" and doc["receivers"] == [{"name": "local"}]
    assert am.data.is_dir()


def test_a_given_config_is_copied(tmp_path):
    mine = tmp_path / "mine.yml"
    mine.write_text("route: {receiver: x}\nreceivers: [{name: x}]\n")
    am = _am(tmp_path, alertmanager_config=mine)
    am.write_config()
    assert am.config.read_text() == mine.read_text()


def test_up_says_in_one_line_that_alertmanager_is_not_installed_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(amod, "alertmanager_binary", lambda: None)
    lines = []
    assert Stack(PlatformSettings(home=tmp_path)).up_alertmanager(echo=lines.append) is False
    assert len(lines) == 1 and lines[0].startswith("alertmanager: not installed")


def test_status_lists_alertmanager_only_once_up_started_it_and_services_learn_its_url(tmp_path, monkeypatch):
    monkeypatch.delenv("RECPILOT_MONITOR_ALERTMANAGER_URL", raising=False)
    stack = Stack(PlatformSettings(home=tmp_path, alertmanager_port=22095))
    stack.alertmanager.ready = lambda: False  # (no HTTP probe in the unit tier)
    assert "alertmanager" not in {c["name"] for c in stack.status()["components"]}
    assert "RECPILOT_MONITOR_ALERTMANAGER_URL" not in stack._service_env()
    # a pid record of a live process (this one) stands for a running Alertmanager
    me = os.getpid()
    rec = PidRecord("alertmanager", me, _start_ticks(me), ["x"], "127.0.0.1:22095", str(tmp_path / "am.log"), 0.0)
    (tmp_path / "run").mkdir()
    stack.table.path("alertmanager").write_text(json.dumps(asdict(rec)))
    [am] = [c for c in stack.status()["components"] if c["name"] == "alertmanager"]
    assert am["running"] and not am["ready"] and am["address"] == "127.0.0.1:22095"
    assert stack._service_env()["RECPILOT_MONITOR_ALERTMANAGER_URL"] == "http://127.0.0.1:22095"
    monkeypatch.setenv("RECPILOT_MONITOR_ALERTMANAGER_URL", "http://am.example:9093")  # the operator's wins
    assert stack._service_env()["RECPILOT_MONITOR_ALERTMANAGER_URL"] == "http://am.example:9093"


def test_setup_install_is_optional_and_says_why_when_it_cannot(monkeypatch):
    from recpilot.stack.process import StackError

    monkeypatch.setattr(amod, "alertmanager_binary", lambda: None)
    monkeypatch.setattr(amod, "promtool_binary", lambda: None)
    asked = []

    def refuse(packages, why, recommends=True):
        asked.append((packages, recommends))
        raise StackError(f"{why} not found. Install it with: sudo apt-get install -y {' '.join(packages)}")

    monkeypatch.setattr(amod, "apt_install", refuse)
    found, line = amod.ensure_installed()  # never raises: both are optional
    assert found is None and line.startswith("not installed (") and "sudo apt-get install" in line
    assert asked == [(["prometheus-alertmanager", "prometheus"], False)]  # without recommends
