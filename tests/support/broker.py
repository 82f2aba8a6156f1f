"""A Kafka broker of a test's own, for tests that kill it.

The shared test broker is never restarted (other tests run on it). ``private_broker`` starts a
single-node KRaft broker with the project's stack manager in a tmp home on free ports;
``kill9(table)`` SIGKILLs it (process group) and waits until it is gone; ``broker.start()`` then
brings it back on the same data. ``secure_broker`` is the same with the SASL_SSL client listener
(``kafka_listener_security=SASL_SSL``). Both need the shared ``stack`` fixture (so Java and the jars
exist).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from recpilot.settings import PlatformSettings
from recpilot.stack.kafka import KafkaBroker
from recpilot.stack.process import ProcessTable
from recpilot.net import free_port


def _private(tmp_path, **overrides):
    settings = PlatformSettings(home=tmp_path / "home", kafka_port=free_port(), kafka_controller_port=free_port(),
                                kafka_heap_mb=256, kafka_ready_timeout_s=90, **overrides)
    table = ProcessTable(settings.home / "run")
    broker = KafkaBroker(settings, table)
    broker.start()
    try:
        broker.wait_ready()
    except BaseException:
        table.stop("kafka", timeout=20)
        raise
    return settings, broker, table


@pytest.fixture
def private_broker(stack, tmp_path):
    """(settings, broker, process table) of a running broker of this test's own."""
    settings, broker, table = _private(tmp_path)
    yield settings, broker, table
    table.stop("kafka", timeout=20)


@pytest.fixture
def secure_broker(stack, tmp_path):
    """(settings, broker) of a running broker of this test's own whose client listener is SASL_SSL;
    the settings are the PLAINTEXT ones the stack was started with, ``broker.security_dir`` holds
    the CA and the admin password."""
    settings, broker, table = _private(tmp_path, kafka_listener_security="SASL_SSL")
    yield settings, broker
    table.stop("kafka", timeout=20)


def kill9(table: ProcessTable) -> None:
    rec = table.get("kafka")
    assert rec is not None and rec.alive()
    os.killpg(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while rec.alive() and time.monotonic() < deadline:
        try:
            os.waitpid(rec.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    assert not rec.alive()
    table.path("kafka").unlink(missing_ok=True)
