"""deploy/k8s as `kubectl kustomize` renders it: the base and the production overlay (skipped only
where kubectl is not installed; `recpilot setup` installs Debian's kubernetes-client when root).

Every object has its required fields and DNS-1123 names; every service `recpilot up` runs has a
workload whose probes reach its real ports; every reference (ConfigMap, Secret, claim, Service
selector, HPA and PDB target) resolves; every setting handed to a container is a field of a settings
class; the overlay gives every container requests and limits and scales inference with an HPA."""

from __future__ import annotations

import base64
import importlib
import shutil
import subprocess

import pytest
import yaml

from recpilot.paths import REPO_ROOT
from recpilot.stack.manager import services
from tests.unit.test_deploy_files import DNS_1123_LABEL, _k8s_names

K8S = REPO_ROOT / "deploy" / "k8s"
NAMESPACE = "recpilot"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CLUSTER_SCOPED = ("Namespace",)


def _render(path) -> list[dict]:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl is not installed here (`recpilot setup` installs kubernetes-client when root)")
    res = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    assert docs
    return docs


@pytest.fixture(scope="module", params=["base", "overlays/production"])
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, _render(K8S / request.param)


@pytest.fixture(scope="module")
def production() -> list[dict]:
    return _render(K8S / "overlays" / "production")


def _by_kind(docs, kind) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _workloads(docs) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def _containers(doc) -> list[dict]:
    return doc["spec"]["template"]["spec"]["containers"]


def _module(container) -> str:
    cmd = container["command"]
    return cmd[cmd.index("-m") + 1]


def _settings_fields() -> set[str]:
    """RECPILOT_... of every settings field (the platform's and each service's)."""
    from recpilot.settings import PlatformSettings

    classes = [PlatformSettings]
    for spec in services():
        mod, cls = spec.settings.split(":")
        classes.append(getattr(importlib.import_module(mod), cls))
    names = set()
    for c in classes:
        for field, info in c.model_fields.items():
            names.add(info.alias.upper() if info.alias else (c.model_config.get("env_prefix") or "").upper() + field.upper())
    return names


def test_every_object_has_its_required_fields_and_dns_1123_names(rendered):
    where, docs = rendered
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        name = doc["metadata"]["name"]
        assert DNS_1123_LABEL.match(name), f"{where}: {doc['kind']} {name!r}"
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{where}: {doc['kind']}/{name} has no namespace"
        for path, value in _k8s_names(doc):
            if path.endswith(".metric.name") or path.endswith("resource.name") or ".env[" in path:
                continue
            if path.startswith(".metadata.labels.") and "/" in path:
                continue  # a prefixed label's value (checked by the apiserver, not a name)
            assert DNS_1123_LABEL.match(value), f"{where}: {doc['kind']}/{name}: {path} = {value!r}"
    for w in _workloads(docs):
        spec = w["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), w["metadata"]["name"]
        assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert spec["template"]["spec"]["securityContext"]["runAsUser"] != 0
        for c in _containers(w):
            assert c["image"] and c["command"][:2] == ["python", "-m"], c["name"]
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["metrics"] and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"] >= 1


def test_every_service_has_a_workload_with_probes_on_its_real_ports(rendered):
    """Readiness on /readyz of the service's metrics port, inference's on the gRPC health service
    (the `grpc` probe on its gRPC port); liveness on /healthz; Prometheus's annotation on that port."""
    where, docs = rendered
    by_module = {}
    for w in _workloads(docs):
        for c in _containers(w):
            by_module.setdefault(_module(c), []).append((w, c))
    assert set(by_module) == {spec.module for spec in services()}, where
    for spec in services():
        port = spec.http_port()
        for w, c in by_module[spec.module]:
            name = f"{where}: {w['metadata']['name']}"
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert ports["http"] == port, name
            assert w["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port), name
            live = c["livenessProbe"]["httpGet"]
            assert live["path"] == "/healthz" and live["port"] in ("http", port), name
            ready = c["readinessProbe"]
            if spec.name == "inference":
                from services.inference.settings import InferenceSettings
                from recpilot.settings import load

                grpc_port = load(InferenceSettings).grpc_port
                assert ready["grpc"]["port"] == grpc_port == ports["grpc"], name
            else:
                assert ready["httpGet"]["path"] == "/readyz" and ready["httpGet"]["port"] in ("http", port), name


def test_every_reference_resolves(rendered):
    """ConfigMaps and Secrets in envFrom/env (a Secret made out of band must be optional), claims,
    the Services' selectors and target ports, the HPA's and the PDBs' targets."""
    where, docs = rendered
    configmaps, secrets = _by_kind(docs, "ConfigMap"), _by_kind(docs, "Secret")
    claims = set(_by_kind(docs, "PersistentVolumeClaim"))
    for w in _workloads(docs):
        pod = w["spec"]["template"]["spec"]
        templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])} | templates
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, (where, v)
        for c in pod["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in configmaps, (where, src)
                else:
                    ref = src["secretRef"]
                    assert ref["name"] in secrets or ref.get("optional"), (where, src)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets or ref.get("optional"), (where, e)
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (where, m)
    pods = [w["spec"]["template"] for w in _workloads(docs)]
    for svc in _by_kind(docs, "Service").values():
        if svc["spec"].get("type") == "ExternalName":
            assert svc["spec"]["externalName"]
            continue
        matched = [p for p in pods if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        assert matched, (where, svc["metadata"]["name"])
        names = {p["name"] for t in matched for c in t["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in names, (where, p)
    for pdb in _by_kind(docs, "PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert [p for p in pods if sel.items() <= p["metadata"]["labels"].items()], (where, pdb["metadata"]["name"])
    deployments = _by_kind(docs, "Deployment")
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler").values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, (where, ref)


def test_every_setting_handed_to_a_container_is_a_settings_field(rendered):
    """A typo in a ConfigMap, a Secret or an env entry would be ignored by the service, or refused at
    start-up by its extra="forbid" settings: caught here instead."""
    where, docs = rendered
    fields = _settings_fields()
    keys = set()
    for cm in _by_kind(docs, "ConfigMap").values():
        keys |= set(cm.get("data", {}))
    for s in _by_kind(docs, "Secret").values():
        keys |= set(s.get("data", {})) | set(s.get("stringData", {}))
        for value in s.get("data", {}).values():
            base64.b64decode(value)
    for w in _workloads(docs):
        keys |= {e["name"] for c in _containers(w) for e in c.get("env", [])}
    assert len(keys) >= 6
    assert keys <= fields, f"{where}: not settings: {sorted(keys - fields)}"


def test_kafka_and_redis_are_external_services_the_settings_point_at(rendered):
    where, docs = rendered
    env = next(cm for name, cm in _by_kind(docs, "ConfigMap").items() if name.startswith("recpilot-env"))["data"]
    external = {n: s for n, s in _by_kind(docs, "Service").items() if s["spec"].get("type") == "ExternalName"}
    kafka_host, kafka_port = env["RECPILOT_KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)
    redis_hostport = env["RECPILOT_REDIS_URL"].split("://", 1)[1].split("/", 1)[0]
    redis_host, redis_port = redis_hostport.rsplit(":", 1)
    for host, port in ((kafka_host, kafka_port), (redis_host, redis_port)):
        assert host in external, f"{where}: {host} is not an ExternalName Service"
        assert int(port) in {p["port"] for p in external[host]["spec"]["ports"]}


def test_network_policies_deny_by_default_and_open_what_the_loop_needs(rendered):
    where, docs = rendered
    policies = list(_by_kind(docs, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, where

    def ingress_ports(component):
        out = set()
        for p in policies:
            sel = p["spec"]["podSelector"].get("matchLabels", {})
            if sel.get("app") == "recpilot" and sel.get("component", component) == component:
                out |= {port["port"] for rule in p["spec"].get("ingress", []) for port in rule.get("ports", [])}
        return out

    egress = {port["port"] for p in policies if p["spec"]["podSelector"].get("matchLabels") == {"app": "recpilot"}
              for rule in p["spec"].get("egress", []) for port in rule.get("ports", [])}
    from services.inference.settings import InferenceSettings
    from recpilot.settings import load

    assert load(InferenceSettings).grpc_port in ingress_ports("inference")
    for spec in services():
        assert "http" in ingress_ports(spec.name.replace("_", "-")), spec.name  # /metrics from Prometheus
    assert {53, 9092, 6379} <= egress


def test_production_overlay_sets_replicas_resources_hpa_and_pdbs(production):
    workloads = _workloads(production)
    for w in workloads:
        for c in _containers(w):
            res = c.get("resources", {})
            assert {"cpu", "memory"} <= set(res.get("requests", {})), (w["metadata"]["name"], res)
            assert "memory" in res.get("limits", {}), (w["metadata"]["name"], res)
            assert c["image"].rsplit(":", 1)[-1] not in ("", "latest") and ":" in c["image"], c["image"]
    hpa = _by_kind(production, "HorizontalPodAutoscaler")["inference"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert hpa["spec"]["minReplicas"] >= 2
    pdbs = _by_kind(production, "PodDisruptionBudget").values()
    for w in workloads:
        labels = w["spec"]["template"]["metadata"]["labels"]
        replicated = w["metadata"]["name"] == "inference" or w["spec"].get("replicas", 1) > 1
        covered = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert bool(covered) == replicated, w["metadata"]["name"]  # a one-replica PDB would block every drain
    secret = _by_kind(production, "Secret")
    monitor = next(s for n, s in secret.items() if n.startswith("recpilot-monitor"))
    assert "RECPILOT_MONITOR_ALERTMANAGER_URL" in monitor["data"]
    assert base64.b64decode(monitor["data"]["RECPILOT_MONITOR_ALERTMANAGER_URL"]).decode().startswith("http")


def test_base_runs_one_replica_of_each_without_an_hpa():
    docs = _render(K8S / "base")
    assert all(w["spec"].get("replicas", 1) == 1 for w in _workloads(docs))
    assert not _by_kind(docs, "HorizontalPodAutoscaler")
