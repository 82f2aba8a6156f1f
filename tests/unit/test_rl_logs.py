"""Logged-slates readers (recpilot.rl.logs): impressions + rewards joined into decisions, the file
round trip, the Open Bandit layout (a tiny folder written by the fixture)."""

from __future__ import annotations

import numpy as np
import pytest

from recpilot.errors import InvalidArgument, NotFound
from recpilot.rl.features import POLICY_FEATURES
from recpilot.rl.logs import assemble, from_file, from_obd, to_file
from tests.support.rl_logs import impression, pool_dense, reward


def _rewards(imps, values):
    out = {}
    for imp, vals in zip(imps, values):
        for it, v in zip(imp.items, vals):
            rw = reward(imp, it.item_id, v)
            out[(rw.request_id, rw.item_id)] = rw.reward
    return out


def test_impressions_and_rewards_become_decisions():
    imps = [impression(0), impression(1, m=3, shown=(1, 2, 0), props=(0.9, 0.05, 0.05)),
            impression(2, with_pool=False), impression(3), impression(0)]
    rewards = _rewards(imps[:3], [(1.0, 0.0), (0.0, 0.0, 2.5), (1.0, 1.0)])
    rewards[("r3", "i3-2")] = 1.0  # r3's second item has no reward yet: its window is open
    logs = assemble(imps, rewards, source="t")
    assert logs.n == 2 and logs.request_ids == ["r0", "r1"] and logs.k == 3 and logs.x.shape == (2, 4, len(POLICY_FEATURES))
    assert logs.meta == {"impressions": 5, "no_pool": 1, "malformed": 0, "no_reward": 1, "duplicates": 1, "decisions": 2}
    np.testing.assert_array_equal(logs.mask, [[True] * 4, [True, True, True, False]])
    np.testing.assert_array_equal(logs.shown, [[2, 0, -1], [1, 2, 0]])
    np.testing.assert_allclose(logs.propensity, [[0.5, 0.25, 0], [0.9, 0.05, 0.05]], rtol=1e-6)
    np.testing.assert_array_equal(logs.reward, [[1, 0, 0], [0, 0, 2.5]])
    # policy inputs: the pool's dense rows then the ranker score
    np.testing.assert_array_equal(logs.x[1, :3, :-1], pool_dense(1, 3))
    np.testing.assert_allclose(logs.x[1, :3, -1], [0.5, 0.25, 0.5 / 3], rtol=1e-6)
    assert not logs.x[1, 3].any()


def test_keep_last_streams_and_keeps_the_latest_decisions_counting_every_impression():
    imps = [impression(r) for r in range(6)] + [impression(2)]
    rewards = _rewards(imps[:6], [(r % 2, 1.0) for r in range(6)])
    del rewards[("r4", "i4-0")]  # r4: its window is still open
    full = assemble(imps, rewards)
    last = assemble(iter(imps), rewards, keep_last=3)  # a generator: the gate's read streams them
    assert full.request_ids == ["r0", "r1", "r2", "r3", "r5"] and last.request_ids == ["r2", "r3", "r5"]
    assert last.meta == {**full.meta, "decisions": 3} and full.meta["impressions"] == 7
    for name in ("x", "mask", "shown", "propensity", "reward"):
        np.testing.assert_array_equal(getattr(last, name), getattr(full, name)[2:])


def test_malformed_impressions_are_counted_not_used():
    bad_index = impression(0)
    bad_index.items[0].pool_index = 7
    wrong_item = impression(1)
    wrong_item.items[1].pool_index = 3  # row 3 is another item than the one shown
    short_dense = impression(2)
    del short_dense.pool_dense[-1]
    imps = [bad_index, wrong_item, short_dense]
    logs = assemble(imps, _rewards(imps, [(1, 1)] * 3))
    assert logs.n == 0 and logs.meta["malformed"] == 3


def test_file_round_trip(tmp_path):
    imps = [impression(r) for r in range(5)]
    logs = assemble(imps, _rewards(imps, [(r % 2, 1.0) for r in range(5)]), source="kafka:test")
    path = to_file(logs, tmp_path / "logs")
    assert path.name == "logs.npz"
    back = from_file(path)
    for name in ("x", "mask", "shown", "propensity", "reward"):
        np.testing.assert_array_equal(getattr(back, name), getattr(logs, name), err_msg=name)
        assert getattr(back, name).dtype == getattr(logs, name).dtype
    assert back.features == logs.features and back.request_ids == logs.request_ids
    assert back.source == "kafka:test" and back.meta == logs.meta
    logs.request_ids = None
    assert from_file(to_file(logs, tmp_path / "b.npz")).request_ids is None


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(NotFound):
        from_file(tmp_path / "nope.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(InvalidArgument, match="not a logged slates file"):
        from_file(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgument, match="cannot read"):
        from_file(tmp_path / "junk.npz")


def test_obd_rows_are_one_slot_decisions_over_all_items(tmp_path, write_obd):
    import pandas as pd

    root = write_obd(tmp_path, rows=30)
    df = pd.read_csv(root / "random" / "all.csv", index_col=0)
    logs = from_obd(root, "random")
    assert logs.n == 30 and logs.k == 3 and logs.x.shape[1] == 3 and logs.mask.all()
    for i, row in enumerate(df.itertuples()):
        j = row.position - 1
        assert logs.shown[i, j] == row.item_id and logs.reward[i, j] == row.click
        assert logs.propensity[i, j] == pytest.approx(1 / 3)
        assert (logs.shown[i] >= 0).sum() == 1
        f = logs.features
        for a in range(3):
            assert logs.x[i, a, f.index("user_item_affinity")] == pytest.approx(getattr(row, f"_{10 + a}"), rel=1e-6)
    f = logs.features
    np.testing.assert_allclose(logs.x[0, :, f.index("item_feature_0")], [0.1, 0.2, 0.3], rtol=1e-6)
    # categories are named by their smallest item: the fixture's three items are three categories each
    assert [n for n in f if n.startswith("item_feature_1=")] == ["item_feature_1=i0", "item_feature_1=i1", "item_feature_1=i2"]
    np.testing.assert_array_equal(logs.x[5, :, f.index("item_feature_2=i1")], [0, 1, 0])
    # user features: one bucket set per feature
    assert logs.x[:, :, [n.startswith("user_feature_0#") for n in f]].sum(axis=2).min() == 1
    assert logs.meta["clicks"] == int(df["click"].sum()) and logs.source == "obd:random"
    assert from_obd(root, "bts").features == f
