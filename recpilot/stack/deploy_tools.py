"""The tools the deployment tests run: Debian's ``docker-compose`` (``docker-compose config`` checks
docker-compose.yml) and ``kubernetes-client`` (``kubectl kustomize`` renders deploy/k8s). `recpilot
setup` installs the missing ones with apt-get when it runs as root, without recommends (docker-compose
recommends docker.io, a Docker engine, which the checks do not need); elsewhere it says how, and the
tests that need them skip. Both are optional: nothing at run time uses them."""

from __future__ import annotations

import os
import shutil

from recpilot.stack.apt import apt_install
from recpilot.stack.process import StackError

# executable -> the Debian package that has it
PACKAGES = {"docker-compose": "docker-compose", "kubectl": "kubernetes-client"}


def _binary(name: str) -> str | None:
    return shutil.which(name) or (os.path.exists(f"/usr/bin/{name}") and f"/usr/bin/{name}") or None


def ensure_installed() -> str:
    """Install the missing tools (root only); one line saying what is there. Never raises."""
    missing = [pkg for exe, pkg in PACKAGES.items() if _binary(exe) is None]
    if missing:
        try:
            apt_install(missing, f"{' and '.join(missing)} (optional: the deployment file checks)", recommends=False)
        except StackError as exc:
            return f"not installed ({str(exc).splitlines()[0]})"
    found = {exe: _binary(exe) for exe in PACKAGES}
    line = ", ".join(path or f"{exe} missing" for exe, path in found.items())
    return f"installed: {line}" if missing else line
