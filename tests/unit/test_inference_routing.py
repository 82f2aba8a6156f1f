"""Canary split, hot swap under concurrent load, failed loads keep the old version."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES
from recpilot.models import deployments as dep
from recpilot.pb import deployments_pb2 as pb
from services.inference.routing import Desired, ModelManager, is_canary
from services.inference.settings import BatchingConfig
from bench.toymodel import build_module, write_version

D, K = len(DENSE_FEATURES), len(ID_FEATURES)


@pytest.mark.parametrize("percent", [1.0, 5.0, 10.0, 37.5])
def test_canary_share_within_two_points_over_10000_users(percent):
    users = [f"u{i}" for i in range(10_000)]
    share = sum(is_canary(u, percent) for u in users) / len(users) * 100
    assert abs(share - percent) <= 2.0
    state = pb.DeploymentState(production_version="1", canary_version="2", canary_percent=percent)
    assert all(is_canary(u, percent) == dep.routes_to_canary(state, u) for u in users[:2000])  # same rule


def test_canary_is_sticky_and_monotonic():
    users = [f"user-{i}" for i in range(3000)]
    at10 = {u for u in users if is_canary(u, 10)}
    at20 = {u for u in users if is_canary(u, 20)}
    assert at10 <= at20 and at10 == {u for u in users if is_canary(u, 10)}


def _inputs(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, D)).astype(np.float32),
            np.stack([rng.integers(0, b, size=n) for _, b in ID_FEATURES], axis=1).astype(np.int64))


def _expected(seed, dense, ids):
    import torch

    with torch.inference_mode():
        return build_module(seed)(torch.from_numpy(dense), torch.from_numpy(ids)).numpy()


@pytest.fixture
def repo(tmp_path):
    versions = {seed: write_version(tmp_path, "ranker", seed=seed) for seed in (11, 12, 13)}
    bad = write_version(tmp_path, "ranker", corrupt=True)
    return tmp_path, versions, bad


def test_hot_swap_under_load_fails_no_request_and_switches_versions(repo, wait_until_async):
    root, versions, _bad = repo
    v1, v2, v3 = versions[11], versions[12], versions[13]
    dense, ids = _inputs()
    exp = {versions[s]: _expected(s, dense, ids) for s in versions}
    failures, answered = [], {v1: 0, v2: 0, v3: 0}

    async def main():
        loop = asyncio.get_running_loop()
        ex = ThreadPoolExecutor(1)
        mgr = ModelManager(root, ["ranker"], device="cpu", executor=ex, loop=loop,
                           batching_for=lambda _n: BatchingConfig(max_queue_delay_ms=1))
        await loop.run_in_executor(None, mgr.reconcile, "ranker", Desired(production=v1))
        stop = asyncio.Event()

        async def client():
            while not stop.is_set():
                mv = mgr.routes("ranker").production
                try:
                    got = await mv.score(dense, ids)
                    np.testing.assert_allclose(got, exp[mv.version], rtol=1e-5, atol=1e-6)
                    answered[mv.version] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is recorded
                    if type(exc).__name__ == "BatcherClosed":  # the service re-routes these
                        mv2 = mgr.routes("ranker").production
                        got = await mv2.score(dense, ids)
                        np.testing.assert_allclose(got, exp[mv2.version], rtol=1e-5, atol=1e-6)
                        answered[mv2.version] += 1
                    else:
                        failures.append(repr(exc))

        async def answers_from(version):  # the clients get answers from the version now serving
            start = answered[version]
            await wait_until_async(lambda: answered[version] > start or failures, 30,
                                   lambda: f"no answer from version {version}; failures {failures}")

        tasks = [loop.create_task(client()) for _ in range(16)]
        await answers_from(v1)
        for target in (v2, v3, v1, v2):  # four swaps while 16 clients hammer the model
            res = await loop.run_in_executor(None, mgr.reconcile, "ranker", Desired(production=target))
            assert not res.failed and mgr.routes("ranker").production.version == target
            await answers_from(target)
        stop.set()
        await asyncio.gather(*tasks)
        await mgr.close()
        ex.shutdown()

    asyncio.run(main())
    assert failures == []
    assert all(n > 0 for n in answered.values())


def _serve_then_try(root, good: str, candidate: str):
    """Serve ``good``, ask for ``candidate`` as production, score once: (result, manager, scores, inputs)."""

    async def main():
        loop = asyncio.get_running_loop()
        ex = ThreadPoolExecutor(1)
        mgr = ModelManager(root, ["ranker"], device="cpu", executor=ex, loop=loop,
                           batching_for=lambda _n: BatchingConfig())
        await loop.run_in_executor(None, mgr.reconcile, "ranker", Desired(production=good))
        res = await loop.run_in_executor(None, mgr.reconcile, "ranker", Desired(production=candidate, revision=2))
        dense, ids = _inputs()
        got = await mgr.routes("ranker").production.score(dense, ids)
        await mgr.close()
        ex.shutdown()
        return res, mgr, got, dense, ids

    return asyncio.run(main())


def test_corrupt_version_leaves_the_old_one_serving(repo):
    root, versions, bad = repo
    v1 = versions[11]
    res, mgr, got, dense, ids = _serve_then_try(root, v1, bad)
    assert bad in res.failed and "TorchScript" in res.failed[bad]
    assert mgr.routes("ranker").production.version == v1
    np.testing.assert_allclose(got, _expected(11, dense, ids), rtol=1e-5, atol=1e-6)


def test_tampered_version_is_refused_and_the_old_one_keeps_serving(repo):
    """A published artifact with other weights, same size, still valid TorchScript, would load and
    serve; the manifest check refuses it before torch reads it."""
    from tests.support.repository import negated_weights, tamper

    root, versions, _bad = repo
    v1 = versions[11]
    forged = write_version(root, "ranker", seed=14)
    artifact = root / "ranker" / forged / "model.pt"
    tamper(artifact, negated_weights(artifact.read_bytes()))  # same size: only the hash can tell
    res, mgr, got, dense, ids = _serve_then_try(root, v1, forged)
    assert forged in res.failed and "model.pt: content changed (sha256 mismatch)" in res.failed[forged]
    assert mgr.routes("ranker").production.version == v1
    np.testing.assert_allclose(got, _expected(11, dense, ids), rtol=1e-5, atol=1e-6)


def test_canary_and_shadow_routes(repo):
    root, versions, _ = repo
    v1, v2, v3 = versions[11], versions[12], versions[13]
    ex = ThreadPoolExecutor(1)
    mgr = ModelManager(root, ["ranker"], device="cpu", executor=ex, batching_for=lambda _n: BatchingConfig())
    mgr.reconcile("ranker", Desired(production=v1, canary=v2, canary_percent=25.0, shadow=v3))
    r = mgr.routes("ranker")
    users = [f"u{i}" for i in range(4000)]
    chosen = [r.choose(u) for u in users]
    assert {mv.version for mv, _ in chosen} == {v1, v2}
    assert all((mv.version == v2) == (var == "canary") == is_canary(u, 25.0) for u, (mv, var) in zip(users, chosen))
    assert r.shadow.version == v3 and mgr.find("ranker", v3) is r.shadow
    # promote the canary: the loaded canary object becomes production, nothing reloaded
    canary_obj = r.canary
    res = mgr.reconcile("ranker", Desired(production=v2))
    assert res.loaded == [] and sorted(res.unloaded) == sorted([v1, v3])
    assert mgr.routes("ranker").production is canary_obj and mgr.routes("ranker").canary is None
    ex.shutdown()


@pytest.fixture
def hanging_load(repo, monkeypatch):
    """Loads of version ``versions[12]`` hang until ``release`` is set; ``hanging`` is set once one
    has started. Returns ``(hanging, release)``."""
    import threading

    from services.inference import routing

    _root, versions, _bad = repo
    hanging, release = threading.Event(), threading.Event()
    real_load = routing.load_version

    def load(root_, name, version, **kw):
        if version == versions[12]:
            hanging.set()
            release.wait(30)
        return real_load(root_, name, version, **kw)

    monkeypatch.setattr(routing, "load_version", load)
    yield hanging, release
    release.set()


def _in_thread(results: dict, key: str, fn, *args):
    import threading

    t = threading.Thread(target=lambda: results.update({key: fn(*args)}))
    t.start()
    return t


def test_a_hanging_load_times_out_and_never_blocks_a_rollback(repo, hanging_load):
    """v2 hangs while loading: a rollback to the loaded v1 goes through at once (the lock is not held
    by the load), the hung reconcile gives up at its timeout without overwriting the rollback, and
    a late end of the load changes nothing."""
    from prometheus_client import REGISTRY

    root, versions, _bad = repo
    v1, v2, v3 = versions[11], versions[12], versions[13]
    hanging, release = hanging_load
    ex = ThreadPoolExecutor(1)
    mgr = ModelManager(root, ["ranker"], device="cpu", executor=ex, batching_for=lambda _n: BatchingConfig(),
                       load_timeout_s=5.0)

    def timeouts():
        return REGISTRY.get_sample_value("recpilot_inference_model_loads_total",
                                         {"model": "ranker", "outcome": "timeout"}) or 0.0

    before = timeouts()
    assert mgr.reconcile("ranker", Desired(production=v1, revision=1)).loaded == [v1]
    assert mgr.reconcile("ranker", Desired(production=v1, canary=v3, canary_percent=5, revision=2)).loaded == [v3]
    results = {}
    deploy = _in_thread(results, "v2", mgr.reconcile, "ranker", Desired(production=v2, revision=3))
    assert hanging.wait(10)
    rollback = mgr.reconcile("ranker", Desired(production=v1, revision=4))  # the canary is dropped
    assert deploy.is_alive(), "the rollback waited for the hanging load"
    assert rollback.failed == {} and rollback.unloaded == [v3]
    assert mgr.routes("ranker").production.version == v1 and mgr.routes("ranker").revision == 4
    deploy.join(10)
    assert not deploy.is_alive()
    assert "did not load within 5 s" in results["v2"].failed[v2]
    assert timeouts() == before + 1
    assert mgr.routes("ranker").production.version == v1 and mgr.routes("ranker").revision == 4  # not overwritten
    release.set()  # the load ends late: its version is dropped, nothing changes
    assert mgr.find("ranker", v2) is None and mgr.routes("ranker").revision == 4
    ex.shutdown()


def test_a_newer_reconcile_wins_over_an_older_one_that_finishes_its_loads_later(repo, hanging_load):
    root, versions, _bad = repo
    v1, v2 = versions[11], versions[12]
    slow, release = hanging_load
    ex = ThreadPoolExecutor(1)
    mgr = ModelManager(root, ["ranker"], device="cpu", executor=ex, batching_for=lambda _n: BatchingConfig())
    mgr.reconcile("ranker", Desired(production=v1, revision=1))
    results = {}
    older = _in_thread(results, "old", mgr.reconcile, "ranker", Desired(production=v2, revision=2))
    assert slow.wait(10)
    newer = mgr.reconcile("ranker", Desired(production=v1, policy_version="p2", revision=3))
    release.set()
    older.join(30)
    assert newer.failed == {} and results["old"].failed == {} and results["old"].loaded == []
    r = mgr.routes("ranker")
    assert r.production.version == v1 and r.revision == 3 and r.policy_version == "p2"
    ex.shutdown()


def test_deployment_sync_applies_a_rollback_while_a_load_hangs(repo, hanging_load, wait_until):
    """Through DeploymentSync: a deploy of v2 whose load hangs, then a rollback to the loaded v1: the
    rollback serves within a second (not after model_load_timeout_s), both commands are acknowledged,
    and the late end of the load changes nothing."""
    import threading

    from services.inference.routing import DeploymentSync

    root, versions, _bad = repo
    v1, v2 = versions[11], versions[12]
    hanging, release = hanging_load
    ex = ThreadPoolExecutor(1)
    mgr = ModelManager(root, ["ranker"], device="cpu", executor=ex, batching_for=lambda _n: BatchingConfig(),
                       load_timeout_s=30.0)

    class Follower:  # the deployment log, already caught up
        ready = True

        def __init__(self, on_change):
            self.on_change, self.acks = on_change, []
            self.st = pb.DeploymentState(model_name="ranker", production_version=v1, revision=1)

        def start(self):
            pass

        def stop(self):
            pass

        def state(self, _name):
            return self.st

        def ack(self, cmd, status, message):
            self.acks.append((cmd.command_id, status, message))

        def change(self, command_id, action, version, revision):
            self.st = pb.DeploymentState(model_name="ranker", production_version=version, revision=revision)
            self.on_change(self.st, pb.DeploymentCommand(command_id=command_id, action=action, model_name="ranker",
                                                         version=version))

    sync = DeploymentSync(mgr, Follower)
    follower = sync.follower
    sync.start()
    try:
        wait_until(lambda: sync.ready and mgr.loaded("ranker"), 30, "v1 never served")
        follower.change("deploy-v2", pb.DEPLOY, v2, 2)
        assert hanging.wait(10)
        follower.change("rollback", pb.ROLLBACK, v1, 3)
        wait_until(lambda: mgr.routes("ranker").revision == 3, 1.0, "the rollback waited for the hanging load")
        assert mgr.routes("ranker").production.version == v1
        wait_until(lambda: len(follower.acks) == 2, 5, lambda: f"acks: {follower.acks}")
        assert {cid: status for cid, status, _ in follower.acks} == {"deploy-v2": pb.APPLIED, "rollback": pb.APPLIED}
        assert "superseded" in dict((c, m) for c, _, m in follower.acks)["deploy-v2"]
        release.set()  # the load ends late: its reconcile is superseded, nothing changes
        wait_until(lambda: not any(t.name == "reconcile-ranker" for t in threading.enumerate()), 30,
                   "the superseded reconcile never ended")
        r = mgr.routes("ranker")
        assert r.production.version == v1 and r.revision == 3 and mgr.find("ranker", v2) is None
        assert len(follower.acks) == 2
    finally:
        sync.stop()
        ex.shutdown()
