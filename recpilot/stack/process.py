"""Processes of the platform: detached ones tracked by pid file, safe against pid reuse
(:class:`ProcessTable`, what `recpilot up` starts), and a service run as a child of this process
(:class:`ServiceProcess`, what benchmarks and tests start), both waited for on ``/readyz`` by
:func:`wait_http_ready`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from recpilot.errors import RecpilotError
from recpilot.paths import REPO_ROOT


class StackError(RecpilotError, RuntimeError):
    """A component could not be set up or did not become ready (message says why)."""


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (field 22 of /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces; it is wrapped in parentheses.
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[19])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@dataclass
class PidRecord:
    name: str
    pid: int
    start_ticks: int
    cmd: list[str]
    address: str
    log: str
    started_at: float

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks and not _is_zombie(self.pid)


class ProcessTable:
    """``<run_dir>/<name>.json`` per process that the stack started."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def get(self, name: str) -> PidRecord | None:
        try:
            return PidRecord(**json.loads(self.path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self, name: str) -> PidRecord | None:
        rec = self.get(name)
        return rec if rec is not None and rec.alive() else None

    def spawn(self, name: str, cmd: list[str], log_path: Path, address: str, env: dict | None = None, cwd: Path | None = None) -> PidRecord:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI; not killed by the terminal's ^C
                env=env,
                cwd=cwd,
            )
        ticks = _start_ticks(proc.pid) or 0
        rec = PidRecord(name, proc.pid, ticks, cmd, address, str(log_path), time.time())
        self.path(name).write_text(json.dumps(asdict(rec), indent=1))
        return rec

    def stop(self, name: str, timeout: float = 30.0) -> str:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns what happened."""
        rec = self.get(name)
        if rec is None:
            return "not started by recpilot"
        if not rec.alive():
            self.path(name).unlink(missing_ok=True)
            return "was not running"
        try:
            os.killpg(rec.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and rec.alive():
            _reap(rec.pid)
            time.sleep(0.1)
        outcome = "stopped"
        if rec.alive():
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while rec.alive():
                _reap(rec.pid)
                time.sleep(0.05)
            outcome = "killed after timeout"
        if not wait_group_gone(rec.pid, 10.0):  # what it forked and left behind holds its ports until gone
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_group_gone(rec.pid, 10.0)
        self.path(name).unlink(missing_ok=True)
        return outcome


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (field 5 of /proc/<pid>/stat)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def wait_group_gone(pgid: int, timeout: float = 20.0) -> bool:
    """Wait until no process of group ``pgid`` is left (True), at most ``timeout`` s. A leader killed
    with its group can leave a forked child (Redis's append-only rewrite, in a disk write) that
    holds the listening socket a moment longer: starting again before it is gone fails to bind."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (tests spawn in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(path: Path | str, lines: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-65536:]
    except OSError:
        return "(no log)"
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# -- waiting ------------------------------------------------------------------------------------


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of a GET; status 0 (and the error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        return 0, repr(exc)


def wait_started(name: str, log: Path | str, timeout: float, exited: Callable[[], str | None],
                 ready: Callable[[], bool], interval: float = 0.2) -> float:
    """Poll ``ready()`` until true; the seconds it took. ``exited()`` says why the process is gone
    (None while it runs). Raises :class:`StackError` with the last lines of
    ``log`` when the process exits first or ``timeout`` s pass."""

    t0 = time.monotonic()
    while True:
        why = exited()
        if why is not None:
            raise StackError(f"{name} {why} during start-up; last lines of {log}:\n{tail(log)}")
        if ready():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            raise StackError(f"{name} not ready after {timeout:.0f}s; last lines of {log}:\n{tail(log)}")
        time.sleep(interval)


def wait_http_ready(name: str, log: Path | str, timeout: float, exited: Callable[[], str | None],
                    address: Callable[[], str | None], interval: float = 0.2) -> float:
    """:func:`wait_started` until ``http://<address()>/readyz`` answers 200 (``address()`` is None
    until it is known)."""

    def ready() -> bool:
        addr = address()
        return addr is not None and http_get(f"http://{addr}/readyz", 1.0)[0] == 200

    return wait_started(name, log, timeout, exited, ready, interval)


# -- /proc readings -------------------------------------------------------------------------------


def stat_cpu(stat_path: str | Path) -> float | None:
    """user+system CPU seconds from a ``/proc/.../stat`` file (None when it is gone)."""
    try:
        with open(stat_path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """user+system CPU seconds of process ``pid`` so far (0.0 when it is gone)."""
    return stat_cpu(f"/proc/{pid}/stat") or 0.0


def children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them."""
    try:
        return sorted(int(x) for t in Path(f"/proc/{pid}/task").iterdir() for x in (t / "children").read_text().split())
    except OSError:
        return []


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` in MiB: current (``VmRSS``) or peak (``VmHWM``); 0.0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# -- a service as a child process --------------------------------------------------------------------


class ServiceProcess:
    """``python -m <module>`` (a recpilot service) as a child of this process, with its output in
    ``log_path``: for benchmarks and tests.

    ``settings`` become the service's ``RECPILOT_<NAME>_<KEY>`` variables (``services.ingest`` ->
    ``RECPILOT_INGEST_``), ``env`` is added verbatim, both over this process's environment. With no
    ``http_port`` the service picks a free one (``..._HTTP_PORT=0``), learnt from its
    "http server listening" log line. :meth:`wait_ready` polls ``/readyz`` with a deadline and fails
    with the log tail and exit code if the process dies first (a process not ready in time is
    killed).
    """

    def __init__(self, module: str, log_path: Path | str, *, settings: dict | None = None,
                 env: dict | None = None, http_port: int | None = None, cwd: Path = REPO_ROOT) -> None:
        self.module = module
        self.name = module.rsplit(".", 1)[-1]
        self.prefix = f"RECPILOT_{self.name.upper()}_"
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}),
                    **{self.prefix + k.upper(): str(v) for k, v in (settings or {}).items()}}
        if http_port is not None:
            self.env[self.prefix + "HTTP_PORT"] = str(http_port)
        elif self.prefix + "HTTP_PORT" not in (env or {}):
            self.env[self.prefix + "HTTP_PORT"] = "0"
        given = int(self.env[self.prefix + "HTTP_PORT"])
        self._fixed_port = given or None
        self.port: int | None = self._fixed_port
        self.proc: subprocess.Popen | None = None
        self._offset = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.port = self._fixed_port
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, cwd=self.cwd,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> ServiceProcess:
        def exited() -> str | None:
            if self.proc is None:
                return "was not started"
            rc = self.proc.poll()
            return None if rc is None else f"exited with code {rc}"

        try:
            wait_http_ready(self.name, self.log_path, timeout, exited, lambda: self.address, interval)
        except BaseException:
            self.kill9()  # never left running half-started
            raise
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None, "not started"
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        """SIGKILL, then wait until it is gone."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout``; SIGKILL if it does not stop in time. The exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    # -- HTTP ----------------------------------------------------------------------------------------
    @property
    def address(self) -> str | None:
        """``127.0.0.1:<http port>`` once known (read from the log after :meth:`start`)."""
        if self.port is None and self.proc is not None:
            self.port = self._logged_port()
        return None if self.port is None else f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        if self.address is None:
            raise RuntimeError(f"{self.name}: HTTP port not known yet (call wait_ready)")
        return f"http://{self.address}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """(status, body) of GET ``path`` on the service's HTTP port; 0 when nothing answers."""
        return http_get(self.base_url + path, timeout)

    def _logged_port(self) -> int | None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                for line in f:
                    if b'"http server listening"' in line:
                        try:
                            return int(json.loads(line)["address"].rsplit(":", 1)[1])
                        except (ValueError, KeyError, IndexError):
                            return None
        except OSError:
            pass
        return None

    # -- resources -------------------------------------------------------------------------------------
    def children(self) -> list[int]:
        return children(self.proc.pid) if self.proc is not None else []

    def cpu_seconds(self) -> float:
        """user+system CPU of the process and its children (workers) so far."""
        if self.proc is None:
            return 0.0
        return sum(process_cpu(pid) for pid in [self.proc.pid, *children(self.proc.pid)])

    def rss_mb(self) -> float:
        return memory_mb(self.proc.pid, "VmRSS") if self.proc is not None else 0.0

    def peak_rss_mb(self) -> float:
        return memory_mb(self.proc.pid, "VmHWM") if self.proc is not None else 0.0

    def log_tail(self, lines: int = 30) -> str:
        return tail(self.log_path, lines)
