"""Logged slates read back from a real broker (recpilot.rl.logs.from_kafka): impressions with their
pools and the rewards published for them, joined by request id. Own topics per test, deleted."""

from __future__ import annotations

import numpy as np
import pytest

from recpilot.errors import NotFound
from recpilot.kafka import admin, delete_topics, ensure_topics, flush_or_raise, producer
from recpilot.rl.logs import from_kafka
from recpilot.topics import TopicSpec
from tests.support.rl_logs import impression, pool_dense, reward


@pytest.fixture
def topics(stack, platform_settings, unique):
    names = {"imp": f"test.ope.impressions.{unique}", "rew": f"test.ope.rewards.{unique}"}
    ensure_topics(admin(platform_settings), [TopicSpec(names["imp"], 2), TopicSpec(names["rew"], 2)])
    yield names
    delete_topics(platform_settings, names.values(), timeout=10)


def _publish(settings, topics, n=12, base_ms=1_700_000_000_000):
    """n impressions (request r logged at base + r s) and the rewards of all but the last two; the
    second item of every third request is clicked. A reward is published twice for r0 (a replay)."""
    p = producer(settings)
    imps = [impression(r, m=5, shown=(r % 5, (r + 2) % 5), props=(0.5, 0.125)) for r in range(n)]
    imps.append(impression(n, with_pool=False))
    for r, imp in enumerate(imps):
        p.produce(topics["imp"], key=imp.user_id, value=imp.SerializeToString(), timestamp=base_ms + 1000 * r)
    for r, imp in enumerate(imps[: n - 2] + imps[n:]):
        for j, it in enumerate(imp.items):
            rw = reward(imp, it.item_id, 1.0 if (j == 1 and r % 3 == 0) else 0.0)
            p.produce(topics["rew"], key=rw.user_id, value=rw.SerializeToString(), timestamp=base_ms + 1000 * r + 500)
    dup = reward(imps[0], imps[0].items[0].item_id, 0.0)
    p.produce(topics["rew"], key=dup.user_id, value=dup.SerializeToString(), timestamp=base_ms + 60_000)
    flush_or_raise(p)
    return imps


def test_impressions_join_their_rewards_exactly(platform_settings, topics):
    n = 12
    _publish(platform_settings, topics, n)
    logs = from_kafka(platform_settings, impressions_topic=topics["imp"], rewards_topic=topics["rew"], timeout_s=30)
    assert logs.meta["impressions"] == n + 1 and logs.meta["no_pool"] == 1 and logs.meta["no_reward"] == 2
    assert logs.meta["duplicate_rewards"] == 1 and logs.n == n - 2
    assert logs.request_ids == [f"r{r}" for r in range(n - 2)]  # in impression time order
    for i, r in enumerate(range(n - 2)):
        np.testing.assert_array_equal(logs.shown[i], [r % 5, (r + 2) % 5])
        np.testing.assert_array_equal(logs.propensity[i], [0.5, 0.125])
        np.testing.assert_array_equal(logs.reward[i], [0.0, 1.0 if r % 3 == 0 else 0.0])
        np.testing.assert_array_equal(logs.x[i, :, :-1], pool_dense(r, 5))
        assert logs.mask[i].all()


def test_since_and_max_impressions_bound_the_window(platform_settings, topics):
    base = 1_700_000_000_000
    _publish(platform_settings, topics, 12, base)
    kw = dict(impressions_topic=topics["imp"], rewards_topic=topics["rew"], timeout_s=30)
    since = from_kafka(platform_settings, since_ms=base + 6_000, **kw)  # r6.. r12; r10, r11 without rewards
    assert since.request_ids == ["r6", "r7", "r8", "r9"]
    latest = from_kafka(platform_settings, max_impressions=3, **kw)
    assert latest.request_ids == ["r7", "r8", "r9"]  # the latest decisions (r10.. have no rewards yet)


def test_missing_topic_is_not_found(platform_settings, stack, unique):
    with pytest.raises(NotFound, match="does not exist"):
        from_kafka(platform_settings, impressions_topic=f"test.ope.none.{unique}", timeout_s=10)
