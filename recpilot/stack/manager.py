"""`recpilot up / down / status`: infrastructure first, then the services, each waited for."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from recpilot.errors import InvalidArgument
from recpilot.kafka import admin, ensure_topics
from recpilot.settings import PlatformSettings, load
from recpilot.stack.alertmanager import Alertmanager
from recpilot.stack.kafka import KafkaBroker
from recpilot.stack.process import ProcessTable, http_get, wait_http_ready
from recpilot.stack.redis import RedisServer
from recpilot.topics import catalogue


# Replica i (0, 1 ...) of a service started by `recpilot up --replicas`: replica 0 is the service as
# configured; replica i listens on the configured http_port + HTTP_PORT_STEP * i (inference: also on
# grpc_port + i) and changes what its settings' ``replica_settings(i, home)`` says (instance and
# transactional ids, data dirs); the consumer group is the same, so the replicas share the partitions.
HTTP_PORT_STEP = 10
MAX_REPLICAS = 9  # replicas 0..8: the HTTP ports of the five services stay in one block of 100 (9101-9185)


@dataclass(frozen=True)
class ServiceSpec:
    """A service `recpilot up` runs as ``python -m <module>``; readiness from its /readyz."""

    name: str
    module: str
    settings: str  # "package.module:Class" with an ``http_port`` field (light to import)
    ready_timeout_s: float = 120.0
    scalable: bool = True  # False: one replica only (`up --replicas` refuses more)

    def settings_class(self):
        mod, cls = self.settings.split(":")
        return getattr(importlib.import_module(mod), cls)

    def http_port(self) -> int:
        return load(self.settings_class()).http_port

    def replica_name(self, i: int) -> str:
        """The process table's name of replica ``i``: the service's name, then ``<name>-<i>``."""
        return self.name if i == 0 else f"{self.name}-{i}"

    def replica_env(self, i: int, home: Path) -> tuple[dict[str, str], int]:
        """The environment variables replica ``i`` adds to the configured ones, and its HTTP port."""
        cls = self.settings_class()
        base = load(cls)
        if i == 0:
            return {}, base.http_port
        if not self.scalable:
            raise InvalidArgument(f"{self.name} runs as one replica")
        port = base.http_port + HTTP_PORT_STEP * i if base.http_port else 0
        fields = {"http_port": str(port), **base.replica_settings(i, home)}
        prefix = cls.model_config["env_prefix"]
        return {f"{prefix}{k}".upper(): v for k, v in fields.items()}, port


# The services `up` starts, in start order; a new service joins this list with its __main__.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingest", "services.ingest", "services.ingest.settings:IngestSettings"),
    ServiceSpec("features", "services.features", "services.features.settings:FeaturesSettings"),
    ServiceSpec("inference", "services.inference", "services.inference.settings:InferenceSettings", 300.0),
    ServiceSpec("rl_feedback", "services.rl_feedback", "services.rl_feedback.settings:RlFeedbackSettings"),
    # one replica: its alerts and actions (a rollback) must not be taken twice
    ServiceSpec("monitor", "services.monitor", "services.monitor.settings:MonitorSettings", scalable=False),
)


def parse_replicas(text: str) -> dict[str, int]:
    """``N`` (every scalable service N replicas, the monitor one) or ``ingest=2,features=3,...``."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
        counts = {s.name: (n if s.scalable else 1) for s in SERVICES}
    else:
        counts = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, num = part.partition("=")
            if not sep or not num.strip().isdigit():
                raise InvalidArgument(f"--replicas {text!r}: expected N or SERVICE=N[,SERVICE=N...]")
            counts[name.strip()] = int(num)
        services(list(counts))  # an unknown name is a usage error
    for name, n in counts.items():
        spec = next(s for s in SERVICES if s.name == name)
        if not 1 <= n <= MAX_REPLICAS:
            raise InvalidArgument(f"{name}: {n} replicas (1 to {MAX_REPLICAS})")
        if n > 1 and not spec.scalable:
            raise InvalidArgument(f"{name} runs as one replica")
    return counts


def services(names: list[str] | None = None) -> list[ServiceSpec]:
    """All services, or the named ones (in start order); an unknown name is a usage error."""
    if names is None:
        return list(SERVICES)
    unknown = sorted(set(names) - {s.name for s in SERVICES})
    if unknown:
        raise InvalidArgument(f"unknown service {', '.join(unknown)} (services: {', '.join(s.name for s in SERVICES)})")
    return [s for s in SERVICES if s.name in names]


class Stack:
    def __init__(self, settings: PlatformSettings | None = None, services_dir: Path | None = None) -> None:
        """``services_dir``: where the services' pid records (``run/``) and logs (``logs/``) go
        (default: the platform home, as Kafka's and Redis's)."""
        self.s = settings or load(PlatformSettings)
        self.table = ProcessTable(self.s.home / "run")
        sdir = services_dir or self.s.home
        self.services_table = ProcessTable(sdir / "run") if services_dir else self.table
        self.logs_dir = sdir / "logs"
        self.kafka = KafkaBroker(self.s, self.table)
        self.redis = RedisServer(self.s, self.table)
        self.alertmanager = Alertmanager(self.s, self.table)

    # -- infrastructure ----------------------------------------------------------------
    def up_infra(self, echo=print) -> dict[str, float]:
        took = {}
        t0 = time.monotonic()
        self.redis.start()
        self.kafka.start()
        took["redis"] = self.redis.wait_ready()
        took["kafka"] = self.kafka.wait_ready()
        created = ensure_topics(admin(self.kafka.client_settings()), catalogue(self.s))
        if created:
            echo(f"created topics: {', '.join(sorted(created))}")
        took["total"] = time.monotonic() - t0
        if self.kafka.client_env():
            echo(f"kafka listener is SASL_SSL; client settings: {self.kafka.security_dir / 'client.env'}")
        return took

    def up_alertmanager(self, echo=print) -> bool:
        """Start Alertmanager when it is installed (optional: one line and on when it is not)."""
        if not self.alertmanager.installed():
            echo("alertmanager: not installed, not started (`recpilot setup` installs prometheus-alertmanager)")
            return False
        self.alertmanager.start()
        took = self.alertmanager.wait_ready()
        echo(f"alertmanager ready at {self.alertmanager.url} ({took:.1f}s)")
        return True

    # -- services ----------------------------------------------------------------------
    def _service_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["RECPILOT_HOME"] = str(self.s.home)
        env.update(self.kafka.client_env())  # the SASL_SSL listener's admin credentials, when the env has none
        if self.table.running(self.alertmanager.name):  # the monitor posts its alerts to the stack's Alertmanager
            env.setdefault("RECPILOT_MONITOR_ALERTMANAGER_URL", self.alertmanager.url)
        return env

    def replicas(self, spec: ServiceSpec) -> list[int]:
        """Replica indexes of ``spec`` with a pid record (0 always listed)."""
        pat = re.compile(re.escape(spec.name) + r"-([0-9]+)\.json")
        found = {0}
        if self.services_table.run_dir.is_dir():
            for p in self.services_table.run_dir.iterdir():
                m = pat.fullmatch(p.name)
                if m:
                    found.add(int(m.group(1)))
        return sorted(found)

    def up_services(self, names: list[str] | None = None, echo=print, replicas: dict[str, int] | None = None) -> None:
        """Start the services (``names``: these only) and wait until each is ready. ``replicas``:
        that many replicas of a service (default 1; what runs beyond them is stopped). Replica 0 of
        each starts first (it may bootstrap: inference deploys or trains its first model), then
        the others join its consumer group."""
        specs = services(names)
        counts = {spec.name: (replicas or {}).get(spec.name, 1) for spec in specs}
        for phase in (0, 1):
            started = []
            for spec in specs:
                for i in ([0] if phase == 0 else range(1, counts[spec.name])):
                    started.append((spec, self.start_replica(spec, i)))
            for spec, name in started:
                self.wait_service(spec, name)
                echo(f"{name} ready")
        if replicas:
            extra = [spec.replica_name(i) for spec in specs for i in self.replicas(spec)
                     if i >= counts[spec.name] and self.services_table.get(spec.replica_name(i))]
            for name, outcome in _stop_all(self.services_table, extra, timeout=30).items():
                echo(f"{name}: {outcome}")

    def start_replica(self, spec: ServiceSpec, i: int = 0) -> str:
        """Start replica ``i`` of ``spec`` unless it runs (not waiting for it); its name. What `up`
        does for each replica, and what restarts one that died: nothing restarts a dead service on
        its own (a supervisor, Kubernetes or `recpilot up` again does)."""
        name = spec.replica_name(i)
        if self.services_table.running(name):
            return name
        extra, port = spec.replica_env(i, self.s.home)
        self.services_table.spawn(
            name,
            [sys.executable, "-m", spec.module],
            self.logs_dir / f"{name}.log",
            f"127.0.0.1:{port}",
            env={**self._service_env(), **extra},
        )
        return name

    def wait_service(self, spec: ServiceSpec, name: str | None = None) -> None:
        name = name or spec.name
        rec = self.services_table.get(name)
        wait_http_ready(name, rec.log if rec else "", spec.ready_timeout_s,
                        exited=lambda: None if rec is not None and rec.alive() else "exited",
                        address=lambda: rec.address, interval=0.5)

    def down_services(self) -> dict[str, str]:
        """Stop every replica of every service (by pid record), all at once: each gets its SIGTERM
        together and drains on its own (they share nothing but Kafka and Redis, which stop after
        them), so `down` takes as long as the slowest, not the sum. Listed in reverse start order."""
        names = [spec.replica_name(i) for spec in reversed(SERVICES) for i in reversed(self.replicas(spec))
                 if self.services_table.get(spec.replica_name(i))]
        return _stop_all(self.services_table, names, timeout=30)

    # -- whole stack -------------------------------------------------------------------
    def up(self, services: bool = True, echo=print, replicas: dict[str, int] | None = None) -> None:
        if self.alertmanager.installed():
            self.alertmanager.start()  # starts while Kafka does; waited for after it (up_alertmanager)
        took = self.up_infra(echo)
        echo(f"redis ready at {self.redis.address} ({took['redis']:.1f}s), kafka ready at {self.kafka.address} ({took['kafka']:.1f}s)")
        self.up_alertmanager(echo)
        if services:
            self.up_services(echo=echo, replicas=replicas)

    def down(self, echo=print) -> dict[str, str]:
        """Stop what `up` started (by pid record), services first, then Alertmanager, Redis and
        Kafka together; data stays."""
        result = self.down_services()
        result.update(_stop_all(self.table, [n for n in (self.alertmanager.name, "redis", "kafka")
                                             if self.table.get(n)], timeout=60))
        for name, outcome in result.items():
            echo(f"{name}: {outcome}")
        return result

    def status(self) -> dict:
        comps = []
        for name, ready, addr in (
            ("kafka", self.kafka.ready, self.kafka.address),
            ("redis", self.redis.ready, self.redis.address),
        ):
            rec = self.table.running(name)
            comps.append({"name": name, "running": rec is not None, "ready": bool(rec) and ready(),
                          "pid": rec.pid if rec else None, "address": addr, "log": rec.log if rec else None})
        if self.table.get(self.alertmanager.name):  # optional: listed once `up` started it
            rec = self.table.running(self.alertmanager.name)
            comps.append({"name": self.alertmanager.name, "running": rec is not None,
                          "ready": bool(rec) and self.alertmanager.ready(), "pid": rec.pid if rec else None,
                          "address": self.alertmanager.address, "log": rec.log if rec else None})
        for spec in services():
            for i in self.replicas(spec):  # replica 0 always; the others while they have a pid record
                name = spec.replica_name(i)
                rec = self.services_table.running(name)
                addr = rec.address if rec else None
                comps.append({"name": name, "service": spec.name, "replica": i, "running": rec is not None,
                              "ready": bool(rec) and http_get(f"http://{addr}/readyz", 1.0)[0] == 200,
                              "pid": rec.pid if rec else None, "address": addr, "log": rec.log if rec else None})
        return {"home": str(self.s.home), "components": comps}


def _stop_all(table: ProcessTable, names: list[str], timeout: float) -> dict[str, str]:
    """``table.stop`` of each name, concurrently; the outcomes in the order of ``names``."""
    if len(names) <= 1:
        return {n: table.stop(n, timeout=timeout) for n in names}
    with ThreadPoolExecutor(len(names), thread_name_prefix="stop") as pool:
        futures = [(n, pool.submit(table.stop, n, timeout)) for n in names]
        return {n: f.result() for n, f in futures}


def format_status(st: dict) -> str:
    rows = [f"{'component':<14} {'running':<8} {'ready':<6} {'pid':<8} address"]
    for c in st["components"]:
        rows.append(f"{c['name']:<14} {str(c['running']).lower():<8} {str(c['ready']).lower():<6} {str(c['pid'] or '-'):<8} {c['address'] or '-'}")
    return "\n".join(rows)


def dumps(st: dict) -> str:
    return json.dumps(st, indent=2)
