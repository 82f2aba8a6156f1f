"""`python -m services.inference` as a real process following a unique control topic: hot swap
under concurrent load fails no request, a corrupt version is refused (FAILED ack, on the acks topic,
none on the control topic) while the old one keeps serving, canary routing by stable hash, graceful
SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from bench.toymodel import write_version
from recpilot.pb import deployments_pb2 as dpb
from recpilot.pb import recommend_pb2, recommend_pb2_grpc
from recpilot import kafka
from services.inference.routing import is_canary
from tests.support.inference import publish, read_acks, server_env, start_server


def _bodies(platform, topic):
    """(body kind, body) of every message on the topic so far."""
    return [(msg.WhichOneof("body"), getattr(msg, msg.WhichOneof("body")))
            for msg in (dpb.ControlMessage.FromString(m.value()) for m in kafka.read_to_end(platform, topic, timeout=30))]


@pytest.fixture
def server(stack, platform_settings, tmp_path, unique):
    root = tmp_path / "models"
    v1, v2 = write_version(root, "ranker", seed=1), write_version(root, "ranker", seed=2)
    bad = write_version(root, "ranker", corrupt=True)
    topic = f"control.test-{unique}"
    deploy_cmd = publish(platform_settings, topic, "deploy", v1)
    env = server_env(root, topic, unique, RECPILOT_INFERENCE_REPLICA_ID=f"test-{unique}",
                     RECPILOT_INFERENCE_DEFAULT_TIMEOUT_MS="5000", RECPILOT_INFERENCE_REDIS_TIMEOUT_MS="3000")
    log = tmp_path / "inference.log"
    proc = start_server(env, log, 60)
    yield {"proc": proc, "port": proc.grpc_port, "topic": topic, "v1": v1, "v2": v2, "bad": bad, "log": log,
           "replica": f"test-{unique}", "unique": unique, "deploy_cmd": deploy_cmd}
    proc.kill9()


def test_swap_under_load_corrupt_version_canary_and_sigterm(server, platform_settings, wait_until):
    ch = grpc.insecure_channel(f"127.0.0.1:{server['port']}")
    stub = recommend_pb2_grpc.RecommenderStub(ch)
    cands = [f"x{i}" for i in range(50)]
    first = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u0", k=5, candidate_ids=cands))
    assert first.model_version == server["v1"] and len(first.items) == 5

    seen, errors, stop = {}, [], threading.Event()

    def client(i):
        n = 0
        while not stop.is_set():
            try:
                r = stub.Recommend(recommend_pb2.RecommendRequest(user_id=f"load{i}", k=5, candidate_ids=cands),
                                   timeout=10)
                key = "fallback" if r.fallback else r.model_version
                seen[key] = seen.get(key, 0) + 1
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
            n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: seen.get(server["v1"], 0) > 0 or errors, 30,
                   lambda: f"no answer from v1 under load; errors {errors}")
        publish(platform_settings, server["topic"], "promote", server["v2"])
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            r = stub.Recommend(recommend_pb2.RecommendRequest(user_id="probe", k=5, candidate_ids=cands))
            if r.model_version == server["v2"]:
                break
            time.sleep(0.2)
        assert r.model_version == server["v2"]
        bad_cmd = publish(platform_settings, server["topic"], "promote", server["bad"])
        # the replica tries the corrupt version, fails, keeps v2; the load is answered by v2 meanwhile
        wait_until(lambda: "model load failed; keeping what serves" in server["log"].read_text()
                   and seen.get(server["v2"], 0) > 0, 30,
                   lambda: f"answers {seen}; the corrupt version tried?\n" + server["log"].read_text()[-3000:])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen.get(server["v1"], 0) > 0 and seen.get(server["v2"], 0) > 0
    assert server["bad"] not in seen
    after = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u0", k=5, candidate_ids=cands))
    assert after.model_version == server["v2"] and not after.fallback

    acks = [a for a in read_acks(platform_settings, server["topic"], f"t-acks-{server['unique']}")
            if a.replica == server["replica"]]
    # the replica only reads the control topic: its acks are all on the acks topic
    assert {kind for kind, _ in _bodies(platform_settings, server["topic"])} == {"command"}
    by_cmd = {a.command_id: a for a in acks}
    assert by_cmd[bad_cmd].status == dpb.FAILED and "TorchScript" in by_cmd[bad_cmd].message
    assert any(a.status == dpb.APPLIED and a.version == server["v2"] for a in acks)
    # the deploy was published before the replica started: it acknowledges it once caught up
    startup = by_cmd[server["deploy_cmd"]]
    assert startup.status == dpb.APPLIED and startup.message == f"at startup: serving production={server['v1']} canary=@0% shadow="

    # canary: v1 to 30 % of users, decided by the stable hash
    publish(platform_settings, server["topic"], "canary", server["v1"], percent=30.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        users = [f"c{i}" for i in range(60)]
        got = {u: stub.Recommend(recommend_pb2.RecommendRequest(user_id=u, k=3, candidate_ids=cands)) for u in users}
        if any(r.variant == "canary" for r in got.values()):
            break
        time.sleep(0.3)
    users = [f"c{i}" for i in range(300)]  # the canary is live: a full round under it
    got = {u: stub.Recommend(recommend_pb2.RecommendRequest(user_id=u, k=3, candidate_ids=cands)) for u in users}
    assert 0 < sum(r.variant == "canary" for r in got.values()) < len(users)
    for u, r in got.items():
        want = is_canary(u, 30.0)
        assert (r.variant == "canary") == want and r.model_version == (server["v1"] if want else server["v2"])
    ch.close()

    server["proc"].signal(signal.SIGTERM)
    assert server["proc"].wait(30) == 0
    assert '"msg": "stopped", "component": "grpc"' in server["log"].read_text() or "stopped" in server["log"].read_text()


def test_first_run_bootstrap_trains_and_deploys_a_model(stack, platform_settings, tmp_path, unique):
    """Empty repository, empty deployment state: the server trains + deploys a small model itself."""
    from recpilot.models.repository import ModelRepository

    root = tmp_path / "models"
    topic = f"control.test-boot-{unique}"
    env = server_env(root, topic, unique, RECPILOT_INFERENCE_BOOTSTRAP="true")
    proc = start_server(env, tmp_path / "inference.log", 50)
    try:
        repo = ModelRepository(root)
        assert repo.versions("ranker") == ["1"] and repo.meta("ranker", "1")["feature_set"] == "recpilot"
        with grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch:
            resp = recommend_pb2_grpc.RecommenderStub(ch).Recommend(
                recommend_pb2.RecommendRequest(user_id="u1", k=3, candidate_ids=["a", "b", "c", "d"]), timeout=10)
        assert resp.model_version == "1" and not resp.fallback and len(resp.items) == 3
    finally:
        proc.stop(30)


def test_tensorflow_savedmodel_serves_through_model_infer(stack, platform_settings, tmp_path, unique):
    """A TF SavedModel ranker (trained by the training code in a child process) served by the real
    server: ModelInfer scores equal the loader's own scores for the same inputs."""
    import json

    import numpy as np

    from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES
    from recpilot.pb import open_inference_grpc_pb2 as oip
    from recpilot.pb import open_inference_grpc_pb2_grpc as oip_grpc

    root = tmp_path / "models"
    train = f"""
import json, numpy as np
from recpilot.models.data import examples_from_impressions, synthetic_impressions
from recpilot.models.loader import load_model
from recpilot.models.repository import ModelRepository
from recpilot.models.train import train_and_register
repo = ModelRepository({str(root)!r})
ds = examples_from_impressions(synthetic_impressions(3000, seed=1), None, source="test")
rep = train_and_register(ds, "tensorflow", name="ranker", hp={{"epochs": 1, "embedding_dim": 4, "bottom": [8], "top": [8]}},
                         seed=0, repository=repo)
rng = np.random.default_rng(0)
dense = rng.normal(size=(5, {len(DENSE_FEATURES)})).astype(np.float32)
ids = rng.integers(0, 1000, size=(5, {len(ID_FEATURES)})).astype(np.int64)
m = load_model(repo.path("ranker", rep.version), repo.meta("ranker", rep.version), device="cpu")
print("RESULT", json.dumps({{"version": rep.version, "dense": dense.tolist(), "ids": ids.tolist(),
                            "scores": m.predict(dense, ids).tolist()}}))
"""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", train], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][0][7:])
    topic = f"control.test-tf-{unique}"
    publish(platform_settings, topic, "deploy", res["version"])
    proc = start_server(server_env(root, topic, unique), tmp_path / "inference.log", 90)
    try:
        dense = np.asarray(res["dense"], np.float32)
        ids = np.asarray(res["ids"], np.int64)
        req = oip.ModelInferRequest(model_name="ranker")
        req.inputs.add(name="dense", datatype="FP32", shape=list(dense.shape))
        req.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
        req.raw_input_contents.extend([dense.tobytes(), ids.tobytes()])
        with grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch:
            stub = oip_grpc.GRPCInferenceServiceStub(ch)
            resp = stub.ModelInfer(req, timeout=30)
            md = stub.ModelMetadata(oip.ModelMetadataRequest(name="ranker"), timeout=10)
        got = np.frombuffer(resp.raw_output_contents[0], np.float32)
        np.testing.assert_allclose(got, np.asarray(res["scores"], np.float32), rtol=1e-5, atol=1e-6)
        assert resp.model_version == res["version"] and md.platform == "tensorflow_savedmodel"
    finally:
        proc.stop(30)
