"""`python -m services.rl_feedback`: join impressions with their outcomes into rewards.

Loads settings, sets up logging, builds the join transport and the policy learner
(``services/rl_feedback/learning.py``, a second component of the same lifecycle; off with
``RECPILOT_RL_FEEDBACK_LEARNER_ENABLED=false``), runs until SIGTERM (then: the learner stops, the
current transaction commits, the consumer leaves its group, metrics stop).
A failed step stops the loop without committing; a fresh service then starts in-process after a
backoff (its partitions' state restored from the changelog), as a process restart would."""

from __future__ import annotations

import logging

from recpilot import kafka as rkafka
from recpilot.httpserver import HealthServer
from recpilot.lifecycle import Lifecycle, reexec, thread_stack
from recpilot.log import setup_logging
from recpilot.metricevents import MetricPublisher, summary
from recpilot.settings import load_service
from services.rl_feedback.learning import PolicyLearner
from services.rl_feedback.service import RlFeedbackService
from services.rl_feedback.settings import RlFeedbackSettings

log = logging.getLogger("services.rl_feedback")
RESTART_BACKOFF_MAX_S = 30.0
LEARNER_RESTART_S = 5.0


def interval_events(pub: MetricPublisher, svc: RlFeedbackService) -> list:
    """The MetricEvents of one interval: cumulative counts and the interval's reward latency."""
    st = svc.stats()
    evs = [pub.event("impressions_total", st.impressions), pub.event("rewards_total", st.rewards),
           pub.event("rewards_with_outcome_total", st.positive)]
    evs += [pub.event("outcomes_total", getattr(st, attr), {"fate": fate}) for fate, attr in (
        ("joined", "joined"), ("duplicate", "duplicates"), ("late", "late"), ("unmatched", "unmatched"),
        ("not_shown", "not_shown"))]
    lat = sorted(svc.take_latencies())
    if lat:
        n = len(lat)
        q = {"p50": lat[n // 2], "p99": lat[min(n - 1, int(n * 0.99))]}
        evs.append(pub.event("reward_latency_ms", lat[n // 2],
                             summary=summary(n, sum(lat), lat[0], lat[-1], q)))
    return evs


def restart_stalled(svc: RlFeedbackService) -> None:
    """The loop has been blocked for ``restart_after_stall_s`` (seen once after a broker kill -9 under
    heavy load: a transaction left open, so read_committed readers of rewards saw nothing after it).
    A thread blocked inside librdkafka cannot be stopped: log where it waits and re-execute the
    process; the new one's init_transactions aborts the open transaction and it resumes from the
    committed offsets and the changelog."""
    log.error("rl_feedback loop stalled; restarting the process", extra={
        "stalled_for_s": round(svc.stalled_for(), 1), "transactions": svc.transactions,
        "stack": thread_stack(svc._thread)})
    reexec()


def main() -> int:
    platform, s = load_service("rl_feedback", RlFeedbackSettings)
    setup_logging("rl_feedback", platform.log_level)
    current = [RlFeedbackService(s, platform)]
    metric_events = MetricPublisher(
        rkafka.producer(platform, **{"client.id": f"rl-feedback-metrics-{s.instance_id}", "linger.ms": 50}),
        "rl_feedback", s.instance_id, topic=s.metrics_topic)
    http = HealthServer(s.http_port, s.http_host or platform.bind_host, ready=lambda: current[0].ready())

    life = Lifecycle()
    if not life.start_service("rl_feedback", current, http, metric_events, s.metrics_interval_s,
                              lambda: interval_events(metric_events, current[0])):
        return 1
    learner = [None]
    if s.learner_enabled:  # the policy lifecycle: started after the joiner, stopped before it
        learner[0] = PolicyLearner(s, platform)
        learner[0].start()
        life.add("learner", lambda: learner[0].stop())
    delay = 1.0

    def stalled() -> bool:
        return bool(s.restart_after_stall_s) and current[0].stalled_for() > s.restart_after_stall_s

    while True:
        life.wait(check=lambda: current[0].running and not stalled() and (learner[0] is None or learner[0].running),
                  on_stop=False)
        if life.stopping.is_set():
            break
        if stalled():
            restart_stalled(current[0])
        if learner[0] is not None and not learner[0].running:
            # a failed learner restarts from its checkpoint (the joiner is not touched)
            log.error("policy learner failed; restarting from its checkpoint",
                      extra={"error": repr(learner[0].error), "in_s": LEARNER_RESTART_S})
            if life.stopping.wait(LEARNER_RESTART_S):
                break
            learner[0] = PolicyLearner(s, platform)
            learner[0].start()
            continue
        failed = current[0]
        if failed.error is None:
            break
        if failed.transactions:
            delay = 1.0
        log.error("rl_feedback loop failed; restarting", extra={"error": repr(failed.error), "in_s": delay})
        delay = life.restart(current, lambda: RlFeedbackService(s, platform), name="rl_feedback", delay=delay,
                             backoff_max_s=RESTART_BACKOFF_MAX_S)
    life.shutdown()
    return 0 if current[0].error is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
