"""The monitor's alerts: what the detectors' alert tracker emits, the channels deliver and the
actions act on. Light to import (protobuf only).

An :class:`Alert` is identified by its name and labels (:attr:`Alert.fingerprint`): one firing alert
per fingerprint at a time; its resolution carries the same fingerprint, ``status="resolved"`` and
``ends_ms``. Labels and annotations are the ones a Prometheus alert carries to Alertmanager.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

from recpilot.pb import events_pb2

FIRING, RESOLVED = "firing", "resolved"
SEVERITIES = ("page", "ticket")
RUNBOOK = "docs/operations.md#alert-{}"


@dataclass(frozen=True)
class Alert:
    name: str                         # alertname, e.g. "FeatureDrift"
    labels: dict[str, str]            # what it is about: service, model, version, feature, method, ...
    severity: str = "ticket"          # "page" wakes someone, "ticket" does not
    status: str = FIRING
    value: float = 0.0                # the detector's statistic
    threshold: float = 0.0
    statistic: str = ""               # e.g. "psi", "wasserstein_sigma", "burn_rate_short"
    starts_ms: int = 0
    ends_ms: int = 0                  # when resolved
    summary: str = ""                 # one line for a human
    description: str = ""
    generator: str = ""               # the monitor instance
    details: dict = field(default_factory=dict, compare=False)  # detector specifics (not sent to channels)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.name, self.labels)

    @property
    def firing(self) -> bool:
        return self.status == FIRING

    def all_labels(self) -> dict[str, str]:
        return {"alertname": self.name, "severity": self.severity, **{k: str(v) for k, v in self.labels.items()}}

    def annotations(self) -> dict[str, str]:
        return {"summary": self.summary or f"{self.name} {self.status}",
                "description": self.description,
                "statistic": self.statistic, "value": f"{self.value:.6g}", "threshold": f"{self.threshold:.6g}",
                "runbook": RUNBOOK.format(self.name.lower())}

    def resolve(self, now_ms: int, value: float | None = None) -> Alert:
        """This alert, resolved at ``now_ms`` (with the statistic's value then)."""
        return dataclasses.replace(self, status=RESOLVED, ends_ms=now_ms, value=self.value if value is None else value,
                                   summary=f"resolved: {self.summary}" if self.summary else "")

    def to_proto(self) -> events_pb2.Alert:
        a = events_pb2.Alert(fingerprint=self.fingerprint, name=self.name,
                             status=events_pb2.FIRING if self.firing else events_pb2.RESOLVED,
                             severity=self.severity, value=self.value, threshold=self.threshold,
                             starts_ms=self.starts_ms, ends_ms=self.ends_ms, generator=self.generator)
        a.labels.update(self.all_labels())
        a.annotations.update(self.annotations())
        return a

    @classmethod
    def from_proto(cls, a: events_pb2.Alert) -> Alert:
        labels = {k: v for k, v in a.labels.items() if k not in ("alertname", "severity")}
        ann = dict(a.annotations)
        return cls(name=a.name, labels=labels, severity=a.severity,
                   status=FIRING if a.status == events_pb2.FIRING else RESOLVED, value=a.value,
                   threshold=a.threshold, statistic=ann.get("statistic", ""), starts_ms=a.starts_ms,
                   ends_ms=a.ends_ms, summary=ann.get("summary", ""), description=ann.get("description", ""),
                   generator=a.generator)

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "name": self.name, "status": self.status, "severity": self.severity,
                "labels": dict(self.labels), "value": self.value, "threshold": self.threshold,
                "statistic": self.statistic, "starts_ms": self.starts_ms, "ends_ms": self.ends_ms,
                "summary": self.summary}


def fingerprint(name: str, labels: dict[str, str]) -> str:
    text = "\x1f".join([name, *(f"{k}={labels[k]}" for k in sorted(labels))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
