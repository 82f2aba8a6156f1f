"""`recpilot setup` installs docker-compose and kubectl (Debian packages) for the deployment checks."""

from recpilot.stack import deploy_tools as dt
from recpilot.stack.process import StackError


def _fake(monkeypatch, present: set[str]):
    monkeypatch.setattr(dt, "_binary", lambda name: f"/usr/bin/{name}" if name in present else None)
    asked = []

    def install(packages, why, recommends=True):
        asked.append((list(packages), recommends))
        present.update(exe for exe, pkg in dt.PACKAGES.items() if pkg in packages)

    monkeypatch.setattr(dt, "apt_install", install)
    return asked


def test_nothing_is_installed_when_both_are_there(monkeypatch):
    asked = _fake(monkeypatch, {"docker-compose", "kubectl"})
    assert dt.ensure_installed() == "/usr/bin/docker-compose, /usr/bin/kubectl"
    assert asked == []


def test_only_the_missing_package_is_installed_without_recommends(monkeypatch):
    asked = _fake(monkeypatch, {"docker-compose"})
    assert dt.ensure_installed() == "installed: /usr/bin/docker-compose, /usr/bin/kubectl"
    assert asked == [(["kubernetes-client"], False)]  # not docker.io, which docker-compose recommends


def test_a_refused_install_is_a_line_not_an_error(monkeypatch):
    monkeypatch.setattr(dt, "_binary", lambda name: None)

    def refuse(packages, why, recommends=True):
        raise StackError(f"{why} not found. Install it with: sudo apt-get install -y {' '.join(packages)}")

    monkeypatch.setattr(dt, "apt_install", refuse)
    line = dt.ensure_installed()
    assert line.startswith("not installed (") and "sudo apt-get install -y docker-compose kubernetes-client" in line
