"""`recpilot bench policy`: what a learned re-ranking policy adds to a Recommend call.

Times the policy step of the serving path (:meth:`services.inference.policy.Policy.choose` on the
ranker's candidates: the top-M pool, one batched TorchScript call of the policy for the pool's
values, the stratified slate with its propensities) for the ranker's order and for a learned
policy (an MLP of the given width with random weights, written to and loaded from a temporary
model repository exactly as serving loads it), one thread, as the serving event loop runs it.
Prints p50 / p99 / mean microseconds per request and the added cost over the ranker's order.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import machine


def _mlp(width: int, layers: int):
    import torch

    from recpilot.rl.features import POLICY_FEATURES

    torch.manual_seed(0)
    mods, d = [], len(POLICY_FEATURES)
    for _ in range(layers):
        mods += [torch.nn.Linear(d, width), torch.nn.ReLU()]
        d = width
    mods.append(torch.nn.Linear(d, 1))

    class Q(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(*mods)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).squeeze(-1)

    return Q()


def _time(policy, scores, dense, k: int, n: int) -> dict:
    for _ in range(200):  # warm-up
        policy.choose(scores, dense, k)
    lat = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        policy.choose(scores, dense, k)
        lat[i] = time.perf_counter() - t0
    us = lat * 1e6
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1),
            "mean_us": round(float(us.mean()), 1)}


def run(args: argparse.Namespace) -> int:
    import torch

    from recpilot.featurespec import DENSE_FEATURES
    from recpilot.models.repository import ModelRepository
    from recpilot.rl.artifact import write_policy_version
    from recpilot.rl.features import POLICY_FEATURES
    from recpilot.rl.slate import Exploration
    from services.inference.backends import configure_threads
    from services.inference.policy import RankerOrderPolicy, load_learned

    configure_threads(1, 1)  # the inference defaults (intra_op_threads, inter_op_threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    scores = rng.random(args.candidates).astype(np.float32)
    dense = rng.random((args.candidates, len(DENSE_FEATURES))).astype(np.float32)
    out: dict = {"machine": machine(), "candidates": args.candidates, "pool": args.pool, "k": args.k,
                 "requests": args.requests, "policy_mlp": f"{len(POLICY_FEATURES)}-" + "-".join(
                     [str(args.width)] * args.layers) + "-1", "results": {}}
    out["results"]["ranker-order"] = _time(RankerOrderPolicy(args.pool), scores, dense, args.k, args.requests)
    with tempfile.TemporaryDirectory() as d:
        repo = ModelRepository(Path(d))
        for rule in args.exploration:
            v = write_policy_version(repo, "ranker", _mlp(args.width, args.layers), list(POLICY_FEATURES),
                                     Exploration.parse(rule), pool_size=args.pool, gamma=0.0,
                                     training={"source": "bench"})
            pol = load_learned(Path(d), "ranker", v, args.pool)
            out["results"][f"learned {rule}"] = _time(pol, scores, dense, args.k, args.requests)
    base = out["results"]["ranker-order"]
    for name, r in out["results"].items():
        r["added_p50_us"] = round(r["p50_us"] - base["p50_us"], 1)
        r["added_p99_us"] = round(r["p99_us"] - base["p99_us"], 1)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"machine: {out['machine']}")
    print(f"{args.candidates} candidates, pool {args.pool}, k {args.k}, policy MLP {out['policy_mlp']}, "
          f"{args.requests} requests each, 1 thread")
    print(f"{'policy':<28} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'+p50 us':>8} {'+p99 us':>8}")
    for name, r in out["results"].items():
        print(f"{name:<28} {r['p50_us']:>8} {r['p99_us']:>8} {r['mean_us']:>8} {r['added_p50_us']:>8} "
              f"{r['added_p99_us']:>8}")
    return 0
