import json
import subprocess
import sys
import time

from recpilot.stack.process import ProcessTable, tail


def test_spawn_stop_and_records(tmp_path):
    table = ProcessTable(tmp_path / "run")
    rec = table.spawn("sleeper", [sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"],
                      tmp_path / "logs" / "sleeper.log", "127.0.0.1:0")
    assert table.running("sleeper") is not None
    deadline = time.time() + 10
    while "hi" not in tail(rec.log) and time.time() < deadline:
        time.sleep(0.05)
    assert tail(rec.log) == "hi"
    assert table.stop("sleeper", timeout=5) == "stopped"
    assert table.running("sleeper") is None
    assert not (tmp_path / "run" / "sleeper.json").exists()
    assert table.stop("sleeper") == "not started by recpilot"


def test_sigterm_ignored_gets_killed(tmp_path):
    table = ProcessTable(tmp_path / "run")
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    rec = table.spawn("stubborn", [sys.executable, "-c", code], tmp_path / "stubborn.log", "")
    deadline = time.time() + 10
    while "up" not in tail(rec.log) and time.time() < deadline:
        time.sleep(0.05)
    assert table.stop("stubborn", timeout=0.5) == "killed after timeout"
    assert not rec.alive()


def test_reused_pid_is_not_ours(tmp_path):
    """A pid file whose process start time differs (pid reused) is never signalled."""
    table = ProcessTable(tmp_path / "run")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "ghost.json").write_text(json.dumps(
            {"name": "ghost", "pid": other.pid, "start_ticks": 1, "cmd": [], "address": "", "log": "", "started_at": 0}))
        assert table.running("ghost") is None
        assert table.stop("ghost") == "was not running"
        assert other.poll() is None  # untouched
    finally:
        other.kill()
        other.wait()


def test_a_group_is_gone_only_when_what_the_leader_forked_is_gone():
    """kill -9 of a leader leaves its forked child (Redis's rewrite child holds the port): the group
    counts as gone only once the child is gone too."""
    import os
    import signal

    from recpilot.stack.process import _reap, group_members, wait_group_gone

    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.time() + 10
        while len(group_members(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert proc.pid in group_members(proc.pid) and len(group_members(proc.pid)) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the leader alone
        proc.wait(10)
        _reap(proc.pid)
        assert not wait_group_gone(proc.pid, 0.5) and len(group_members(proc.pid)) == 1  # its child lives on
        os.killpg(proc.pid, signal.SIGKILL)
        assert wait_group_gone(proc.pid, 10) and group_members(proc.pid) == []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
