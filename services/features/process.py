"""Run the features worker (`python -m services.features`) as a child process: for the benchmark,
the integration and fault tests. The child inherits the environment plus the given overrides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class WorkerProcess:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "RECPILOT_FEATURES_HTTP_PORT": "0", **env}
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.port = None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.features"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _find_port(self) -> int | None:
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            for line in f:
                if b'"features starting"' in line:
                    try:
                        return int(json.loads(line)["http_port"])
                    except (ValueError, KeyError):
                        return None
        return None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, repr(e)

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"features worker exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
            if self.port is None:
                self.port = self._find_port()
            elif self.get("/readyz")[0] == 200:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"features worker not ready after {timeout}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit status."""
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

    def cpu_seconds(self) -> float:
        """user + system CPU time of the worker so far."""
        from recpilot.benchutil import process_cpu

        return process_cpu(self.proc.pid) if self.proc is not None else 0.0

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS:") / 1024

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM:") / 1024

    def _status_kb(self, key: str) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1])
        except (OSError, AttributeError):
            pass
        return 0
