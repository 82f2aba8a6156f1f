"""deploy/prometheus checked by the real tools when installed (Debian's prometheus has promtool,
prometheus-alertmanager has amtool; `recpilot setup` installs both): the rules and the configuration
load, the rules' unit tests pass, and a real Alertmanager with the example routing delivers a page
and its resolution to the example webhook receiver, and refuses an unsigned monitor webhook."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from recpilot.net import free_port
from recpilot.paths import REPO_ROOT
from recpilot.settings import PlatformSettings
from recpilot.stack.alertmanager import Alertmanager, alertmanager_binary, amtool_binary, promtool_binary
from recpilot.stack.process import ProcessTable
from services.monitor import channels as C
from services.monitor.alerts import Alert

PROM = REPO_ROOT / "deploy" / "prometheus"
needs_promtool = pytest.mark.skipif(promtool_binary() is None, reason="promtool is not installed (Debian's "
                                    "prometheus package; recpilot setup installs it)")


def _run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=PROM)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@needs_promtool
def test_promtool_checks_every_rule_file():
    files = sorted(str(p.relative_to(PROM)) for p in (PROM / "rules").glob("*.yml"))
    out = _run(promtool_binary(), "check", "rules", *files)
    assert out.count("SUCCESS") == len(files) >= 5


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_promtool_checks_the_prometheus_config_with_its_rules(config):
    """The local stack's config and docker-compose.yml's."""
    out = _run(promtool_binary(), "check", "config", config)
    assert "rules/monitor.yml" in out and "FAILED" not in out


@needs_promtool
def test_promtool_unit_tests_of_the_alert_rules_pass():
    out = _run(promtool_binary(), "test", "rules", "tests/rules_test.yml")
    assert "SUCCESS" in out


@pytest.mark.skipif(amtool_binary() is None, reason="amtool is not installed (prometheus-alertmanager has it)")
def test_amtool_checks_the_alertmanager_example():
    out = _run(amtool_binary(), "check-config", "alertmanager.yml")
    assert "SUCCESS" in out and "2 receivers" in out


class _Receiver:
    """deploy/prometheus/webhook_receiver.py as a child process; what it printed, parsed."""

    def __init__(self, tmp_path, secret: str) -> None:
        self.port = free_port()
        self.out = tmp_path / "receiver.out"
        self.proc = subprocess.Popen([sys.executable, str(PROM / "webhook_receiver.py"), "--port", str(self.port),
                                      "--secret", secret], stdout=open(self.out, "w"), stderr=subprocess.PIPE)

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.out.read_text().splitlines() if x.strip()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def example_receiver(tmp_path, wait_until):
    rx = _Receiver(tmp_path, "k3y")
    wait_until(lambda: b"listening" in rx.proc.stderr.readline(), 10, "webhook_receiver.py did not start")
    yield rx
    rx.stop()


@pytest.mark.skipif(alertmanager_binary() is None, reason="prometheus-alertmanager is not installed")
def test_the_example_routing_pages_the_example_receiver(tmp_path, example_receiver, wait_until):
    # the example configuration with the receiver's port and a short group_wait (the test's own time)
    doc = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    for r in doc["receivers"]:
        for hook in r["webhook_configs"]:
            hook["url"] = hook["url"].replace("127.0.0.1:9999", f"127.0.0.1:{example_receiver.port}")
    for route in (doc["route"], *doc["route"]["routes"]):
        route["group_wait"], route["group_interval"] = "1s", "1s"
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(doc))
    home = tmp_path / "am"
    am = Alertmanager(PlatformSettings(home=home, alertmanager_config=config), ProcessTable(home / "run"),
                      port=free_port())
    am.start()
    try:
        am.wait_ready(30)
        ch = C.AlertmanagerChannel(am.url, timeout_s=5, resend_s=60)
        page = Alert(name="CtrRegression", labels={"model": "ranker", "version": "4"}, severity="page",
                     starts_ms=C.now_ms(), summary="CTR fell 20%")
        ch.send([page])
        got = wait_until(lambda: [x for x in example_receiver.lines() if x["status"] == "firing"], 30,
                         lambda: example_receiver.lines() or am.log_path.read_text()[-2000:])
        assert got[0]["path"] == "/hooks/page" and got[0]["labels"]["alertname"] == "CtrRegression"
        assert got[0]["summary"] == "CTR fell 20%"
        ch.send([page.resolve(C.now_ms())])
        wait_until(lambda: [x for x in example_receiver.lines() if x["status"] == "resolved"], 30,
                   lambda: example_receiver.lines())
    finally:
        am.table.stop(am.name, timeout=10)


def test_the_example_receiver_takes_signed_monitor_webhooks_and_refuses_others(example_receiver, wait_until):
    url = f"http://127.0.0.1:{example_receiver.port}/hooks/monitor"
    alert = Alert(name="FeatureDrift", labels={"feature": "price"}, starts_ms=C.now_ms(), summary="price drifted")
    C.WebhookChannel(url, secret="k3y").send([alert])
    wait_until(lambda: example_receiver.lines(), 10, "nothing printed")
    assert example_receiver.lines()[0]["labels"]["feature"] == "price"
    with pytest.raises(C.ChannelRejected, match="HTTP 401"):
        C.WebhookChannel(url, secret="not-the-key").send([alert])
    with pytest.raises(C.ChannelRejected, match="HTTP 401"):
        C.WebhookChannel(url).send([alert])  # unsigned
    assert len(example_receiver.lines()) == 1  # the refusals were answered before send() returned
