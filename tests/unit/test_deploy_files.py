"""docker-compose.yml and the Kubernetes manifests say what the local stack does."""

import importlib.util
import re

import yaml

from recpilot.paths import REPO_ROOT
from recpilot.stack.manager import SERVICES as STACK_SERVICES

SERVICES = tuple(s.name for s in STACK_SERVICES)  # what `recpilot up` starts
# RFC 1123 label (a Kubernetes object name, a container name, a label value used as a name)
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def _k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((REPO_ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    return docs


def _service_module(command: list[str]) -> str | None:
    """``services.X`` of a ``python -m services.X`` command, else None."""
    if "-m" in command:
        module = command[command.index("-m") + 1]
        if module.startswith("services."):
            return module
    return None


def test_compose_declares_the_stack_with_health_gates():
    svc = _compose()["services"]
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


def test_compose_starts_exactly_the_services_of_the_local_stack():
    svc = _compose()["services"]
    started = {name for name, s in svc.items() if _service_module(s.get("command", []))}
    assert started == set(SERVICES)


def test_compose_publishes_ports_on_loopback_only():
    published = 0
    for name, s in _compose()["services"].items():
        for port in s.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            published += 1
    assert published >= 6


def test_k8s_manifests_cover_every_service():
    docs = _k8s_docs()
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert deployments == {s.replace("_", "-") for s in SERVICES}  # a Kubernetes name has no underscore
    assert any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)


def _k8s_names(node, path="") -> list[tuple[str, str]]:
    """Every ``name`` (object, container, port, volume, claim, reference) in a manifest."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("name", "claimName") and isinstance(value, str):
                found.append((f"{path}.{key}", value))
            elif key == "labels" and isinstance(value, dict):
                found += [(f"{path}.labels.{k}", v) for k, v in value.items() if isinstance(v, str)]
            else:
                found += _k8s_names(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _k8s_names(value, f"{path}[{i}]")
    return found


def test_every_k8s_name_is_a_dns_1123_label():
    checked = 0
    for doc in _k8s_docs():
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        for path, name in _k8s_names(doc):
            if path.endswith(".metric.name") or (doc["kind"] == "HorizontalPodAutoscaler" and path.endswith("resource.name")):
                continue  # a Prometheus metric or a resource (cpu), not an object name
            if ".env[" in path:
                continue  # an environment variable, not an object name
            assert DNS_1123_LABEL.match(name), f"{where}: {path} = {name!r} is not a DNS-1123 name"
            checked += 1
    assert checked >= 20
    assert not DNS_1123_LABEL.match("rl_feedback")  # the check rejects an underscore


def test_every_service_command_runs_an_existing_service_main():
    commands = [(f"compose {name}", s.get("command", [])) for name, s in _compose()["services"].items()]
    for doc in _k8s_docs():
        for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            commands.append((f"k8s {doc['metadata']['name']}/{c['name']}", c.get("command", [])))
    modules = [(where, _service_module(cmd)) for where, cmd in commands]
    modules = [(where, m) for where, m in modules if m]
    assert len(modules) >= 2 * len(SERVICES)
    for where, module in modules:
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{where}: {module} has no __main__"


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
    import json

    from tests.support.prometheus import SCRAPE_LABELS, check_expr, exported_families

    families = exported_families()
    paths = sorted((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert paths
    checked = 0
    for path in paths:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                checked += check_expr(target["expr"], families, f"{path.name} '{panel['title']}'", SCRAPE_LABELS)
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
