"""Deployment state survives a kill -9 of the Kafka broker.

The shared test broker is never restarted (other engineers' tests run on it): this test starts a
*private* single-node KRaft broker (``tests/support/broker.py``), kills it with SIGKILL while a
follower is attached, starts it again on the same data, and
checks that the follower reconnects by itself and that a fresh replay rebuilds the same state.
Marked ``fault`` as well (``-m "not fault"`` skips it); it needs Java like the test stack.
"""

from __future__ import annotations

import time

import pytest

from recpilot.models.deployments import DeploymentController, DeploymentFollower, DeploymentSettings, replay
from recpilot.models.repository import ModelRepository
from recpilot.pb import deployments_pb2 as pb
from tests.support.broker import kill9
from tests.support.repository import tiny_writer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]


def test_state_survives_broker_kill_and_follower_reconnects(private_broker, tmp_path, unique):
    settings, broker, table = private_broker
    topic = f"test.deployments.{unique}"
    repo = ModelRepository(tmp_path / "models")
    for auc in (0.70, 0.71, 0.72):
        repo.create_version("ranker", tiny_writer(auc=auc))
    deploy = DeploymentSettings(topic=topic)
    seen = []

    follower = DeploymentFollower(settings, "replica-x", lambda st, c: seen.append((st.production_version,
                                                                                    c.action)), topic=topic)
    follower.start()
    try:
        with DeploymentController(settings, repo, deploy, actor="ops@ci") as ctl:
            ctl.submit("deploy", "ranker", "1")
            ctl.submit("promote", "ranker", "2", reason="better")
            ctl.submit("canary", "ranker", "3", percent=15)
        assert follower.wait_ready(30)
        before = replay(settings, topic).state("ranker")
        assert (before.production_version, before.canary_version, before.revision) == ("2", "3", 3)

        kill9(table)
        assert broker.ready(timeout=1.0) is False
        broker.start()
        broker.wait_ready()

        # the log came back from disk
        after = replay(settings, topic, timeout=60).state("ranker")
        assert after == before
        # the follower that was attached during the crash reconnects by itself and applies new commands
        with DeploymentController(settings, repo, deploy, actor="ops@ci") as ctl:
            sub = ctl.submit("rollback", "ranker", reason="after the crash")
        assert sub.outcome.applied and sub.command.version == "1"
        deadline = time.monotonic() + 60
        while follower.state("ranker").revision < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        st = follower.state("ranker")
        assert (st.production_version, st.canary_version, st.revision) == ("1", "3", 4)
        assert seen[-1] == ("1", pb.ROLLBACK)
        assert follower.ready
    finally:
        follower.stop()
