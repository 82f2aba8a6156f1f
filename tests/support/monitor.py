"""The monitor as a real process (``python -m services.monitor``) on a test's own topics, with a
config file of the test's own (short windows), plus the metric events and rewards the tests feed it."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np

from recpilot.kafka import create_topics
from recpilot.metricevents import metric_event, summary
from recpilot.pb import events_pb2
from recpilot.stack.process import ServiceProcess


def monitor_topics(unique: str) -> dict[str, str]:
    return {"metrics": f"test.metrics.inference.{unique}", "rewards": f"test.rewards.{unique}",
            "events": f"test.events.{unique}", "alerts": f"test.alerts.{unique}"}


def start_monitor(platform, tmp_path: Path, unique: str, config: str, *, env: dict | None = None,
                  timeout: float = 60.0, **settings) -> ServiceProcess:
    """The monitor process reading the topics of :func:`monitor_topics`, with ``config`` (TOML over
    the packaged defaults) and ``settings`` (``RECPILOT_MONITOR_<KEY>``), once ready."""
    t = monitor_topics(unique)
    create_topics(platform, list(t.values()), 1)
    cfg = tmp_path / f"monitor-{unique}.toml"
    cfg.write_text(config)
    s = {"config_path": cfg, "metrics_topics": json.dumps([t["metrics"]]), "rewards_topic": t["rewards"],
         "events_topic": t["events"], "alerts_topic": t["alerts"], "group_id": f"monitor-{unique}",
         "instance_id": f"monitor-{unique}", "state_dir": tmp_path / f"monitor-state-{unique}", "tick_s": 0.2,
         "retry_initial_s": 0.1, "retry_max_s": 0.5, **settings}
    proc = ServiceProcess("services.monitor", tmp_path / f"monitor-{unique}.log", settings=s, env=env)
    return proc.start().wait_ready(timeout)


def status(proc: ServiceProcess) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/status", timeout=5) as r:
        return json.loads(r.read())


def feature_events(model: str, version: str, feature: str, bounds, values: np.ndarray,
                   instance: str = "test-replica") -> list[events_pb2.MetricEvent]:
    """One interval's ``feature`` event of one inference replica, as services/inference/telemetry.py
    builds it (counts on the reference bounds, the overflow last)."""
    b = np.asarray(bounds, dtype=np.float64)
    counts = np.bincount(np.searchsorted(b, values, side="left"), minlength=len(b) + 1)
    s = summary(values.size, values.sum(), values.min(), values.max(), {"p50": float(np.median(values))},
                list(b), counts)
    return [metric_event("inference", instance, "feature", float(values.mean()),
                         {"feature": feature, "model": model, "version": version}, summary=s)]


def rewards(model: str, version: str, n: int, ctr: float, rng: np.random.Generator, *, variant: str = "production",
            policy_version: str = "ranker-order") -> list[events_pb2.Reward]:
    """``n`` rewards (shown items) of one model version with clicks at rate ``ctr``."""
    now = time.time_ns() // 1_000_000
    clicks = rng.random(n) < ctr
    return [events_pb2.Reward(request_id=f"r{i // 10}-{now}", item_id=f"it{i % 10}", position=i % 10 + 1,
                              model_name=model, model_version=version, variant=variant,
                              policy_version=policy_version, policy_variant="production", clicked=bool(c),
                              reward=float(c), impression_ts_ms=now, published_ms=now)
            for i, c in enumerate(clicks)]
