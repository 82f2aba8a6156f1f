"""A private redis-server for fault tests that take Redis down or make it refuse writes, so that the
shared test Redis is never touched."""

from __future__ import annotations

import socket
import subprocess
import time

from recpilot.stack.redis import redis_server_binary


class PrivateRedis:
    """``redis-server`` on ``port`` with its files in ``workdir`` (AOF, fsync always, no snapshots);
    ``extra`` arguments are appended to the command line (later ones win)."""

    def __init__(self, workdir, port: int, *extra: str) -> None:
        self.workdir, self.port, self.extra, self.proc = workdir, port, extra, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
