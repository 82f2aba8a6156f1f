"""A real Redis server (Debian's ``redis-server``) with the append-only file on and a memory limit.

``maxmemory`` and ``maxmemory-policy`` come from ``RECPILOT_REDIS_MAXMEMORY`` (1gb) and
``RECPILOT_REDIS_MAXMEMORY_POLICY`` (volatile-lru): at the limit Redis evicts the least recently used
keys that have a TTL -- the features of idle users, which expire anyway -- and never an item count,
a popularity score or a stored offset (they have no TTL); once nothing can be evicted, writes fail
with OOM and the features worker retries them until memory is freed (readiness says so).
"""

from __future__ import annotations

import os
import shutil

from recpilot.settings import PlatformSettings
from recpilot.stack.apt import apt_install
from recpilot.stack.process import StackError
from recpilot.stack.process import PidRecord, ProcessTable, wait_started


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or (os.path.exists("/usr/bin/redis-server") and "/usr/bin/redis-server") or None


def ensure_installed() -> str:
    """Return the redis-server path, installing Debian's package when missing and root."""
    found = redis_server_binary()
    if found:
        return found
    apt_install(["redis-server"], "redis-server")
    found = redis_server_binary()
    if not found:
        raise StackError("apt-get installed redis-server but the binary is not on PATH")
    return found


class RedisServer:
    name = "redis"

    def __init__(self, settings: PlatformSettings, table: ProcessTable) -> None:
        self.s = settings
        self.table = table
        self.dir = settings.home / "redis"
        self.config = self.dir / "redis.conf"
        self.log_path = settings.home / "logs" / "redis.log"

    @property
    def address(self) -> str:
        return f"{self.s.redis_host}:{self.s.redis_port}"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "\n".join(
                [
                    f"bind {self.s.redis_host}",
                    f"port {self.s.redis_port}",
                    f"dir {self.dir}",
                    "daemonize no",
                    'logfile ""',
                    "appendonly yes",
                    "appendfsync everysec",
                    "appenddirname appendonly",
                    "save 3600 1",
                    "protected-mode yes",
                    f"maxmemory {self.s.redis_maxmemory}",
                    f"maxmemory-policy {self.s.redis_maxmemory_policy}",
                    "",
                ]
            )
        )

    def start(self) -> PidRecord:
        running = self.table.running(self.name)
        if running:
            return running
        binary = ensure_installed()
        self.write_config()
        return self.table.spawn(self.name, [binary, str(self.config)], self.log_path, self.address)

    def ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.s.redis_host, port=self.s.redis_port, socket_timeout=1).ping())
        except Exception:
            return False

    def wait_ready(self, timeout: float | None = None) -> float:
        timeout = timeout or self.s.redis_ready_timeout_s
        return wait_started("redis", self.log_path, timeout, self._exited, self.ready, interval=0.1)

    def _exited(self) -> str | None:
        rec = self.table.get(self.name)
        return "exited" if rec is not None and not rec.alive() else None


class LocalRedisCluster:
    """A local Redis Cluster of ``len(ports)`` masters and no replicas, from Debian's ``redis-server``
    (each node: ``--cluster-enabled yes``, AOF on, files under ``workdir/<port>``), joined by
    ``redis-cli --cluster create``: for tests and benchmarks of the feature store in cluster mode
    (``RECPILOT_REDIS_CLUSTER=true``, ``RECPILOT_REDIS_URL`` = :attr:`url`). Each node also uses its
    cluster bus port (``port + 10000``). Not part of ``recpilot up``."""

    def __init__(self, workdir, ports, host: str = "127.0.0.1", *extra: str) -> None:
        from pathlib import Path

        self.workdir, self.ports, self.host, self.extra = Path(workdir), list(ports), host, extra
        self.procs: dict[int, object] = {}

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        import subprocess

        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [ensure_installed(), "--port", str(port), "--bind", self.host, "--dir", str(d), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000", "--appendonly", "yes",
             "--save", "", "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=open(d / "redis.log", "ab"))

    def _ping(self, port: int) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.host, port=port, socket_timeout=1).ping())
        except Exception:
            return False

    def start(self, timeout: float = 30.0) -> LocalRedisCluster:
        import subprocess
        import time

        fresh = not any((self.workdir / str(p) / "nodes.conf").exists() for p in self.ports)
        for p in self.ports:
            self.start_node(p)
        t0 = time.monotonic()
        while not all(self._ping(p) for p in self.ports):
            if time.monotonic() - t0 > timeout:
                raise StackError(f"redis cluster nodes {self.ports} did not answer within {timeout}s")
            time.sleep(0.1)
        if fresh:
            cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            subprocess.run([cli, "--cluster", "create", *[f"{self.host}:{p}" for p in self.ports],
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok`` (all 16384 slots served)."""
        import time

        import redis

        t0 = time.monotonic()
        while True:
            try:
                if all(redis.Redis(host=self.host, port=p, socket_timeout=1).cluster("info").get("cluster_state") == "ok"
                       for p in self.ports):
                    return
            except Exception:
                pass
            if time.monotonic() - t0 > timeout:
                raise StackError(f"redis cluster on {self.ports} not ok within {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
        self.procs.clear()
