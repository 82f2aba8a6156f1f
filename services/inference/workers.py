"""Several serving processes behind one gRPC port (``RECPILOT_INFERENCE_WORKERS=N``, N > 1).

One Python process serves from one event-loop thread under one GIL: on a multi-core box a single
process tops out at about one core of Python work, whatever the core count. With N workers the
process started by ``python -m services.inference`` becomes a supervisor (no models, no gRPC) that
runs N ordinary single-process servers (``python -m services.inference`` with WORKERS=1):

* every worker binds the same gRPC port with ``SO_REUSEPORT``; the kernel spreads *connections*
  (not requests) across them, so clients with several connections (or several clients) use all
  workers -- one client on one HTTP/2 connection stays on one worker;
* each worker is a full replica (:class:`services.inference.app.InferenceApp`): its own models,
  dynamic batcher, deployment follower (each acks control commands as its own replica),
  impression and metric-event producers; only worker 0 runs the first-run bootstrap;
* the supervisor's HTTP port serves ``/metrics`` (every worker's metrics, with a ``worker`` label),
  ``/readyz`` (ready when every worker is) and ``/healthz`` (live while every worker runs);
* a worker that exits is restarted (1 s, doubling up to 30 s, while it keeps failing); SIGTERM /
  SIGINT stop the workers (each drains its in-flight RPCs for ``grace_s``); workers get SIGTERM
  if the supervisor dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from recpilot.lifecycle import Lifecycle
from recpilot.net import free_port
from recpilot.stack.process import http_get
from services.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class _Worker:
    def __init__(self, index: int, http_port: int) -> None:
        self.index = index
        self.http_port = http_port
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.backoff = 1.0
        self.next_start = 0.0
        self.started_at = 0.0


class Supervisor:
    def __init__(self, s: InferenceSettings, grpc_host: str) -> None:
        self.s = s
        self.grpc_host = grpc_host
        self.grpc_port = s.grpc_port or free_port(grpc_host)
        self.workers = [_Worker(i, free_port("127.0.0.1")) for i in range(s.workers)]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="workers", daemon=True)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- processes ---------------------------------------------------------------------------------
    def _env(self, w: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RECPILOT_INFERENCE_WORKERS": "1",
            "RECPILOT_INFERENCE_WORKER_INDEX": str(w.index),
            "RECPILOT_INFERENCE_REUSE_PORT": "true",
            "RECPILOT_INFERENCE_GRPC_HOST": self.grpc_host,
            "RECPILOT_INFERENCE_GRPC_PORT": str(self.grpc_port),
            "RECPILOT_INFERENCE_HTTP_HOST": "127.0.0.1",
            "RECPILOT_INFERENCE_HTTP_PORT": str(w.http_port),
        })
        if self.s.replica_id:  # every worker acknowledges control commands as its own replica
            env["RECPILOT_INFERENCE_REPLICA_ID"] = f"{self.s.replica_id}-w{w.index}"
        if w.index > 0:  # one first-run bootstrap model, not N
            env["RECPILOT_INFERENCE_BOOTSTRAP"] = "false"
        return env

    def _spawn(self, w: _Worker) -> None:
        w.proc = subprocess.Popen([sys.executable, "-m", "services.inference"], env=self._env(w),
                                  preexec_fn=_die_with_parent)
        w.started_at = time.monotonic()
        log.info("worker started", extra={"worker": w.index, "pid": w.proc.pid, "grpc_port": self.grpc_port,
                                          "http_port": w.http_port})

    def start(self) -> None:
        for w in self.workers:
            self._spawn(w)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                for w in self.workers:
                    if w.proc is None or w.proc.poll() is None:
                        if w.proc is not None and time.monotonic() - w.started_at > 60:
                            w.backoff = 1.0  # it has been running a while: the next failure starts over
                        continue
                    now = time.monotonic()
                    if w.next_start == 0.0:
                        log.error("worker exited; restarting", extra={
                            "worker": w.index, "pid": w.proc.pid, "returncode": w.proc.returncode,
                            "restart_in_s": w.backoff})
                        w.next_start = now + w.backoff
                        w.backoff = min(w.backoff * 2, 30.0)
                    elif now >= w.next_start:
                        w.next_start = 0.0
                        w.restarts += 1
                        self._spawn(w)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        with self._lock:
            running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
            for p in running:
                p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.s.grace_s + 10
            for p in running:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.error("worker did not stop; killing it", extra={"pid": p.pid})
                    p.kill()
                    p.wait(5)

    @property
    def running(self) -> bool:
        return not self._stopping.is_set()

    # -- health ------------------------------------------------------------------------------------
    def _get(self, w: _Worker, path: str, timeout: float = 2.0) -> tuple[int, str]:
        return http_get(f"http://127.0.0.1:{w.http_port}{path}", timeout)

    def live(self) -> tuple[bool, dict]:
        alive = {str(w.index): w.proc is not None and w.proc.poll() is None for w in self.workers}
        return all(alive.values()), {"workers_alive": alive}

    def ready(self) -> tuple[bool, dict]:
        ready = {str(w.index): self._get(w, "/readyz", 1.0)[0] == 200 for w in self.workers}
        return all(ready.values()), {"workers_ready": ready, "grpc_port": self.grpc_port}

    # -- metrics (a prometheus_client collector) ---------------------------------------------------
    def collect(self):
        families: dict[str, Metric] = {}
        for w in self.workers:
            code, body = self._get(w, "/metrics")
            if code != 200:
                continue
            for fam in text_string_to_metric_families(body):
                out = families.get(fam.name)
                if out is None:
                    out = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for smp in fam.samples:
                    out.add_sample(smp.name, {**smp.labels, "worker": str(w.index)}, smp.value, smp.timestamp)
        restarts = Metric("recpilot_inference_worker_restarts", "worker processes restarted by the supervisor",
                          "counter")
        for w in self.workers:
            restarts.add_sample("recpilot_inference_worker_restarts_total", {"worker": str(w.index)}, w.restarts)
        families[restarts.name] = restarts
        return list(families.values())


class SupervisorApp:
    """The supervisor process as an app (the same start/stop shape as
    :class:`services.inference.app.InferenceApp`, which each worker runs): the HTTP port, then the
    workers; stopped in reverse."""

    def __init__(self, s: InferenceSettings, platform) -> None:
        from recpilot.httpserver import HealthServer

        self.sup = Supervisor(s, s.grpc_host or platform.bind_host)
        self.http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=self.sup.ready,
                                 live=self.sup.live, registry=self.sup.registry)
        self._life = Lifecycle()

    def start(self) -> None:
        self.http.start()
        self._life.add("http", self.http.stop)
        self.sup.start()
        self._life.add("workers", self.sup.stop)
        log.info("inference supervisor started", extra={
            "workers": self.sup.s.workers, "grpc_port": self.sup.grpc_port, "http_port": self.http.port})

    @property
    def running(self) -> bool:
        return self.sup.running

    def stop(self) -> None:
        self._life.shutdown()
