"""deploy/prometheus without running Prometheus: the rules read only what the services export, every
service has rules and a scrape job, every alert is routable (severity, service, summary). promtool
and amtool check the same files for real in tests/integration/test_prometheus_rules.py."""

from __future__ import annotations

import yaml

from recpilot.paths import REPO_ROOT
from recpilot.topics import METRICS_SERVICES
from tests.support.prometheus import SCRAPE_LABELS, check_expr, exported_families

PROM = REPO_ROOT / "deploy" / "prometheus"


def _rule_files() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((PROM / "rules").glob("*.yml"))}


def _rules(kind: str | None = None) -> list[tuple[str, dict]]:
    out = []
    for stem, doc in _rule_files().items():
        for group in doc["groups"]:
            for rule in group["rules"]:
                if kind is None or kind in rule:
                    out.append((stem, rule))
    return out


def test_every_service_has_a_rule_file_a_scrape_job_and_a_down_alert():
    files = _rule_files()
    assert set(METRICS_SERVICES) <= set(files), sorted(files)
    jobs = {job["job_name"] for job in yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]}
    assert set(METRICS_SERVICES) <= jobs
    downs = {rule["expr"] for _, rule in _rules("alert") if rule["alert"].endswith("Down")}
    for service in METRICS_SERVICES:
        assert f'up{{job="{service}"}} == 0' in downs, service
        assert any(f"recpilot_{service}_" in rule["expr"] for stem, rule in _rules() if stem == service), service


def test_rules_read_only_metrics_and_labels_the_services_export():
    families = exported_families()
    checked = sum(check_expr(rule["expr"], families, f"{stem}: {rule.get('alert') or rule.get('record')}",
                             SCRAPE_LABELS) for stem, rule in _rules())
    assert checked >= 60


def test_recorded_series_are_defined_before_they_are_read():
    recorded = {rule["record"] for _, rule in _rules("record")}
    import re

    for stem, rule in _rules():
        for name in re.findall(r"\b[a-z_]+:[a-zA-Z0-9_:]+", rule["expr"]):
            assert name in recorded, f"{stem}: {name} is read but no rule records it"


def test_every_alert_has_a_severity_a_service_and_a_summary():
    alerts = _rules("alert")
    assert len(alerts) >= 30
    for stem, rule in alerts:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["labels"]["service"] == stem, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_alertmanager_example_routes_pages_and_tickets_to_webhooks():
    doc = yaml.safe_load((PROM / "alertmanager.yml").read_text())
    routes = {r["matchers"][0]: r["receiver"] for r in doc["route"]["routes"]}
    assert routes == {'severity="page"': "ops-page", 'severity="ticket"': "ops-ticket"}
    receivers = {r["name"]: r for r in doc["receivers"]}
    for name in routes.values():
        [hook] = receivers[name]["webhook_configs"]
        assert hook["send_resolved"] is True and hook["url"].startswith("http://127.0.0.1:9999/hooks/")


def test_prometheus_loads_the_rule_files_and_sends_to_the_stack_alertmanager():
    from recpilot.settings import PlatformSettings

    doc = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["rules/*.yml"]
    [am] = doc["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == [f"127.0.0.1:{PlatformSettings.model_fields['alertmanager_port'].default}"]


def test_the_dashboard_covers_the_whole_loop_without_overlapping_panels():
    import json

    dash = json.loads((REPO_ROOT / "deploy" / "grafana" / "dashboards" / "recpilot.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for series in ("recpilot_monitor_drift", "recpilot_monitor_ctr", "recpilot_monitor_alerts_total",
                   "recpilot_monitor_actions_total", "recpilot_monitor_channel_queue", "recpilot_rl_feedback_rewards_total",
                   "recpilot_inference_requests_total", "recpilot_ingest_events_received_total",
                   "recpilot_features_events_total"):
        assert series in exprs, series
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
