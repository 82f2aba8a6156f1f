"""`RECPILOT_INFERENCE_WORKERS=2`: a supervisor runs two serving processes behind one gRPC port
(SO_REUSEPORT). Connections reach both workers, /metrics carries both with a ``worker`` label, a
killed worker is restarted while the other keeps answering, SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc

from bench.toymodel import write_version
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from tests.support.wait import wait_until
from tests.support.inference import publish, server_env, start_server


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
    publish(platform_settings, topic, "deploy", v1)
    env = server_env(root, topic, unique, RECPILOT_INFERENCE_REPLICA_ID=f"test-{unique}",
                     RECPILOT_INFERENCE_WORKERS="2", RECPILOT_INFERENCE_DEFAULT_TIMEOUT_MS="10000",
                     RECPILOT_INFERENCE_REDIS_TIMEOUT_MS="5000")
    proc = start_server(env, tmp_path / "inference.log", 120)  # the supervisor's /readyz: both workers ready
    gport = proc.grpc_port
    try:
        workers = proc.children()
        assert len(workers) == 2

        assert set(_ask(gport)) == {v1}
        code, text = proc.get("/metrics", 3)
        per = _per_worker(text)
        assert code == 200 and set(per) == {"0", "1"} and sum(per.values()) == 16, per  # both got connections
        assert 'recpilot_inference_worker_restarts_total{worker="1"} 0.0' in text

        os.kill(workers[1], signal.SIGKILL)  # a worker dies: the other keeps serving, it comes back
        wait_until(lambda: proc.get("/readyz", 3)[0] == 503, 10,
                   lambda: "readyz reports the dead worker:\n" + proc.log_tail(), 0.3)
        assert set(_ask(gport, 4)) == {v1}
        wait_until(lambda: 'recpilot_inference_worker_restarts_total{worker="1"} 1.0' in proc.get("/metrics", 3)[1]
                   and proc.get("/readyz", 3)[0] == 200, 120,
                   lambda: "the worker restarted and ready:\n" + proc.log_tail(), 0.3)
        assert len(proc.children()) == 2 and workers[1] not in proc.children()
        assert set(_ask(gport)) == {v1}

        now = proc.children()
        proc.signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        for pid in now:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        proc.kill9()
