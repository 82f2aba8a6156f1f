"""The topic catalogue of DESIGN.md, with partition counts from settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from recpilot.settings import PlatformSettings

EVENTS_RAW = "events.raw"
EVENTS_CLEAN = "events.clean"
EVENTS_DLQ = "events.dlq"
IMPRESSIONS = "impressions"
REWARDS = "rewards"
RL_JOIN_CHANGELOG = "rl_feedback.join-changelog"  # the reward joiner's state, co-partitioned with impressions
CONTROL_DEPLOYMENTS = "control.deployments"
CONTROL_ACKS = "control.acks"
ALERTS = "alerts"
METRICS_SERVICES = ("ingest", "features", "inference", "rl_feedback", "monitor")


def metrics_topic(service: str) -> str:
    return f"metrics.{service}"


def acks_topic(control_topic: str) -> str:
    """Where the serving replicas acknowledge the commands of ``control_topic``: ``control.acks``
    for ``control.deployments``, ``<control_topic>.acks`` for any other (a test's or a second
    installation's own control topic), so every control topic has acks of its own. Acks never go to
    the control topic itself: its WRITE grant is the control plane's alone (docs/security.md)."""
    return CONTROL_ACKS if control_topic == CONTROL_DEPLOYMENTS else f"{control_topic}.acks"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def catalogue(settings: PlatformSettings) -> list[TopicSpec]:
    ev = settings.events_partitions
    imp = settings.impressions_partitions
    one = settings.default_partitions
    week_ms = str(7 * 24 * 3600 * 1000)
    specs = [
        TopicSpec(EVENTS_RAW, ev),
        TopicSpec(EVENTS_CLEAN, ev),
        TopicSpec(EVENTS_DLQ, one, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicSpec(IMPRESSIONS, imp),
        TopicSpec(REWARDS, imp),
        # The reward joiner's open impressions and held outcomes: the latest record per key is the
        # state (compacted), one partition per impressions partition.
        TopicSpec(RL_JOIN_CHANGELOG, imp, {"cleanup.policy": "compact", "segment.ms": str(10 * 60 * 1000),
                                           "min.cleanable.dirty.ratio": "0.1",
                                           "delete.retention.ms": str(3600 * 1000)}),
        # Deployment commands (written by the control plane) and the replicas' acks (a topic of
        # their own, so that writing commands can be granted to the control plane alone) are the
        # audit trail: keep them.
        TopicSpec(CONTROL_DEPLOYMENTS, 1, {"retention.ms": "-1"}),
        TopicSpec(CONTROL_ACKS, 1, {"retention.ms": "-1"}),
        TopicSpec(ALERTS, one, {"retention.ms": str(90 * 24 * 3600 * 1000)}),
    ]
    specs += [TopicSpec(metrics_topic(s), one, {"retention.ms": week_ms}) for s in METRICS_SERVICES]
    return specs
