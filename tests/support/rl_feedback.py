"""rl_feedback as a real process on a test's own topics (traffic and checks from bench.rl_join)."""

from __future__ import annotations

from pathlib import Path

from bench.rl_join import service_settings, topic_names
from recpilot.kafka import create_topics, read_to_end
from recpilot.pb import events_pb2
from recpilot.stack.process import ServiceProcess

WEIGHTS = (1.0, 2.0, 4.0, 0.01)  # click, add_to_cart, purchase, revenue: every term shows in the reward


def setup_topics(platform, prefix: str, partitions: int = 4) -> dict[str, str]:
    names = topic_names(prefix)
    create_topics(platform, list(names.values()), partitions)
    return names


def rl_feedback_process(names: dict[str, str], group: str, log: Path, env: dict | None = None,
                        **settings) -> ServiceProcess:
    w = dict(zip(("reward_click", "reward_add_to_cart", "reward_purchase", "reward_revenue"), WEIGHTS))
    return ServiceProcess("services.rl_feedback", log, env=env,
                          settings=service_settings(names, group, **{"instance_id": group, **w, **settings}))


def committed_rewards(platform, topic: str) -> list[events_pb2.Reward]:
    return [events_pb2.Reward.FromString(m.value()) for m in read_to_end(platform, topic, idle_s=0.2)]
