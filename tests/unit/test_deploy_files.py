"""docker-compose.yml and the Kubernetes manifests say what the local stack does."""

import shutil
import subprocess

import pytest
import yaml

from recpilot.paths import REPO_ROOT

SERVICES = ("ingest", "features", "inference", "rl_feedback", "monitor")


def test_compose_declares_the_stack_with_health_gates():
    doc = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    svc = doc["services"]
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    assert svc["redis"]["image"].startswith("redis:")
    assert "--appendonly" in svc["redis"]["command"]
    for name in ("kafka", "redis", *SERVICES):
        assert "healthcheck" in svc[name], name
    for name in SERVICES:
        s = svc[name]
        assert s["command"][-1] == f"services.{name}"
        deps = s["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert s["environment"]["RECPILOT_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_compose_file_validates_with_docker_compose_when_installed():
    """`docker-compose config` (Debian's docker-compose) parses the file; the structural test above always runs."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed here; the structural test above still checks the file")
    res = subprocess.run([exe, "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_k8s_manifests_cover_every_service():
    docs = []
    for path in sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == set(SERVICES)
    assert any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)


def test_local_prometheus_targets_do_not_collide_with_the_local_stack_ports():
    from recpilot.settings import PlatformSettings

    doc = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    alert = {t for am in doc["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]}
    scraped = {t for job in doc["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    d = PlatformSettings.model_fields
    stack_ports = {d["kafka_port"].default, d["kafka_controller_port"].default, d["redis_port"].default, 50051}
    alert_ports = {int(t.rsplit(":", 1)[1]) for t in alert}
    assert not alert_ports & stack_ports, f"Alertmanager target {alert} is a port of the local stack"
    from recpilot.stack.manager import services

    scraped_ports = {int(t.rsplit(":", 1)[1]) for t in scraped}
    assert {spec.http_port() for spec in services()} <= scraped_ports  # every runnable service is scraped


def test_grafana_dashboard_queries_only_metrics_and_labels_the_services_export():
    """Every recpilot_* series in deploy/grafana/dashboards/*.json is declared by a service's
    metrics module, with the labels the query groups by (a renamed metric breaks this test, not
    the ops dashboard in production)."""
    import importlib
    import json
    import re

    from prometheus_client import REGISTRY

    for mod in ("services.ingest.metrics", "services.features.metrics", "services.inference.metrics",
                "recpilot.models.deployments"):
        importlib.import_module(mod)
    families = {}  # sample name -> label names
    for fam in REGISTRY.collect():
        if not fam.name.startswith("recpilot_"):
            continue
        labels = set()
        collector = REGISTRY._names_to_collectors.get(fam.name) or REGISTRY._names_to_collectors.get(fam.name + "_total")
        if collector is not None:
            labels = set(getattr(collector, "_labelnames", ()))
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
                    "info": ("",)}.get(fam.type, ("",))
        for sfx in suffixes:
            families[fam.name + sfx] = labels | ({"le"} if sfx == "_bucket" else set())
    paths = sorted((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert paths
    checked = 0
    for path in paths:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name in re.findall(r"recpilot_[a-z0-9_]+", expr):
                    assert name in families, f"{path.name} '{panel['title']}': unknown metric {name}"
                    for grouped in re.findall(r"by \(([^)]*)\)", expr):
                        for label in (x.strip() for x in grouped.split(",")):
                            assert label in families[name], f"{panel['title']}: {name} has no label {label!r}"
                    checked += 1
    assert checked >= 30


def _copied_sources(dockerfile: str) -> list[str]:
    """The source paths of every COPY/ADD line (shell or JSON form, flags such as --chown skipped)."""
    import json
    import shlex

    text = dockerfile.replace("\\\n", " ")
    sources = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2 or words[0].upper() not in ("COPY", "ADD"):
            continue
        rest = words[1].strip()
        args = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        args = [a for a in args if not a.startswith("--")]
        sources += args[:-1]  # the last one is the destination
    return sources


def test_service_image_copies_no_harness():
    """The image holds what the services run: no benchmarks (bench/), no tests, not the whole
    checkout (`COPY . .` would bring both)."""
    sources = _copied_sources((REPO_ROOT / "deploy" / "docker" / "Dockerfile").read_text())
    assert {"recpilot", "services", "proto"} <= {s.strip("./") for s in sources}, sources
    for src in sources:
        top = src.lstrip("./").split("/", 1)[0]
        assert top not in ("", "*", "bench", "tests"), f"the service image must not copy {src!r}"


def test_copied_sources_reads_every_form():
    got = _copied_sources('FROM x\nCOPY --chown=a:b bench ./bench\nCOPY ["tests", "/t"]\nADD . /app\n'
                          'COPY a \\\n  b ./\nRUN cp x y\n')
    assert got == ["bench", "tests", ".", "a", "b"]
