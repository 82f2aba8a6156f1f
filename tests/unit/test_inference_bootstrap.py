"""When a serving replica starts the first-run bootstrap process: only once the deployment state
is replayed and the default model has no production version."""

from __future__ import annotations

from types import SimpleNamespace

from services.inference.bootstrap import Bootstrap
from services.inference.settings import InferenceSettings


class Sync:
    def __init__(self, ready: bool, production: dict[str, str]) -> None:
        self.ready = ready
        self.follower = SimpleNamespace(
            state=lambda name: SimpleNamespace(production_version=production.get(name, "")))


def test_needed_only_when_the_replayed_state_has_no_production_version():
    s = InferenceSettings(default_model="ranker")
    assert Bootstrap(s, None, Sync(True, {}), wait_s=1).needed()
    assert Bootstrap(s, None, Sync(True, {"other": "3"}), wait_s=1).needed()
    assert not Bootstrap(s, None, Sync(True, {"ranker": "2"}), wait_s=1).needed()


def test_nothing_runs_when_a_production_version_exists_or_the_state_is_not_replayed():
    s = InferenceSettings(default_model="ranker")
    for sync in (Sync(True, {"ranker": "2"}), Sync(False, {})):
        boot = Bootstrap(s, None, sync, wait_s=0.3)
        assert boot.run() is None and boot._proc is None and boot.returncode is None


def test_stop_ends_the_wait_for_the_state():
    boot = Bootstrap(InferenceSettings(), None, Sync(False, {}), wait_s=60)
    boot.start()
    boot.stop()
    assert not boot._thread.is_alive() and boot._proc is None


class FakeController:
    """The bootstrap's DeploymentController without Kafka: an empty deployment state, publishes recorded."""

    published: list = []

    def __init__(self, platform, repo, topic=None, actor=None) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def state(self, name):
        from recpilot.pb import deployments_pb2 as pb

        return pb.DeploymentState(model_name=name)

    def plan(self, action, name, version, reason=""):
        return (action, name, version), []

    def publish(self, cmd) -> None:
        FakeController.published.append(cmd)


def test_a_first_model_is_trained_only_into_an_empty_repository(tmp_path, monkeypatch):
    import pytest

    import recpilot.models.bootstrap as boot
    import recpilot.models.deployments as dep
    from recpilot.models.deployments import DeploymentBook, new_command, write_snapshot
    from recpilot.models.repository import ModelRepository
    from tests.support.repository import tiny_writer

    monkeypatch.setattr(dep, "DeploymentController", FakeController)
    FakeController.published = []
    trained: list[str] = []
    monkeypatch.setattr(boot, "train_bootstrap_model", lambda name, repo, seed=0: trained.append(name) or "1")

    other = tmp_path / "other"
    ModelRepository(other).create_version("another", tiny_writer())
    with pytest.raises(boot.NotEmpty, match="models: another"):
        boot.bootstrap(None, "ranker", "t", other)
    only_snapshot = tmp_path / "snap"
    book = DeploymentBook()
    book.apply_command(new_command("deploy", "ranker", "3"))
    write_snapshot(only_snapshot, "t", book, None, {0: 1})
    with pytest.raises(boot.NotEmpty, match="deployment snapshot: yes"):
        boot.bootstrap(None, "ranker", "t", only_snapshot)
    assert trained == [] and FakeController.published == []

    has = tmp_path / "has"
    ModelRepository(has).create_version("ranker", tiny_writer())
    ModelRepository(has).create_version("ranker", tiny_writer())
    assert boot.bootstrap(None, "ranker", "t", has) == "2" and trained == []
    assert boot.bootstrap(None, "ranker", "t", tmp_path / "empty") == "1" and trained == ["ranker"]
    assert [c[2] for c in FakeController.published] == ["2", "1"]
