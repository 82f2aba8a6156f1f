"""recpilot.stack.process.ServiceProcess: a service as a child process, its HTTP port learnt from
its log, /readyz waited for with a deadline, failures reported with the exit code and the log."""

from __future__ import annotations

import signal
import sys

import pytest

from recpilot.stack.process import ServiceProcess, StackError

# A stand-in service: the platform's HealthServer and JSON logging; FAKESVC_MODE says how it behaves.
FAKE = '''
import os, sys, time
from recpilot.httpserver import HealthServer
from recpilot.log import setup_logging

setup_logging("fakesvc")
mode = os.environ["FAKESVC_MODE"]
if mode == "crash":
    print("cannot start: bad setting", flush=True)
    sys.exit(3)
started = time.monotonic()
http = HealthServer(int(os.environ["RECPILOT_FAKESVC_HTTP_PORT"]), "127.0.0.1",
                    ready=lambda: (mode == "ok" and time.monotonic() - started > 0.5, {"mode": mode}))
http.start()
time.sleep(120)
'''


@pytest.fixture
def fake_service(tmp_path):
    (tmp_path / "fakesvc.py").write_text(FAKE)

    def make(mode: str) -> ServiceProcess:
        env = {"FAKESVC_MODE": mode, "PYTHONPATH": f"{tmp_path}:{':'.join(p for p in sys.path if p)}"}
        return ServiceProcess("fakesvc", tmp_path / "fakesvc.log", env=env, cwd=tmp_path)

    return make


def test_port_learnt_from_the_log_ready_get_and_stop(fake_service):
    proc = fake_service("ok").start()
    try:
        proc.wait_ready(30)
        assert proc.port and proc.env["RECPILOT_FAKESVC_HTTP_PORT"] == "0"
        code, body = proc.get("/readyz")
        assert code == 200 and '"mode": "ok"' in body
        assert proc.get("/nowhere")[0] == 404
        assert proc.cpu_seconds() > 0 and proc.rss_mb() > 0 and proc.peak_rss_mb() >= proc.rss_mb()
    finally:
        assert proc.stop(10) == -signal.SIGTERM  # the stand-in has no SIGTERM handler
    assert not proc.alive()


def test_a_process_that_exits_fails_with_its_exit_code_and_log(fake_service):
    proc = fake_service("crash").start()
    with pytest.raises(StackError, match=r"fakesvc exited with code 3 during start-up(.|\n)*bad setting"):
        proc.wait_ready(30)


def test_not_ready_in_time_fails_and_is_killed(fake_service):
    proc = fake_service("never").start()
    with pytest.raises(StackError, match="fakesvc not ready after 2s"):
        proc.wait_ready(2)
    assert not proc.alive() and proc.returncode == -signal.SIGKILL
