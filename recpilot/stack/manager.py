"""`recpilot up / down / status`: infrastructure first, then the services, each waited for."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass

from recpilot.errors import InvalidArgument
from recpilot.kafka import admin, ensure_topics
from recpilot.settings import PlatformSettings, load
from recpilot.stack.alertmanager import Alertmanager
from recpilot.stack.kafka import KafkaBroker
from recpilot.stack.process import ProcessTable, http_get, wait_http_ready
from recpilot.stack.redis import RedisServer
from recpilot.topics import catalogue


@dataclass(frozen=True)
class ServiceSpec:
    """A service `recpilot up` runs as ``python -m <module>``; readiness from its /readyz."""

    name: str
    module: str
    settings: str  # "package.module:Class" with an ``http_port`` field (light to import)
    ready_timeout_s: float = 120.0

    def http_port(self) -> int:
        mod, cls = self.settings.split(":")
        return load(getattr(importlib.import_module(mod), cls)).http_port


# The services `up` starts, in start order; a new service joins this list with its __main__.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingest", "services.ingest", "services.ingest.settings:IngestSettings"),
    ServiceSpec("features", "services.features", "services.features.settings:FeaturesSettings"),
    ServiceSpec("inference", "services.inference", "services.inference.settings:InferenceSettings", 300.0),
    ServiceSpec("rl_feedback", "services.rl_feedback", "services.rl_feedback.settings:RlFeedbackSettings"),
    ServiceSpec("monitor", "services.monitor", "services.monitor.settings:MonitorSettings"),
)


def services(names: list[str] | None = None) -> list[ServiceSpec]:
    """All services, or the named ones (in start order); an unknown name is a usage error."""
    if names is None:
        return list(SERVICES)
    unknown = sorted(set(names) - {s.name for s in SERVICES})
    if unknown:
        raise InvalidArgument(f"unknown service {', '.join(unknown)} (services: {', '.join(s.name for s in SERVICES)})")
    return [s for s in SERVICES if s.name in names]


class Stack:
    def __init__(self, settings: PlatformSettings | None = None) -> None:
        self.s = settings or load(PlatformSettings)
        self.table = ProcessTable(self.s.home / "run")
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

    def up_services(self, names: list[str] | None = None, echo=print) -> None:
        specs = services(names)
        for spec in specs:
            if self.table.running(spec.name):
                continue
            port = spec.http_port()
            self.table.spawn(
                spec.name,
                [sys.executable, "-m", spec.module],
                self.s.home / "logs" / f"{spec.name}.log",
                f"127.0.0.1:{port}",
                env=self._service_env(),
            )
        for spec in specs:
            self.wait_service(spec)
            echo(f"{spec.name} ready")

    def wait_service(self, spec: ServiceSpec) -> None:
        rec = self.table.get(spec.name)
        wait_http_ready(spec.name, rec.log if rec else "", spec.ready_timeout_s,
                        exited=lambda: None if rec is not None and rec.alive() else "exited",
                        address=lambda: rec.address, interval=0.5)

    # -- whole stack -------------------------------------------------------------------
    def up(self, services: bool = True, echo=print) -> None:
        took = self.up_infra(echo)
        echo(f"redis ready at {self.redis.address} ({took['redis']:.1f}s), kafka ready at {self.kafka.address} ({took['kafka']:.1f}s)")
        self.up_alertmanager(echo)
        if services:
            self.up_services(echo=echo)

    def down(self, echo=print) -> dict[str, str]:
        """Stop what `up` started (by pid record), services first; data stays."""
        result = {}
        for spec in reversed(SERVICES):
            if self.table.get(spec.name):
                result[spec.name] = self.table.stop(spec.name, timeout=30)
        for name in (self.alertmanager.name, "redis", "kafka"):
            if self.table.get(name):
                result[name] = self.table.stop(name, timeout=60)
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
            rec = self.table.running(spec.name)
            addr = rec.address if rec else None
            comps.append({"name": spec.name, "running": rec is not None,
                          "ready": bool(rec) and http_get(f"http://{addr}/readyz", 1.0)[0] == 200,
                          "pid": rec.pid if rec else None, "address": addr, "log": rec.log if rec else None})
        return {"home": str(self.s.home), "components": comps}


def format_status(st: dict) -> str:
    rows = [f"{'component':<12} {'running':<8} {'ready':<6} {'pid':<8} address"]
    for c in st["components"]:
        rows.append(f"{c['name']:<12} {str(c['running']).lower():<8} {str(c['ready']).lower():<6} {str(c['pid'] or '-'):<8} {c['address'] or '-'}")
    return "\n".join(rows)


def dumps(st: dict) -> str:
    return json.dumps(st, indent=2)
