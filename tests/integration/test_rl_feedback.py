"""rl_feedback on the real broker: impressions and outcomes in (out of order, duplicated, by
request id and by user + item), exactly the expected rewards out (read_committed); a late outcome
changes nothing; inputs that are not co-partitioned stop the service at start."""

from __future__ import annotations

import pytest

from bench.rl_join import check, make_traffic, now_ms, produce_all
from recpilot.kafka import create_topics
from tests.support.rl_feedback import WEIGHTS, committed_rewards, rl_feedback_process, setup_topics

pytestmark = pytest.mark.timeout(120)


def test_expected_rewards_exactly_once(stack, platform_settings, unique, tmp_path, wait_until):
    p = platform_settings
    names = setup_topics(p, f"test-rl-{unique}")
    traffic = make_traffic(400, prefix=f"r{unique}", t0_ms=now_ms(), spacing_ms=2, outcome_share=0.5,
                           duplicate_share=0.2, max_delay_ms=400, n_users=50, seed=3)
    produce_all(p, names, traffic, events_first=True)  # every outcome before its impression
    proc = rl_feedback_process(names, f"test-rl-{unique}", tmp_path / "rl.log", window_s=1.5, grace_ms=300).start()
    try:
        proc.wait_ready(60)
        want = len(traffic.expected)
        wait_until(lambda: len(committed_rewards(p, names["rewards"])) >= want, 60,
                   lambda: f"{want} rewards:\n{proc.log_tail(30)}", 0.5)
        rewards = committed_rewards(p, names["rewards"])
        assert check(rewards, traffic, WEIGHTS) == []
        assert sum(r.clicked for r in rewards) == sum(e[0] for e in traffic.expected.values()) > 100
        assert any(r.purchased and r.reward > 5.0 for r in rewards)
        by_key = {(r.request_id, r.item_id): r for r in rewards}

        # a late click on an item already rewarded, then a new impression with a click of its own
        first_rid, first_item = next(k for k, e in traffic.expected.items() if not e[0])
        late = make_traffic(1, prefix=f"late{unique}", t0_ms=now_ms(), spacing_ms=1, outcome_share=1.0,
                            no_request_share=0.0, duplicate_share=0.0, max_delay_ms=50, seed=4)
        from recpilot.pb import events_pb2
        from recpilot.kafka import producer
        prod = producer(p)
        user = by_key[(first_rid, first_item)].user_id
        prod.produce(names["events"], events_pb2.UserEvent(
            event_id=f"late-{unique}", user_id=user, event_type=events_pb2.CLICK, item_id=first_item,
            request_id=first_rid, timestamp_ms=by_key[(first_rid, first_item)].impression_ts_ms + 100,
        ).SerializeToString(), user.encode())
        prod.flush(10)
        produce_all(p, names, late)
        wait_until(lambda: len(committed_rewards(p, names["rewards"])) >= want + len(late.expected), 30,
                   lambda: f"the new impression's rewards:\n{proc.log_tail(30)}", 0.5)
        rewards = committed_rewards(p, names["rewards"])
        traffic.expected.update(late.expected)
        assert check(rewards, traffic, WEIGHTS) == []  # no second reward, the late click not counted
        status, body = proc.get("/metrics")
        assert status == 200 and 'recpilot_rl_feedback_outcomes_total{fate="late"} 1.0' in body
        assert proc.stop(30) == 0
    finally:
        proc.kill9()


def test_refuses_inputs_that_are_not_copartitioned(stack, platform_settings, unique, tmp_path):
    p = platform_settings
    names = setup_topics(p, f"test-rl-cp-{unique}")
    names["events"] = f"test-rl-cp-{unique}.events2"
    create_topics(p, [names["events"]], 2)
    proc = rl_feedback_process(names, f"test-rl-cp-{unique}", tmp_path / "rl.log").start()
    try:
        assert proc.wait(60) == 1
        assert "not co-partitioned" in proc.log_tail(40)
    finally:
        proc.kill9()
