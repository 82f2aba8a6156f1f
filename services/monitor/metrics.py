"""Prometheus metrics of the monitor (module level, few labels).

Who moves what: the service counts what it reads (``events``, ``malformed``) and times its tick;
:class:`services.monitor.channels.Dispatcher` counts the alerts it is handed (``alerts``, once per
firing and once per resolution) and each channel's queue, drops and sends; the actuator counts its
decisions (``actions``). ``drift`` and ``ctr`` are the detectors' latest readings, set by the service
from the engine after each tick, for the dashboard (deploy/grafana/dashboards/recpilot.json).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INPUTS = ("metrics", "rewards", "impressions", "events")
STATUSES = ("firing", "resolved")
SEND_OUTCOMES = ("ok", "failed", "rejected")  # rejected: the receiver refused the payload (4xx); not retried

EVENTS = Counter("recpilot_monitor_events_total", "input messages processed, by input", ["input"])
MALFORMED = Counter("recpilot_monitor_malformed_total", "input messages that could not be parsed (counted and "
                    "skipped), by input", ["input"])
ALERTS = Counter("recpilot_monitor_alerts_total", "alerts handed to the channels: one per firing and one per "
                 "resolution", ["alertname", "status"])
ACTIONS = Counter("recpilot_monitor_actions_total", "actions decided on an alert, by outcome (executed, cooldown, "
                  "disabled, refused, failed)", ["action", "outcome"])
CHANNEL_DROPPED = Counter("recpilot_monitor_channel_dropped_total", "alerts dropped from a channel's full queue "
                          "(the oldest goes)", ["channel"])
CHANNEL_QUEUE = Gauge("recpilot_monitor_channel_queue", "alerts waiting for a channel", ["channel"])
CHANNEL_SENDS = Counter("recpilot_monitor_channel_sends_total", "deliveries attempted on a channel (one per batch "
                        "and per re-send), by outcome", ["channel", "outcome"])
TICK_SECONDS = Histogram("recpilot_monitor_tick_seconds", "time of one engine tick (close windows, evaluate)",
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
DRIFT = Gauge("recpilot_monitor_drift", "a model version's drift in the last closed window: the largest statistic "
              "over its features (kind=feature) or of its served scores (kind=score)",
              ["model", "version", "kind", "statistic"])
CTR = Gauge("recpilot_monitor_ctr", "clicks per shown item of a model version in the CTR detector's last window",
            ["model", "version"])

for _input in INPUTS:
    EVENTS.labels(_input)
    MALFORMED.labels(_input)  # exported as 0 from the start
