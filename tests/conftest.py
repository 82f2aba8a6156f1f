"""Test tiers share one real stack: Kafka and Redis started by the project's own stack manager.

The test stack lives in ``.recpilot-test/`` on its own ports (Kafka 19092, controller 19093,
Redis 16379), so a developer's `recpilot up` on the default ports is never touched. These
variables are set before any recpilot module reads settings, and child processes (services
started by tests) inherit them.

`make test` runs the suite but the ``platform`` tests on two pytest-xdist workers (``-n 2 --dist
loadfile``), then those alone: each test file runs whole on one worker, files go out in the order
``ORDER`` below gives them. A fixed port is a
worker's own (``redis_cluster``: offset by the worker's number). The workers share the one test
stack: the first to need it starts it under a file lock, and the controller stops it at the end
when this run started it. (``--dist loadgroup`` would group across files, but pytest 9 ignores the
node id suffix xdist 3.8 gives a group.)
"""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

import pytest

from recpilot.paths import REPO_ROOT

TEST_ENV = {
    "RECPILOT_HOME": str(REPO_ROOT / ".recpilot-test"),
    "RECPILOT_KAFKA_PORT": "19092",
    "RECPILOT_KAFKA_CONTROLLER_PORT": "19093",
    "RECPILOT_REDIS_PORT": "16379",
    "RECPILOT_KAFKA_HEAP_MB": "512",
}
for _k, _v in TEST_ENV.items():
    os.environ.setdefault(_k, _v)


def _worker() -> str | None:
    return os.environ.get("PYTEST_XDIST_WORKER")


def _started_marker() -> Path:
    """Written by the worker that started the shared stack: the controller stops it at the end."""
    return Path(TEST_ENV["RECPILOT_HOME"]) / f"stack-started-by-{os.environ['RECPILOT_TEST_RUN']}"


def pytest_configure(config):
    if _worker() is None:  # the controller (or a run without xdist): the workers inherit this
        os.environ["RECPILOT_TEST_RUN"] = uuid.uuid4().hex[:12]


def pytest_sessionfinish(session, exitstatus):
    if _worker() is None and os.environ.get("RECPILOT_TEST_RUN"):
        marker = _started_marker()
        if marker.exists():  # a worker started the shared stack for this run: the last one out stops it
            if os.environ.get("RECPILOT_TEST_KEEP_STACK") != "1":
                from recpilot.settings import PlatformSettings, load
                from recpilot.stack.manager import Stack

                Stack(load(PlatformSettings)).down(echo=lambda *_: None)
            marker.unlink(missing_ok=True)
    # In-process inference servers gc.freeze() after loading a model (services/inference/routing.py);
    # frozen objects are never finalized, and nanobind (in triton, imported with TensorFlow) then
    # prints pages of "leaked" lines at exit. Unfrozen, the interpreter's teardown frees them.
    import gc

    gc.unfreeze()


# The order files are handed out in: the long fault and integration files first, the many short
# unit files last (they fill the gaps at the end). The two whole-platform tests (marker `platform`)
# run after, alone (Makefile).
ORDER = {"e2e": 0, "fault": 1, "integration": 2, "unit": 3}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: next((r for t, r in ORDER.items() if t in item.path.parts), len(ORDER)))
    for item in items:
        parts = item.path.parts
        for tier in ("integration", "e2e", "fault"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def platform_settings():
    from recpilot.settings import PlatformSettings, load

    return load(PlatformSettings)


@pytest.fixture(scope="session")
def stack(platform_settings):
    """A ready Kafka + Redis (topics created). Stopped at the end if this run started it (by the
    xdist controller when workers share it), unless RECPILOT_TEST_KEEP_STACK=1 (handy when several
    test runs share it)."""
    from recpilot.stack.manager import Stack

    st = Stack(platform_settings)
    platform_settings.home.mkdir(parents=True, exist_ok=True)
    with open(platform_settings.home / "stack.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker starts it, the other waits and finds it running
        already = st.table.running("kafka") is not None and st.table.running("redis") is not None
        try:
            st.up_infra(echo=lambda *_: None)
        except BaseException:
            if not already:  # leave nothing half-started behind
                st.down(echo=lambda *_: None)
            raise
        if not already and _worker() is not None:
            _started_marker().touch()
    yield st
    if not already and _worker() is None and os.environ.get("RECPILOT_TEST_KEEP_STACK") != "1":
        st.down(echo=lambda *_: None)


@pytest.fixture
def unique():
    """A short unique suffix for topic names, group ids and Redis key prefixes."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def wait_until():
    """``wait_until(predicate, timeout, message, interval=0.05)`` (tests/support/wait.py): poll
    instead of a fixed sleep whenever a test waits for a side effect."""
    from tests.support.wait import wait_until as wait

    return wait


@pytest.fixture
def wait_until_async():
    """``await wait_until_async(predicate, timeout, message, interval=0.05)``: as ``wait_until``, for a
    test running an event loop."""
    from tests.support.wait import wait_until_async as wait

    return wait


@pytest.fixture
def dispatch():
    """``dispatch(*channels, **kw)``: a monitor alert Dispatcher with quick retries (0.02 s doubling up
    to 0.2 s unless ``kw`` says otherwise), closed at the end of the test."""
    from services.monitor.channels import Dispatcher

    made = []

    def make(*channels, **kw):
        d = Dispatcher(channels, **{"retry_initial_s": 0.02, "retry_max_s": 0.2, **kw})
        made.append(d)
        return d

    yield make
    for d in made:
        d.close(1.0)


@pytest.fixture
def start_alertmanager(tmp_path):
    """``start_alertmanager(port=None)``: a private Alertmanager (Debian's prometheus-alertmanager
    with the stack's own launcher: its own home and port), ready; stopped at the end of the test."""
    from recpilot.net import free_port
    from recpilot.settings import PlatformSettings
    from recpilot.stack.alertmanager import Alertmanager
    from recpilot.stack.process import ProcessTable

    started = []

    def start(port: int | None = None):
        home = tmp_path / f"am{len(started)}"
        am = Alertmanager(PlatformSettings(home=home), ProcessTable(home / "run"), port=port or free_port())
        started.append(am)
        am.start()
        am.wait_ready(30)
        return am

    yield start
    for am in started:
        am.table.stop(am.name, timeout=10)


@pytest.fixture(scope="session")
def small_ds():
    """800 synthetic impressions as a training Dataset (enough positives and negatives to train on)."""
    from recpilot.models import data as D

    ds = D.examples_from_impressions(D.synthetic_impressions(800, seed=7, n_users=200, n_items=100), source="fixture")
    assert ds.positives > 20 and len(ds) - ds.positives > 20
    return ds


@pytest.fixture
def write_obd():
    """``write_obd(root, rows=30, campaign="all", nested=False)`` writes a tiny Open Bandit folder
    and returns ``root``: flat (<policy>/<campaign>.csv, the sample beside the checkout) or nested
    (<policy>/<campaign>/<campaign>.csv, the dataset's own layout)."""
    import numpy as np
    import pandas as pd

    def write(root, rows=30, campaign="all", nested=False):
        rng = np.random.default_rng(0)
        for policy in ("random", "bts"):
            d = root / policy / campaign if nested else root / policy
            d.mkdir(parents=True)
            logs = pd.DataFrame({
                "timestamp": pd.date_range("2019-11-24", periods=rows, freq="min", tz="UTC").astype(str),
                "item_id": rng.integers(0, 3, rows), "position": rng.integers(1, 4, rows),
                "click": (np.arange(rows) % 7 == 0).astype(int), "propensity_score": 1 / 3,
                **{f"user_feature_{k}": [f"h{k}{x}" for x in rng.integers(0, 2, rows)] for k in range(4)},
                **{f"user-item_affinity_{k}": rng.random(rows) * (k + 1) for k in range(3)},
            })
            logs.to_csv(d / f"{campaign}.csv")
            pd.DataFrame({"item_id": [0, 1, 2], "item_feature_0": [0.1, 0.2, 0.3],
                          "item_feature_1": ["a", "b", "c"], "item_feature_2": ["d", "e", "f"],
                          "item_feature_3": ["g", "h", "i"]}).to_csv(d / "item_context.csv")
        return root

    return write


@pytest.fixture
def redis_client(stack, platform_settings):
    import redis

    client = redis.Redis.from_url(platform_settings.redis_url)
    yield client
    client.close()


# a Kafka broker of a test's own, for tests that kill it (tests/support/broker.py)
from tests.support.broker import private_broker, secure_broker  # noqa: E402, F401


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A local three-master Redis Cluster (Debian's redis-server, recpilot.stack.redis.LocalRedisCluster)
    on the ports of RECPILOT_TEST_REDIS_CLUSTER_PORTS (default 17001,17002,17003, +10 per xdist worker
    number; each also uses its port + 10000 for the cluster bus), started once for the session (of
    each worker that needs it) and stopped at its end."""
    from recpilot.stack.redis import LocalRedisCluster

    base = 17001 + 10 * int((_worker() or "gw0").removeprefix("gw"))  # each xdist worker its own cluster
    ports = [int(p) for p in os.environ.get("RECPILOT_TEST_REDIS_CLUSTER_PORTS", f"{base},{base + 1},{base + 2}").split(",")]
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), ports)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()
