"""Debian packages the platform needs from the system (redis-server; the native load generator's
libgrpc++-dev): installed with apt-get when missing and running as root, else a clear error."""

from __future__ import annotations

import os
import subprocess

from recpilot.stack.process import StackError


_updated = False  # `apt-get update` ran in this process: the next install needs none


def apt_install(packages: list[str], why: str, recommends: bool = True) -> None:
    """``apt-get update && apt-get install -y PACKAGES`` (the update once per process: `recpilot
    setup` installs three sets); StackError saying how to do it by hand when not root or when
    apt-get fails. ``why`` names what needs them, for the message; without ``recommends``, only the
    packages and what they depend on."""
    hint = f"sudo apt-get update && sudo apt-get install -y {' '.join(packages)}"
    if os.geteuid() != 0:
        raise StackError(f"{why} not found. Install it with: {hint}")
    global _updated
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", *([] if recommends else ["--no-install-recommends"]), *packages]
    for cmd in ([] if _updated else [["apt-get", "update", "-q"]]) + [install]:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        except FileNotFoundError:
            raise StackError(f"{why} not found and apt-get is not available. Install it with: {hint}") from None
        if res.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
        if cmd[1] == "update":
            _updated = True
