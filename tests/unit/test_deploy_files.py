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
    """The objects and patches of deploy/k8s (the base and the overlays), as written; the rendered
    output is checked by tests/integration/test_k8s_manifests.py."""
    docs = []
    for path in sorted((REPO_ROOT / "deploy" / "k8s").rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    return docs


def test_every_k8s_file_is_in_its_kustomization():
    """A manifest that no kustomization.yaml lists is never deployed (nor checked when rendered)."""
    for kust in sorted((REPO_ROOT / "deploy" / "k8s").rglob("kustomization.yaml")):
        k = yaml.safe_load(kust.read_text())
        listed = set(k.get("resources", [])) | set(k.get("patchesStrategicMerge", []))
        listed |= {g[key] for gen in ("configMapGenerator", "secretGenerator") for g in k.get(gen, []) for key in ("env",) if key in g}
        files = {p.name for p in kust.parent.iterdir() if p.is_file() and p.name != "kustomization.yaml"}
        assert files == listed, f"{kust.relative_to(REPO_ROOT)}: not listed {sorted(files - listed)}, missing {sorted(listed - files)}"
        for base in k.get("bases", []):
            assert (kust.parent / base / "kustomization.yaml").exists(), base


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


def test_compose_runs_the_observability_stack_with_health_gates():
    """Prometheus (the compose config and the rules), Alertmanager (the repository's routing), Grafana
    (the dashboard and a data source provisioned), each health-checked and started after what it
    needs; the monitor posts to the compose Alertmanager."""
    svc = _compose()["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert "healthcheck" in svc[name], name
    assert svc["prometheus"]["image"].startswith("prom/prometheus:")
    assert svc["alertmanager"]["image"].startswith("prom/alertmanager:")
    assert svc["grafana"]["image"].startswith("grafana/")

    def mounts(name):  # container path -> repository path, for the bind mounts of the checkout
        out = {}
        for v in svc[name].get("volumes", []):
            src, dst = v.split(":")[:2]
            if src.startswith("./"):
                assert (REPO_ROOT / src).exists(), f"{name} mounts {src}, which does not exist"
                out[dst] = REPO_ROOT / src
        return out

    prom = mounts("prometheus")
    config = next(a for a in svc["prometheus"]["command"] if a.startswith("--config.file="))
    config = config.split("=", 1)[1]
    root = next(dst for dst in prom if config.startswith(dst + "/"))
    assert prom[root] / config[len(root) + 1:] == REPO_ROOT / "deploy" / "prometheus" / "prometheus.compose.yml"
    am = mounts("alertmanager")
    am_config = next(a for a in svc["alertmanager"]["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    assert am[am_config] == REPO_ROOT / "deploy" / "prometheus" / "alertmanager.yml"
    graf = mounts("grafana")
    assert graf["/etc/grafana/provisioning/dashboards/recpilot.yaml"] == REPO_ROOT / "deploy" / "grafana" / "provisioning.yaml"
    provider = yaml.safe_load((REPO_ROOT / "deploy" / "grafana" / "provisioning.yaml").read_text())["providers"][0]
    assert graf[provider["options"]["path"]] == REPO_ROOT / "deploy" / "grafana" / "dashboards"
    ds = next(p for d, p in graf.items() if d.startswith("/etc/grafana/provisioning/datasources/"))
    source = yaml.safe_load(ds.read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert svc["monitor"]["environment"]["RECPILOT_MONITOR_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    assert svc["monitor"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert svc["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert svc["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_prometheus_scrapes_the_compose_services_as_the_local_one_scrapes_the_stack():
    """prometheus.compose.yml: the jobs and rules of prometheus.yml, each job on its compose service
    name and the service's metrics port, alerts to the compose Alertmanager."""
    from recpilot.stack.manager import services

    prom = REPO_ROOT / "deploy" / "prometheus"
    local = yaml.safe_load((prom / "prometheus.yml").read_text())
    compose = yaml.safe_load((prom / "prometheus.compose.yml").read_text())
    assert compose["rule_files"] == local["rule_files"]
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in compose["scrape_configs"]}
    assert set(targets) == {job["job_name"] for job in local["scrape_configs"]}
    svc = _compose()["services"]
    for spec in services():
        assert targets[spec.name] == [f"{spec.name}:{spec.http_port()}"], spec.name
        assert spec.name in svc
        assert svc[spec.name]["environment"]["HEALTH_PORT"] == str(spec.http_port())
    alert = [t for am in compose["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert alert == ["alertmanager:9093"] and "alertmanager" in svc


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
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"} == {"rl-learner"}
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


def _pip_installs(text: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in a Makefile or a Dockerfile (continuations joined)."""
    import shlex

    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part.split("#", 1)[0]) if "install" in part else []
            for i, w in enumerate(words[:-1]):
                if w.split("/")[-1] in ("pip", "$(PIP)", "pip3") and words[i + 1] == "install":
                    found.append(words[i + 2:])
    return found


_VALUED = ("-c", "--python", "-r")  # options whose value is the next word


def _constraints_and_package(args: list[str]) -> tuple[str, str]:
    """(the constraints file, the package path without extras) of one ``pip install`` line."""
    constraints = args[args.index("-c") + 1]
    rest = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] not in _VALUED]
    assert len(rest) == 1, args
    return constraints, rest[0].split("[", 1)[0]


def _project_installs(text: str) -> list[list[str]]:
    """The ``pip install`` (or ``uv pip install``) lines that install the project itself."""
    return [a for a in _pip_installs(text)
            if any(w == "." or w.startswith(".[") for i, w in enumerate(a) if a[i - 1] not in _VALUED)]


def test_image_installs_the_package_and_constraints_of_make_setup():
    """The Dockerfile's one install of the project is the Makefile's: the same constraints file and
    the same package (the image leaves out the test extra and the editable install), and it copies
    what that install reads."""
    make = _project_installs((REPO_ROOT / "Makefile").read_text())
    dockerfile = (REPO_ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    image = _project_installs(dockerfile)
    assert len(make) == 1 and len(image) == 1, (make, image)
    assert _constraints_and_package(image[0]) == _constraints_and_package(make[0]) == ("constraints.txt", ".")
    sources = {s.strip("./") for s in _copied_sources(dockerfile)}
    assert {"pyproject.toml", "constraints.txt", "README.md"} <= sources


def test_image_is_multi_stage_and_runs_as_a_non_root_user():
    lines = [ln.split() for ln in (REPO_ROOT / "deploy" / "docker" / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln for ln in lines if ln[0].upper() == "FROM"]
    assert len(froms) >= 2
    stage = froms[0][froms[0].index("AS") + 1] if "AS" in froms[0] else None
    assert stage and any(f"--from={stage}" in ln for ln in lines if ln[0].upper() == "COPY")
    users = [ln[1] for ln in lines if ln[0].upper() == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_from = max(i for i, ln in enumerate(lines) if ln[0].upper() == "FROM")
    assert any(ln[0].upper() == "USER" for ln in lines[last_from:]), "the runtime stage sets no USER"


def test_pip_installs_reads_makefile_and_dockerfile_forms():
    assert _pip_installs('\t$(PIP) install -q -c constraints.txt -e ".[test]"\n') == [["-q", "-c", "constraints.txt", "-e", ".[test]"]]
    assert _pip_installs("RUN /v/bin/pip install -c c.txt . \\\n && echo ok\n") == [["-c", "c.txt", "."]]
    assert _constraints_and_package(["-q", "-c", "c.txt", "-e", ".[test]"]) == ("c.txt", ".")
    uv = '\t$(PIP) install -q -c constraints.txt uv\n\t$(UV) pip install -q --python $(PY) -c constraints.txt -e ".[test]"\n'
    assert _project_installs(uv) == [["-q", "--python", "$(PY)", "-c", "constraints.txt", "-e", ".[test]"]]
    assert _constraints_and_package(_project_installs(uv)[0]) == ("constraints.txt", ".")


def test_copied_sources_reads_every_form():
    got = _copied_sources('FROM x\nCOPY --chown=a:b bench ./bench\nCOPY ["tests", "/t"]\nADD . /app\n'
                          'COPY a \\\n  b ./\nRUN cp x y\n')
    assert got == ["bench", "tests", ".", "a", "b"]
