"""`RECPILOT_INFERENCE_WORKERS=2`: a supervisor runs two serving processes behind one gRPC port
(SO_REUSEPORT). Connections reach both workers, /metrics carries both with a ``worker`` label, a
killed worker is restarted while the other keeps answering, SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from recpilot.net import free_port
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from services.inference.toymodel import write_version
from tests.integration.test_inference_process import _publish, _server_env, _start_ready


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, repr(exc)


def _wait(cond, timeout: float, what: str, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        time.sleep(0.3)
    pytest.fail(f"{what} within {timeout}s; log:\n" + log.read_text()[-4000:])


def _children(pid: int) -> list[int]:
    """Child processes of pid, whichever of its threads started them."""
    return sorted(int(x) for t in Path(f"/proc/{pid}/task").iterdir() for x in (t / "children").read_text().split())


def _ask(port: int, connections: int = 16) -> list[str]:
    """One Recommend over each of `connections` separate TCP connections; the model versions."""
    out = []
    for i in range(connections):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            r = recommend_pb2_grpc.RecommenderStub(ch).Recommend(recommend_pb2.RecommendRequest(
                user_id=f"w{i}", k=3, candidate_ids=[f"x{j}" for j in range(20)]), timeout=20)
            assert len(r.items) == 3
            out.append(r.model_version)
    return out


def _per_worker(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('recpilot_inference_requests_total{') and 'method="Recommend"' in line:
            w = line.split('worker="', 1)[1].split('"', 1)[0]
            out[w] = out.get(w, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_two_workers_share_the_port_restart_and_stop(stack, platform_settings, tmp_path, unique):
    root = tmp_path / "models"
    v1 = write_version(root, "ranker", seed=1)
    topic = f"control.test-{unique}"
    _publish(platform_settings, topic, "deploy", v1)
    gport, hport = free_port(), free_port()
    env = _server_env(root, topic, unique, gport, hport, RECPILOT_INFERENCE_REPLICA_ID=f"test-{unique}",
                      RECPILOT_INFERENCE_WORKERS="2", RECPILOT_INFERENCE_DEFAULT_TIMEOUT_MS="10000",
                      RECPILOT_INFERENCE_REDIS_TIMEOUT_MS="5000")
    log = tmp_path / "inference.log"
    proc = _start_ready(env, log, hport, 120)  # the supervisor's /readyz: both workers ready
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2

        assert set(_ask(gport)) == {v1}
        code, text = _get(hport, "/metrics")
        per = _per_worker(text)
        assert code == 200 and set(per) == {"0", "1"} and sum(per.values()) == 16, per  # both got connections
        assert 'recpilot_inference_worker_restarts_total{worker="1"} 0.0' in text

        os.kill(workers[1], signal.SIGKILL)  # a worker dies: the other keeps serving, it comes back
        _wait(lambda: _get(hport, "/readyz")[0] == 503, 10, "readyz reports the dead worker", log)
        assert set(_ask(gport, 4)) == {v1}
        _wait(lambda: 'recpilot_inference_worker_restarts_total{worker="1"} 1.0' in _get(hport, "/metrics")[1]
              and _get(hport, "/readyz")[0] == 200, 120, "the worker restarted and ready", log)
        assert len(_children(proc.pid)) == 2 and workers[1] not in _children(proc.pid)
        assert set(_ask(gport)) == {v1}

        now = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for pid in now:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
