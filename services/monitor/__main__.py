"""``python -m services.monitor``: the monitor process (docs/monitoring.md).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 1 when it could not start, 2 on a bad setting.
A failed loop restarts in place with backoff (its windows start empty; the alerts firing and the
actions taken are restored from the ``alerts`` topic)."""

from __future__ import annotations

import logging

from recpilot import kafka as rkafka
from recpilot.httpserver import HealthServer
from recpilot.lifecycle import Lifecycle
from recpilot.log import setup_logging
from recpilot.metricevents import MetricPublisher
from recpilot.settings import load_service
from recpilot.topics import metrics_topic
from services.monitor.service import Monitor
from services.monitor.settings import MonitorSettings

log = logging.getLogger("services.monitor")
RESTART_BACKOFF_MAX_S = 30.0


def interval_events(pub: MetricPublisher, mon: Monitor) -> list:
    """The monitor's own MetricEvents of one interval."""
    st = mon.status()
    firing = len(st["firing"])
    evs = [pub.event("events_total", n, {"input": name}) for name, n in st["inputs"].items()]
    evs += [pub.event("malformed_total", st["malformed"]), pub.event("alerts_firing", firing)]
    evs += [pub.event("channel_dropped_total", c.get("dropped", 0), {"channel": name})
            for name, c in st["channels"].items()]
    return evs


def main() -> int:
    platform, s = load_service("monitor", MonitorSettings)
    setup_logging("monitor", platform.log_level)
    try:
        current = [Monitor(s, platform)]
    except Exception:
        log.exception("monitor failed to start")
        return 1
    http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=lambda: current[0].ready(),
                        routes={"/status": lambda: current[0].status()})
    metric_events = MetricPublisher(
        rkafka.producer(platform, **{"client.id": f"monitor-metrics-{s.instance_id}", "linger.ms": 50}),
        "monitor", s.instance_id, topic=metrics_topic("monitor"))
    life = Lifecycle()
    if not life.start_service("monitor", current, http, metric_events, s.metrics_interval_s,
                              lambda: interval_events(metric_events, current[0])):
        return 1
    delay = 1.0
    while True:
        life.wait(check=lambda: current[0].running, on_stop=False)
        if life.stopping.is_set():
            break
        failed = current[0]
        if failed.loop.error is None:
            break
        log.error("monitor loop failed; restarting", extra={"error": repr(failed.loop.error), "in_s": delay})
        failed.stop()
        delay = life.restart(current, lambda: Monitor(s, platform), name="monitor", delay=delay,
                             backoff_max_s=RESTART_BACKOFF_MAX_S)
    life.shutdown()
    return 0 if current[0].loop.error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
