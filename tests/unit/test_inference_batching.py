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


POISON = -1.0  # a dense value the poisoned test model refuses


def _poisonable(model):
    def predict(d, i):
        if np.any(d == POISON):
            raise ValueError("poisoned row")
        return model.predict(d, i)

    return predict


@pytest.mark.parametrize("threads", [1, 0], ids=["compute-thread", "inline"])
def test_a_poisoned_request_fails_alone_and_its_batch_neighbours_are_answered(model, threads):
    from prometheus_client import REGISTRY

    callers = [_inputs(i, n) for i, n in enumerate([3, 5, 2, 4, 6])]
    bad_d, bad_i = _inputs(99, 3)
    bad_d[1, 0] = POISON
    label = f"poison-{threads}"

    async def run():
        ex = ThreadPoolExecutor(threads) if threads else None
        b = DynamicBatcher(label, _poisonable(model), BatchingConfig(max_queue_delay_ms=20), ex)
        calls = callers[:2] + [(bad_d, bad_i)] + callers[2:]
        out = await asyncio.gather(*(b.infer(d, i) for d, i in calls), return_exceptions=True)
        await b.close()
        if ex is not None:
            ex.shutdown()
        return out, b

    out, b = asyncio.run(run())
    assert isinstance(out[2], ValueError) and "poisoned" in str(out[2])
    good = out[:2] + out[3:]
    for (d, i), got in zip(callers, good):
        np.testing.assert_allclose(got, model.predict(d, i), rtol=1e-5, atol=1e-6)
    assert REGISTRY.get_sample_value("recpilot_inference_batch_retries_total", {"model": label}) == 1.0
    assert b.requests == len(callers)  # the answered ones: one batch failed, then each alone


def test_a_model_that_raises_at_execution_fails_its_callers_and_keeps_serving(model):
    broken = {"on": True}

    def flaky(d, i):
        if broken["on"]:
            raise RuntimeError("CUDA error: an illegal memory access")
        return model.predict(d, i)

    async def run():
        ex = ThreadPoolExecutor(1)
        b = DynamicBatcher("raises", flaky, BatchingConfig(max_queue_delay_ms=20), ex)
        (d1, i1), (d2, i2) = _inputs(1, 3), _inputs(2, 4)
        first = await asyncio.gather(b.infer(d1, i1), b.infer(d2, i2), return_exceptions=True)
        broken["on"] = False
        after = await b.infer(d1, i1)
        await b.close()
        ex.shutdown()
        return first, after, (d1, i1)

    first, after, (d1, i1) = asyncio.run(run())
    assert all(isinstance(r, RuntimeError) and "illegal memory access" in str(r) for r in first)
    np.testing.assert_allclose(after, model.predict(d1, i1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "unbatched"])
def test_an_execution_past_every_deadline_is_abandoned_counted_and_others_go_on(model, batching):
    """A model that hangs on one input: its caller gives up at its deadline, the execution is
    abandoned and counted, and the next request runs on a spare compute thread."""
    import threading

    from prometheus_client import REGISTRY

    from services.inference.batching import ComputePool

    release = threading.Event()
    label = f"hangs-{batching}"

    def hangs(d, i):
        if np.any(d == POISON):
            release.wait(30)
        return model.predict(d, i)

    def abandoned():
        return REGISTRY.get_sample_value("recpilot_inference_executions_abandoned_total", {"model": label}) or 0.0

    async def run():
        pool = ComputePool(1, "test-compute")
        b = DynamicBatcher(label, hangs, BatchingConfig(enabled=batching, max_queue_delay_ms=1), pool)
        bad_d, bad_i = _inputs(7, 2)
        bad_d[0, 0] = POISON
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):  # the caller's deadline
                    await b.infer(bad_d, bad_i)
            d, i = _inputs(8, 5)
            async with asyncio.timeout(10):  # not stuck behind the hung execution
                got = await b.infer(d, i)
            threads = pool.threads
        finally:
            release.set()
        await b.close()
        pool.shutdown()
        return got, d, i, b, threads

    got, d, i, b, threads = asyncio.run(run())
    np.testing.assert_allclose(got, model.predict(d, i), rtol=1e-5, atol=1e-6)
    assert b.abandoned == 1 and abandoned() == 1.0
    assert threads == 2  # the stuck one and its spare


def test_compute_pool_replaces_a_stuck_thread_and_retires_the_spare(wait_until):
    import threading

    from services.inference.batching import ComputePool

    pool = ComputePool(1, "test-pool", max_spares=1)
    gate = threading.Event()
    stuck = pool.submit(gate.wait, 30)
    wait_until(stuck.running, 5, "the task never started")
    assert pool.lost(stuck) and pool.threads == 2
    for n in range(5):  # the spare keeps serving while the first thread is stuck
        assert pool.submit(lambda x: x * 2, n).result(5) == n * 2
    assert pool.threads == 2
    stuck2 = pool.submit(gate.wait, 30)  # now the spare is stuck too
    wait_until(stuck2.running, 5, "the second task never started")
    assert not pool.lost(stuck2) and pool.threads == 2  # at the cap
    gate.set()
    assert stuck.result(5) and stuck2.result(5)
    wait_until(lambda: pool.threads == 1, 5, lambda: f"{pool.threads} threads")  # the stuck one came back
    assert pool.submit(sum, [1, 2]).result(5) == 3
    pool.shutdown()
