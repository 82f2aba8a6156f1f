"""Prometheus metrics of the reward joiner (module level, few labels)."""

from prometheus_client import Counter, Gauge, Histogram

IMPRESSIONS = Counter("recpilot_rl_feedback_impressions_total", "impressions taken into the join")
DUPLICATE_IMPRESSIONS = Counter("recpilot_rl_feedback_duplicate_impressions_total",
                                "impressions dropped: their request id was open or closed already")
OUTCOMES = Counter("recpilot_rl_feedback_outcomes_total", "outcome events (click, add-to-cart, purchase) by fate",
                   ["fate"])
OUTCOME_FATES = ("joined", "buffered", "duplicate", "late", "unmatched", "not_shown")
REWARDS = Counter("recpilot_rl_feedback_rewards_total", "rewards published (one per shown item)")
POSITIVE = Counter("recpilot_rl_feedback_rewards_with_outcome_total", "rewards published with an outcome")
OPEN = Gauge("recpilot_rl_feedback_open_impressions", "impressions waiting for their window to close")
BUFFERED = Gauge("recpilot_rl_feedback_buffered_outcomes", "outcomes waiting for their impression")
WATERMARK_LAG = Gauge("recpilot_rl_feedback_watermark_lag_seconds", "wall clock minus the smallest partition watermark")
BATCHES = Counter("recpilot_rl_feedback_transactions_total", "transactions committed (rewards + changelog + offsets)")
BATCH_SECONDS = Histogram(
    "recpilot_rl_feedback_batch_seconds", "join + produce + commit time of one transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REWARD_LATENCY = Histogram(
    "recpilot_rl_feedback_reward_latency_seconds", "reward published_ms minus its latest outcome's event time",
    buckets=(0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300),
)
RESTORED = Counter("recpilot_rl_feedback_restored_records_total", "changelog records read to restore partitions")

# the policy lifecycle (learning.py)
LEARNER_REWARDS = Counter("recpilot_rl_learner_rewards_total", "rewards the learner learned from (this process)")
LEARNER_SKIPPED = Counter("recpilot_rl_learner_skipped_rewards_total", "rewards the learner could not use, by reason",
                          ["reason"])
LEARNER_ROWS = Gauge("recpilot_rl_learner_rows", "rewards in the learner's history, checkpoint included")
LEARNER_UPDATES = Gauge("recpilot_rl_learner_updates", "minibatch updates of the Q-network, checkpoint included")
LEARNER_CHECKPOINTS = Counter("recpilot_rl_learner_checkpoints_total", "learner checkpoints written")
POLICY_DECISIONS = Counter("recpilot_rl_policy_decisions_total", "candidate policy versions judged, by outcome",
                           ["outcome"])
POLICY_ESTIMATE = Gauge("recpilot_rl_policy_estimate", "the last gate's off-policy estimate (reward per shown item)",
                        ["policy"])

for _r in ("undecodable", "no_inputs"):
    LEARNER_SKIPPED.labels(_r)
for _o in ("published", "held"):
    POLICY_DECISIONS.labels(_o)
for _f in OUTCOME_FATES:
    OUTCOMES.labels(fate=_f)
