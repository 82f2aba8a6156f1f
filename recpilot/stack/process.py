"""Detached processes tracked by pid file, safe against pid reuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


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
        self.path(name).unlink(missing_ok=True)
        return outcome


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
