"""kill -9 of rl_feedback in the middle of a stream, restart: every (request, item) has exactly one
reward (read_committed) and its values are right: the rewards, the join state (changelog) and the
input offsets were committed in one transaction, and the restart restored the state."""

from __future__ import annotations

import signal

import pytest

from bench.rl_join import check, make_traffic, now_ms, produce_all
from recpilot.kafka import read_to_end
from tests.support.rl_feedback import WEIGHTS, committed_rewards, rl_feedback_process, setup_topics

pytestmark = pytest.mark.timeout(180)


def test_kill_9_mid_stream_gives_exactly_one_right_reward_each(stack, platform_settings, unique, tmp_path,
                                                               wait_until):
    p = platform_settings
    names = setup_topics(p, f"test-rl-kill-{unique}")
    group = f"test-rl-kill-{unique}"
    n, window_ms = 6_000, 1_000
    # a backlog whose event times span ~6 s, ending a window ago: windows close while it is read
    t0 = now_ms() - n // 2 - window_ms - 3_000
    traffic = make_traffic(n, prefix=f"k{unique}", t0_ms=t0, spacing_ms=0.5, outcome_share=0.4,
                           duplicate_share=0.1, max_delay_ms=800, n_users=500, seed=5)
    produce_all(p, names, traffic)
    want = len(traffic.expected)
    settings = {"window_s": window_ms / 1000, "grace_ms": 300, "batch_size": 500, "static_membership": "true"}
    procs = []
    try:
        proc = rl_feedback_process(names, group, tmp_path / "rl-1.log", **settings).start()
        procs.append(proc)
        proc.wait_ready(60)
        # kill once some rewards are committed and most are not
        wait_until(lambda: len(read_to_end(p, names["rewards"], timeout=5)) >= want // 10, 60,
                   lambda: f"first rewards:\n{proc.log_tail(30)}", 0.05)
        proc.kill9()
        assert proc.returncode == -signal.SIGKILL
        at_kill = len(committed_rewards(p, names["rewards"]))
        assert 0 < at_kill < want, "the kill did not land mid-stream"
        uncommitted = len(read_to_end(p, names["rewards"], read_committed=False, idle_s=0.2))

        proc = rl_feedback_process(names, group, tmp_path / "rl-2.log", **settings).start()
        procs.append(proc)
        proc.wait_ready(60)
        wait_until(lambda: len(committed_rewards(p, names["rewards"])) >= want, 90,
                   lambda: f"{want} rewards after the restart:\n{proc.log_tail(30)}", 0.5)
        assert proc.stop(30) == 0
        assert "join state restored" in proc.log_tail(400)
    finally:
        for pr in procs:
            pr.kill9()
    rewards = committed_rewards(p, names["rewards"])
    assert check(rewards, traffic, WEIGHTS) == []
    assert sum(r.clicked for r in rewards) > 500
    print(f"rewards committed at the kill: {at_kill} of {want}; in the log incl. uncommitted: {uncommitted}")
