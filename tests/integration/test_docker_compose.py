"""docker-compose.yml as docker-compose itself reads it (skipped where docker-compose is not
installed; tests/unit/test_deploy_files.py checks the file's structure everywhere)."""

import shutil
import subprocess

import pytest

from recpilot.paths import REPO_ROOT


def test_compose_file_validates_with_docker_compose_when_installed():
    """`docker-compose config` (Debian's docker-compose) parses the file."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed here; tests/unit/test_deploy_files.py still checks the file")
    res = subprocess.run([exe, "-f", str(REPO_ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
