"""Dynamic batching with a real TorchScript model: per-caller results identical to unbatched."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES
from services.inference.backends import load_version
from services.inference.batching import DynamicBatcher, QueueFull
from services.inference.settings import BatchingConfig
from bench.toymodel import write_version

D, K = len(DENSE_FEATURES), len(ID_FEATURES)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    v = write_version(root, "ranker", seed=3)
    ex = ThreadPoolExecutor(1)
    mv = load_version(root, "ranker", v, device="cpu", batching=BatchingConfig(), executor=ex)
    yield mv.model
    ex.shutdown()


def _inputs(seed: int, n: int):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, D)).astype(np.float32)
    ids = np.stack([rng.integers(0, b, size=n) for _, b in ID_FEATURES], axis=1).astype(np.int64)
    return dense, ids


@pytest.mark.parametrize("threads", [1, 0], ids=["compute-thread", "inline"])
def test_batched_scores_equal_unbatched_per_caller(model, threads):
    callers = [_inputs(i, n) for i, n in enumerate([1, 7, 200, 3, 50] * 8)]  # 40 concurrent callers
    expected = [model.predict(d, i) for d, i in callers]

    async def run(cfg):
        ex = ThreadPoolExecutor(threads) if threads else None  # None: executions on the event loop
        b = DynamicBatcher("t", model.predict, cfg, ex)
        try:
            out = await asyncio.gather(*(b.infer(d, i) for d, i in callers))
            return out, b
        finally:
            await b.close()
            if ex is not None:
                ex.shutdown()

    batched, b_on = asyncio.run(run(BatchingConfig(max_batch_size=4096, max_queue_delay_ms=5)))
    single, b_off = asyncio.run(run(BatchingConfig(enabled=False)))
    for exp, got_b, got_s in zip(expected, batched, single):
        assert got_b.shape == exp.shape
        np.testing.assert_allclose(got_b, exp, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_s, exp, rtol=1e-5, atol=1e-6)
    assert b_on.requests == len(callers) and b_off.requests == len(callers)
    assert b_off.executions == len(callers)
    assert b_on.executions < len(callers) / 2  # concurrent callers really shared executions


def test_max_batch_size_splits_and_oversized_request_runs_alone(model):
    rows = []

    def predict(d, i):
        rows.append(d.shape[0])
        return model.predict(d, i)

    async def run():
        ex = ThreadPoolExecutor(1)
        b = DynamicBatcher("t", predict, BatchingConfig(max_batch_size=100, max_queue_delay_ms=5), ex)
        calls = [_inputs(i, n) for i, n in enumerate([60, 60, 250, 30])]
        out = await asyncio.gather(*(b.infer(d, i) for d, i in calls))
        await b.close()
        ex.shutdown()
        return calls, out

    calls, out = asyncio.run(run())
    assert max(rows) == 250 and sorted(rows) != [400]  # never more than 100 rows unless one request is bigger
    assert all(r <= 100 or r == 250 for r in rows)
    for (d, i), got in zip(calls, out):
        np.testing.assert_allclose(got, model.predict(d, i), rtol=1e-5, atol=1e-6)


def test_queue_full_is_refused(model):
    async def run():
        ex = ThreadPoolExecutor(1)
        b = DynamicBatcher("t", model.predict, BatchingConfig(max_queue_size=2, max_queue_delay_ms=50), ex)
        d, i = _inputs(0, 4)
        results = await asyncio.gather(*(b.infer(d, i) for _ in range(5)), return_exceptions=True)
        await b.close()
        ex.shutdown()
        return results

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, QueueFull)]
    served = [r for r in results if isinstance(r, np.ndarray)]
    assert len(refused) == 3 and len(served) == 2


def test_unbatched_in_flight_limit(model):
    async def run():
        ex = ThreadPoolExecutor(1)
        b = DynamicBatcher("t", model.predict, BatchingConfig(enabled=False, max_queue_size=3), ex)
        d, i = _inputs(0, 4)
        results = await asyncio.gather(*(b.infer(d, i) for _ in range(5)), return_exceptions=True)
        await b.close()
        ex.shutdown()
        return results

    results = asyncio.run(run())
    assert sum(isinstance(r, QueueFull) for r in results) == 2
    assert sum(isinstance(r, np.ndarray) for r in results) == 3
