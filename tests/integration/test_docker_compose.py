"""docker-compose.yml as docker-compose itself reads it (skipped where docker-compose is not
installed: `recpilot setup` installs Debian's docker-compose when root; tests/unit/test_deploy_files.py
checks the file's structure everywhere)."""

import os
import shutil
import subprocess

import pytest
import yaml

from recpilot.paths import REPO_ROOT
from recpilot.stack.manager import services


def _config(*extra: str) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed here (`recpilot setup` installs it when root); "
                    "tests/unit/test_deploy_files.py still checks the file")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "GRAFANA_"))}
    return subprocess.run([exe, "-f", str(REPO_ROOT / "docker-compose.yml"), "config", *extra],
                          capture_output=True, text=True, timeout=120, env=env)


def test_compose_file_validates_with_docker_compose_when_installed():
    """`docker-compose config` (Debian's docker-compose) parses the file."""
    res = _config("-q")
    assert res.returncode == 0, res.stderr


def test_resolved_compose_publishes_on_loopback_and_gates_every_service_on_health():
    """The file as docker-compose resolves it (anchors merged, ports normalised): every published port
    on 127.0.0.1, every bind mount an existing path of the checkout, every service started after
    Kafka and Redis are healthy and the topics created, the monitor after Alertmanager."""
    res = _config()
    assert res.returncode == 0, res.stderr
    svc = yaml.safe_load(res.stdout)["services"]
    published = [(name, p) for name, s in svc.items() for p in s.get("ports", [])]
    assert len(published) >= 10
    for name, port in published:
        host_ip = port.split(":")[0] if isinstance(port, str) else port.get("host_ip")
        assert host_ip == "127.0.0.1", (name, port)
    for name, s in svc.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("/"):
                assert os.path.exists(src), (name, src)
    for spec in services():
        deps = svc[spec.name]["depends_on"]
        assert deps["kafka"]["condition"] == deps["redis"]["condition"] == "service_healthy", spec.name
        assert deps["topics"]["condition"] == "service_completed_successfully", spec.name
        assert svc[spec.name]["healthcheck"]["test"], spec.name
    assert svc["monitor"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert svc["monitor"]["environment"]["RECPILOT_MONITOR_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    assert svc["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin"  # the default, loopback only
