"""Test tiers share one real stack: Kafka and Redis started by the project's own stack manager.

The test stack lives in ``.recpilot-test/`` on its own ports (Kafka 19092, controller 19093,
Redis 16379), so a developer's `recpilot up` on the default ports is never touched. These
variables are set before any recpilot module reads settings, and child processes (services
started by tests) inherit them.
"""

from __future__ import annotations

import os
import uuid

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


def pytest_sessionfinish(session, exitstatus):
    # In-process inference servers gc.freeze() after loading a model (services/inference/routing.py);
    # frozen objects are never finalized, and nanobind (in triton, imported with TensorFlow) then
    # prints pages of "leaked" lines at exit. Unfrozen, the interpreter's teardown frees them.
    import gc

    gc.unfreeze()


def pytest_collection_modifyitems(config, items):
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
    """A ready Kafka + Redis (topics created). Stopped at the end if this session started it,
    unless RECPILOT_TEST_KEEP_STACK=1 (handy when several test runs share it)."""
    from recpilot.stack.manager import Stack

    st = Stack(platform_settings)
    already = st.table.running("kafka") is not None and st.table.running("redis") is not None
    try:
        st.up_infra(echo=lambda *_: None)
    except BaseException:
        if not already:  # leave nothing half-started behind
            st.down(echo=lambda *_: None)
        raise
    yield st
    if not already and os.environ.get("RECPILOT_TEST_KEEP_STACK") != "1":
        st.down(echo=lambda *_: None)


@pytest.fixture
def unique():
    """A short unique suffix for topic names, group ids and Redis key prefixes."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def redis_client(stack, platform_settings):
    import redis

    client = redis.Redis.from_url(platform_settings.redis_url)
    yield client
    client.close()


# a Kafka broker of a test's own, for tests that kill it (tests/support/broker.py)
from tests.support.broker import private_broker  # noqa: E402, F401
