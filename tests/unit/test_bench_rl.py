"""`recpilot bench rl --from-json`: runs on disjoint seeds merge into the report one run on all of
them gives (the per-seed figures side by side, the table computed again)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from bench import rl
from recpilot.errors import InvalidArgument


def _result(method: str, seed: int, ctr: float, n: int = 40, k: int = 10) -> dict:
    rng = np.random.default_rng(seed * 7 + len(method))
    return {"method": method, "seed": seed, "clicks": rng.binomial(k, ctr, n).astype(float),
            "shown": np.full(n, float(k)), "true": np.full(n, ctr), "greedy": np.full(5, ctr + 0.01),
            "oracle": np.full(5, 0.09), "seconds": 0.4 + seed}


def _report(seeds, methods=("uniform", "qlearn")) -> dict:
    args = argparse.Namespace(window=10, impressions=40)
    res = [_result(m, s, 0.05 if m == "uniform" else 0.07) for s in seeds for m in methods]
    return json.loads(json.dumps({k: v for k, v in rl.summarise(res, list(methods), list(seeds), args).items()
                                  if k != "table"}))


def test_merged_runs_equal_one_run_on_all_seeds():
    whole = rl.summarise([_result(m, s, 0.05 if m == "uniform" else 0.07) for s in range(5)
                          for m in ("uniform", "qlearn")], ["uniform", "qlearn"], list(range(5)),
                         argparse.Namespace(window=10, impressions=40))
    merged = rl.merge([_report([0, 1]), _report([2, 3, 4])])
    assert merged["seeds"] == [0, 1, 2, 3, 4]
    assert merged["table"] == whole["table"]
    assert np.allclose(merged["curves"]["qlearn"], whole["curves"]["qlearn"])
    q = next(r for r in merged["rows"] if r["method"] == "qlearn")
    assert len(q["final_ctr"]) == 5 and q["ms"] == pytest.approx(1000 * np.mean([0.4 + s for s in range(5)]) / 40)
    assert "5 seeds" in merged["table"]


def test_merge_refuses_shared_seeds_and_other_budgets():
    with pytest.raises(InvalidArgument, match="share seeds"):
        rl.merge([_report([0, 1]), _report([1, 2])])
    other = _report([3])
    other["impressions"] = 80
    with pytest.raises(InvalidArgument, match="budgets"):
        rl.merge([_report([0]), other])


def test_only_methods_every_run_has_are_merged():
    merged = rl.merge([_report([0], ("uniform", "qlearn")), _report([1], ("uniform",))])
    assert list(merged["curves"]) == ["uniform"] and [r["method"] for r in merged["rows"]] == ["uniform"]
