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
