"""`recpilot bench ope --part sim`: its bookkeeping on a tiny shop (no ranker, an untrained target)."""

import numpy as np

from bench.ope import sim_part, sim_table
from recpilot.rl.fastshop import FastConfig

SMALL = dict(n_users=300, n_items=200, concurrent_sessions=20, warmup_events=1500, num_candidates=60, pool_size=12, k=4)


def _scorer(dense, ids):
    return dense[:, 0].astype(np.float64)  # any fixed score: the logger's order


def test_sim_part_reports_every_seed_against_the_truth():
    r = sim_part(2, 50, 30, "epsilon_greedy:0.3", "epsilon_greedy:0.05", n_boot=20, level=0.9, q_steps=5,
                 cfg=FastConfig(seed=3, **SMALL), scorer=_scorer, progress=lambda m: None)
    assert [row["seed"] for row in r["rows"]] == [0, 1]
    for row in r["rows"]:
        assert row["decisions"] == 50
        assert 0 < row["truth"] < 1 and 0 <= row["realised"] <= 1
        assert 0 <= row["unsupported"] <= 1
        for name, e in row["estimates"].items():
            assert e["lo"] <= e["value"] <= e["hi"] or name == "snips"
            assert np.isclose(e["rel_error"], (e["value"] - row["truth"]) / row["truth"])
            assert e["covered"] == (e["lo"] <= row["truth"] <= e["hi"])
    for name, s in r["summary"].items():
        rel = [row["estimates"][name]["rel_error"] for row in r["rows"]]
        assert s["within_10pct"] == sum(abs(x) <= 0.10 for x in rel)
        assert s["covered"] == sum(row["estimates"][name]["covered"] for row in r["rows"])
        assert np.isclose(s["mean_rel_error"], np.mean(rel))
    table = sim_table(r)
    assert table.count("\n| 0 |") == 1 and "| dr | " in table
