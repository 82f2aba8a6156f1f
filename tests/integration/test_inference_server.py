"""The inference server in-process on a free port, with real Redis features (written by the
features service's writer under a unique key prefix), a real TorchScript model in a temporary
repository, and impressions on a unique Kafka topic."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recpilot import featurespec as fs
from recpilot.pb import events_pb2, recommend_pb2, recommend_pb2_grpc
from recpilot.pb import open_inference_grpc_pb2 as oip
from services.inference.routing import Desired
from bench.toymodel import build_module, write_version
from tests.support.inference import Running, catalogue, events, write_features


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """Redis features + model repo; returns a dict the tests share."""
    stack = request.getfixturevalue("stack")
    platform = request.getfixturevalue("platform_settings")
    import uuid

    import redis.asyncio as aioredis

    uid = uuid.uuid4().hex[:10]
    prefix = f"t{uid}:"
    items = catalogue()
    now_ms = int(time.time() * 1000)
    evs = events(items, now_ms)

    write_features(platform.redis_url, prefix, evs)
    offline = fs.OfflineFeatureStore()
    from google.protobuf.json_format import MessageToDict

    for _, ev in evs:
        d = MessageToDict(ev, preserving_proto_field_name=True)
        d["event_type"] = int(ev.event_type)
        offline.apply(d)
    root = tmp_path_factory.mktemp("models")
    versions = [write_version(root, "ranker", seed=s) for s in (1, 2)]
    bad = write_version(root, "ranker", corrupt=True)
    yield {"platform": platform, "prefix": prefix, "items": items, "offline": offline, "root": root,
           "versions": versions, "bad": bad, "uid": uid, "stack": stack}

    async def clean():
        r = aioredis.Redis.from_url(platform.redis_url)
        async for k in r.scan_iter(match=f"{prefix}*", count=1000):
            await r.delete(k)
        await r.aclose()

    asyncio.run(clean())


@pytest.fixture(scope="module")
def srv(world):
    r = Running(world)
    assert r.wait_serving() == health_pb2.HealthCheckResponse.SERVING
    yield r
    r.close()


def _expected_scores(world, user_id, item_ids, seed=1):
    import torch

    user = world["offline"].user(user_id)
    now = int(time.time() * 1000)
    items = [world["offline"].item(i, now) for i in item_ids]
    dense, ids = fs.build_batch(user, items, now)
    with torch.inference_mode():
        return build_module(seed)(torch.from_numpy(dense), torch.from_numpy(ids)).numpy()


def test_health_not_serving_before_a_model_is_loaded(world, wait_until):
    r = Running(world, load=False)
    try:
        # until the health loop has found Redis up: then only the model is missing
        wait_until(lambda: r.service.ready()[1]["redis"], 10, "the health loop never saw Redis up")
        assert r.health.Check(health_pb2.HealthCheckRequest(service="")).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
        assert not r.oip.ServerReady(oip.ServerReadyRequest()).ready
        assert r.oip.ServerLive(oip.ServerLiveRequest()).live
        # Recommend still answers, from popularity, and says so
        resp = r.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user1", k=3))
        assert resp.fallback and resp.fallback_reason == "no_model" and len(resp.items) == 3
        r.models.reconcile("ranker", Desired(production=world["versions"][0]))
        assert r.wait_serving() == health_pb2.HealthCheckResponse.SERVING
        assert r.oip.ServerReady(oip.ServerReadyRequest()).ready
    finally:
        r.close()


def test_recommend_ranks_given_candidates_with_the_model(srv, world):
    cands = [it["item_id"] for it in world["items"][:25]]
    resp = srv.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user2", k=10, candidate_ids=cands,
                                                             request_id="req-given-1"))
    exp = _expected_scores(world, "user2", cands)
    order = np.argsort(-exp, kind="stable")[:10]
    assert resp.request_id == "req-given-1" and resp.model_name == "ranker" and resp.model_version == "1"
    assert not resp.fallback and resp.variant == "production" and resp.policy_version == "ranker-order"
    assert [it.item_id for it in resp.items] == [cands[i] for i in order]
    np.testing.assert_allclose([it.score for it in resp.items], exp[order], rtol=1e-4, atol=1e-6)
    assert [it.position for it in resp.items] == list(range(1, 11))
    assert all(it.propensity == 1.0 for it in resp.items)


def test_recommend_generates_candidates_from_the_feature_store(srv, world):
    resp = srv.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user3", k=5))
    assert len(resp.items) == 5 and not resp.fallback and resp.request_id
    ids = [it.item_id for it in resp.items]
    assert len(set(ids)) == 5 and all(i in {x["item_id"] for x in world["items"]} for i in ids)
    scores = [it.score for it in resp.items]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, _expected_scores(world, "user3", ids), rtol=1e-4, atol=1e-6)


def test_search_retrieves_by_text_then_ranks(srv, world):
    resp = srv.reco.Search(recommend_pb2.SearchRequest(user_id="user1", query="red boots", k=50))
    titles = {it["item_id"]: it["title"] for it in world["items"]}
    got = [it.item_id for it in resp.items]
    assert got and all("red" in titles[i] or "boots" in titles[i] for i in got)
    assert {i for i in titles if "red" in titles[i] and "boots" in titles[i]} <= set(got)
    np.testing.assert_allclose([it.score for it in resp.items], _expected_scores(world, "user1", got), rtol=1e-4,
                               atol=1e-6)
    assert [it.score for it in resp.items] == sorted([it.score for it in resp.items], reverse=True)
    empty = srv.reco.Search(recommend_pb2.SearchRequest(user_id="user1", query="zzzz", k=5))
    assert len(empty.items) == 0


def test_model_infer_scores_raw_tensors(srv, world):
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(6, len(fs.DENSE_FEATURES))).astype(np.float32)
    ids = rng.integers(0, 1000, size=(6, len(fs.ID_FEATURES))).astype(np.int64)
    req = oip.ModelInferRequest(model_name="ranker", id="x1")
    req.inputs.add(name="dense", datatype="FP32", shape=list(dense.shape))
    req.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
    req.raw_input_contents.extend([dense.tobytes(), ids.tobytes()])
    out = srv.oip.ModelInfer(req)
    got = np.frombuffer(out.raw_output_contents[0], dtype=np.float32)
    import torch

    with torch.inference_mode():
        exp = build_module(1)(torch.from_numpy(dense), torch.from_numpy(ids)).numpy()
    assert out.model_version == "1" and out.id == "x1" and list(out.outputs[0].shape) == [6]
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)
    md = srv.oip.ModelMetadata(oip.ModelMetadataRequest(name="ranker"))
    assert md.platform == "pytorch_torchscript" and [t.name for t in md.inputs] == ["dense", "ids"]

    # The same rows in every other form the protocol allows (the server reads raw FP32 + INT64 in
    # that order in place, everything else on a converting path): the same scores.
    typed = oip.ModelInferRequest(model_name="ranker")
    t = typed.inputs.add(name="dense", datatype="FP32", shape=list(dense.shape))
    t.contents.fp32_contents.extend(dense.ravel().tolist())
    t = typed.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
    t.contents.int64_contents.extend(ids.ravel().tolist())
    swapped = oip.ModelInferRequest(model_name="ranker")
    swapped.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
    swapped.inputs.add(name="dense", datatype="FP32", shape=list(dense.shape))
    swapped.raw_input_contents.extend([ids.tobytes(), dense.tobytes()])
    wide = oip.ModelInferRequest(model_name="ranker")
    wide.inputs.add(name="dense", datatype="FP64", shape=list(dense.shape))
    wide.inputs.add(name="ids", datatype="INT32", shape=list(ids.shape))
    wide.raw_input_contents.extend([dense.astype(np.float64).tobytes(), ids.astype(np.int32).tobytes()])
    for other in (typed, swapped, wide):
        r = srv.oip.ModelInfer(other)
        np.testing.assert_allclose(np.frombuffer(r.raw_output_contents[0], dtype=np.float32), exp,
                                   rtol=1e-5, atol=1e-6)


def test_invalid_arguments_get_their_status_codes(srv):
    def code(fn, req):
        with pytest.raises(grpc.RpcError) as ei:
            fn(req)
        return ei.value.code(), ei.value.details()

    from prometheus_client import REGISTRY

    def failures(method, model, version, status):
        return REGISTRY.get_sample_value("recpilot_inference_failures_total", {
            "method": method, "model": model, "version": version, "code": status}) or 0.0

    before = {k: failures(*k) for k in [("Recommend", "ranker", "-", "INVALID_ARGUMENT"),
                                        ("Recommend", "unknown", "-", "NOT_FOUND"),
                                        ("ModelInfer", "unknown", "-", "NOT_FOUND"),
                                        ("ModelInfer", "ranker", "-", "NOT_FOUND"),
                                        ("ModelInfer", "ranker", "1", "INVALID_ARGUMENT")]}
    R = recommend_pb2.RecommendRequest
    assert code(srv.reco.Recommend, R(user_id="u", k=0))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(srv.reco.Recommend, R(user_id="u", k=1001))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(srv.reco.Recommend, R(user_id="", k=5))[0] == grpc.StatusCode.INVALID_ARGUMENT
    c, msg = code(srv.reco.Recommend, R(user_id="u", k=5, model_name="nope"))
    assert c == grpc.StatusCode.NOT_FOUND and "nope" in msg
    assert code(srv.reco.Search, recommend_pb2.SearchRequest(user_id="u", k=5, query=" "))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code(srv.reco.Recommend, R(user_id="u", k=5, candidate_ids=[f"i{i}" for i in range(2001)]))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    big = R(user_id="u", k=5, candidate_ids=["x" * 1000] * 5000)  # ~5 MB > 4 MiB limit
    assert code(srv.reco.Recommend, big)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code(srv.oip.ModelInfer, oip.ModelInferRequest(model_name="nope"))[0] == grpc.StatusCode.NOT_FOUND
    assert code(srv.oip.ModelInfer, oip.ModelInferRequest(model_name="ranker", model_version="99"))[0] == \
        grpc.StatusCode.NOT_FOUND
    bad = oip.ModelInferRequest(model_name="ranker")
    bad.inputs.add(name="dense", datatype="FP32", shape=[1, 3])
    bad.raw_input_contents.append(np.zeros(3, np.float32).tobytes())
    assert code(srv.oip.ModelInfer, bad)[0] == grpc.StatusCode.INVALID_ARGUMENT

    D, K = len(fs.DENSE_FEATURES), len(fs.ID_FEATURES)

    def infer(dense_shape, ids_shape, dense_bytes=None, ids_bytes=None, dense_type="FP32", names=("dense", "ids")):
        r = oip.ModelInferRequest(model_name="ranker")
        r.inputs.add(name=names[0], datatype=dense_type, shape=dense_shape)
        r.inputs.add(name=names[1], datatype="INT64", shape=ids_shape)
        n = max(dense_shape[0], 0) if dense_shape else 0
        r.raw_input_contents.extend([np.zeros((n, D), np.float32).tobytes() if dense_bytes is None else dense_bytes,
                                     np.zeros((n, K), np.int64).tobytes() if ids_bytes is None else ids_bytes])
        return r

    cases = {
        "a wrong input name": (infer([2, D], [2, K], names=("dense", "idz")), "inputs must be"),
        "a duplicated input": (infer([2, D], [2, K], names=("dense", "dense")), "inputs must be"),
        "an unsupported datatype": (infer([2, D], [2, K], dense_type="BYTES"), "not supported"),
        "shape vs values": (infer([3, D], [2, K], dense_bytes=np.zeros((2, D), np.float32).tobytes()),
                            "does not match"),
        "a negative dimension": (infer([-2, -D], [2, K], dense_bytes=np.zeros((2, D), np.float32).tobytes()),
                                 "does not match"),
        "a raw buffer not a multiple of the dtype": (infer([2, D], [2, K], dense_bytes=b"\0" * 7), ""),
        "the wrong feature count": (infer([2, D + 1], [2, K], dense_bytes=np.zeros((2, D + 1), np.float32).tobytes()),
                                    f"dense must be [N, {D}]"),
        "row counts that differ": (infer([2, D], [3, K], ids_bytes=np.zeros((3, K), np.int64).tobytes()),
                                   "ids must be"),
    }
    for what, (req, message) in cases.items():
        c, msg = code(srv.oip.ModelInfer, req)
        assert c == grpc.StatusCode.INVALID_ARGUMENT, (what, c, msg)
        assert message in msg, (what, msg)
    ok = srv.oip.ModelInfer(infer([2, D], [2, K]))  # and the server still answers
    assert list(ok.outputs[0].shape) == [2] and len(ok.raw_output_contents[0]) == 8
    assert ok.model_version == "1"
    # every failure counted by method, model (unknown names collapse to "unknown") and version
    assert {k: failures(*k) - v for k, v in before.items()} == {
        ("Recommend", "ranker", "-", "INVALID_ARGUMENT"): 4,  # k=0, k=1001, empty user, 2,001 candidates
        ("Recommend", "unknown", "-", "NOT_FOUND"): 1,
        ("ModelInfer", "unknown", "-", "NOT_FOUND"): 1,
        ("ModelInfer", "ranker", "-", "NOT_FOUND"): 1,  # version 99 is not loaded
        ("ModelInfer", "ranker", "1", "INVALID_ARGUMENT"): 1 + len(cases)}


def test_response_request_id_appears_in_impressions(srv, world):
    from recpilot import kafka

    resp = srv.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user4", k=4, session_id="s4"))
    rid = resp.request_id
    c = kafka.consumer(world["platform"], f"t-imp-{world['uid']}")
    c.subscribe([srv.topic])
    found = None
    t0 = time.monotonic()
    try:
        while found is None and time.monotonic() - t0 < 30:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            imp = events_pb2.Impression.FromString(msg.value())
            if imp.request_id == rid:
                found = (msg.key(), imp)
    finally:
        c.close()
    assert found is not None, "impression not found"
    key, imp = found
    assert key == b"user4" and imp.user_id == "user4" and imp.surface == "recommend" and imp.session_id == "s4"
    assert imp.model_version == "1" and imp.policy_version == "ranker-order"
    assert [i.item_id for i in imp.items] == [i.item_id for i in resp.items]
    assert [i.position for i in imp.items] == [1, 2, 3, 4]
    np.testing.assert_allclose([i.score for i in imp.items], [i.score for i in resp.items], rtol=1e-6)
    assert len(imp.features) == 2 + 4 * len(fs.DENSE_FEATURES) and "1:item_ctr" in imp.features


def test_redis_down_keeps_serving_with_flagged_answers(world):
    """Readiness is "a model is loaded and can answer": with Redis unreachable the replica stays
    SERVING (a Redis outage must not empty the fleet) and its answers are flagged fallbacks."""
    r = Running(world, redis_url="redis://127.0.0.1:1/0")
    try:
        # SERVING is set by the health loop, which checks Redis before each readiness check
        assert r.wait_serving() == health_pb2.HealthCheckResponse.SERVING
        ok, details = r.service.ready()
        assert ok and details["model_loaded"] and details["redis"] is False
        assert r.oip.ServerReady(oip.ServerReadyRequest()).ready
        resp = r.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user1", k=3))
        assert resp.fallback and resp.fallback_reason == "features_unavailable" and resp.variant == "fallback"
        cands = [it["item_id"] for it in world["items"][:5]]
        resp = r.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user1", k=2, candidate_ids=cands))
        assert resp.fallback and resp.fallback_reason == "features_unavailable"
        assert [i.item_id for i in resp.items] == cands[:2]
        assert r.health.Check(health_pb2.HealthCheckRequest(service="")).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        r.close()


def test_request_limits_answer_invalid_argument_with_a_message(srv):
    def refused(fn, req):
        with pytest.raises(grpc.RpcError) as ei:
            fn(req, timeout=10)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
        return ei.value.details()

    R, S = recommend_pb2.RecommendRequest, recommend_pb2.SearchRequest
    s = srv.s
    long_id = "x" * (s.max_id_length + 1)
    assert "user_id is" in refused(srv.reco.Recommend, R(user_id=long_id, k=5))
    assert "session_id is" in refused(srv.reco.Recommend, R(user_id="u", k=5, session_id=long_id))
    assert "request_id is" in refused(srv.reco.Recommend, R(user_id="u", k=5, request_id=long_id))
    assert "candidate id is longer" in refused(srv.reco.Recommend, R(user_id="u", k=5, candidate_ids=[long_id]))
    ctx = {f"k{i}": "v" for i in range(s.max_context_entries + 1)}
    assert "context has" in refused(srv.reco.Recommend, R(user_id="u", k=5, context=ctx))
    assert "context key or value" in refused(srv.reco.Recommend,
                                             R(user_id="u", k=5, context={"k": "v" * (s.max_context_length + 1)}))
    assert f"k must be in 1..{s.max_k}" in refused(srv.reco.Recommend, R(user_id="u", k=s.max_k + 1))
    assert "query is" in refused(srv.reco.Search, S(user_id="u", k=5, query="q" * (s.max_query_length + 1)))
    rows = s.max_infer_rows + 1
    D, K = len(fs.DENSE_FEATURES), len(fs.ID_FEATURES)
    req = oip.ModelInferRequest(model_name="ranker")
    req.inputs.add(name="dense", datatype="FP32", shape=[rows, D])
    req.inputs.add(name="ids", datatype="INT64", shape=[rows, K])
    req.raw_input_contents.extend([np.zeros((rows, D), np.float32).tobytes(), np.zeros((rows, K), np.int64).tobytes()])
    assert f"at most {s.max_infer_rows} per ModelInfer" in refused(srv.oip.ModelInfer, req)


def test_a_hanging_execution_is_abandoned_and_rpcs_are_bounded(world, wait_until):
    """A model that hangs at execution: the request answers from popularity at its deadline, the
    execution is abandoned and counted; meanwhile max_concurrent_rpcs refuses what is beyond it."""
    import threading

    from prometheus_client import REGISTRY

    r = Running(world, max_concurrent_rpcs=1, deadline_margin_ms=300)
    hanging, release = threading.Event(), threading.Event()
    try:
        assert r.wait_serving() == health_pb2.HealthCheckResponse.SERVING
        mv = r.models.routes("ranker").production
        real = mv.batcher.predict

        def hangs(dense, ids):
            hanging.set()
            release.wait(30)
            return real(dense, ids)

        def abandoned():
            return REGISTRY.get_sample_value("recpilot_inference_executions_abandoned_total",
                                             {"model": mv.label}) or 0.0

        before = abandoned()
        mv.batcher.predict = hangs
        cands = [it["item_id"] for it in world["items"][:6]]
        req = recommend_pb2.RecommendRequest(user_id="user1", k=3, candidate_ids=cands)
        call = r.reco.Recommend.future(req, timeout=2.0)
        assert hanging.wait(10)
        with pytest.raises(grpc.RpcError) as ei:  # the one RPC allowed is running
            r.reco.Recommend(req, timeout=5)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        resp = call.result()
        assert resp.fallback and resp.fallback_reason == "deadline" and len(resp.items) == 3
        wait_until(lambda: abandoned() == before + 1, 5, lambda: f"abandoned {abandoned() - before}")
        mv.batcher.predict = real
        release.set()
        ok = r.reco.Recommend(req, timeout=10)
        assert not ok.fallback and ok.model_version == mv.version
    finally:
        release.set()
        r.close()


def test_tritonclient_lists_server_and_runs_model_infer(srv):
    code = f"""
import numpy as np, tritonclient.grpc as tc
c = tc.InferenceServerClient("127.0.0.1:{srv.server.port}")
assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("ranker")
md = c.get_model_metadata("ranker")
dense = np.ones((3, {len(fs.DENSE_FEATURES)}), np.float32); ids = np.zeros((3, {len(fs.ID_FEATURES)}), np.int64)
a = tc.InferInput("dense", list(dense.shape), "FP32"); a.set_data_from_numpy(dense)
b = tc.InferInput("ids", list(ids.shape), "INT64"); b.set_data_from_numpy(ids)
r = c.infer("ranker", [a, b], outputs=[tc.InferRequestedOutput("score")])
print("SCORES", ",".join(repr(float(x)) for x in r.as_numpy("score")), md.platform)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("SCORES")][0]
    got = np.array([float(x) for x in line.split()[1].split(",")], np.float32)
    import torch

    with torch.inference_mode():
        exp = build_module(1)(torch.ones(3, len(fs.DENSE_FEATURES)),
                              torch.zeros(3, len(fs.ID_FEATURES), dtype=torch.int64)).numpy()
    np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)
    assert line.split()[2] == "pytorch_torchscript"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=test-ca", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'client'}", cwd=d)
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_mtls_and_bearer_token(world, certs):
    r = Running(world, tls_cert=certs / "server.pem", tls_key=certs / "server.key", tls_client_ca=certs / "ca.pem",
                auth_token="s3cret")
    try:
        ca = (certs / "ca.pem").read_bytes()
        req = recommend_pb2.RecommendRequest(user_id="user1", k=2, candidate_ids=["it001", "it002", "it003"])
        good = grpc.ssl_channel_credentials(ca, (certs / "client.key").read_bytes(), (certs / "client.pem").read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{r.server.port}", good) as ch:
            stub = recommend_pb2_grpc.RecommenderStub(ch)
            resp = stub.Recommend(req, metadata=[("authorization", "Bearer s3cret")], timeout=10)
            assert len(resp.items) == 2 and resp.model_version == "1"
            for meta in (None, [("authorization", "Bearer wrong")]):
                with pytest.raises(grpc.RpcError) as ei:
                    stub.Recommend(req, metadata=meta, timeout=10)
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # health needs no token (probes)
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert st.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
        no_client_cert = grpc.ssl_channel_credentials(ca)
        with grpc.secure_channel(f"127.0.0.1:{r.server.port}", no_client_cert) as ch:
            with pytest.raises(grpc.RpcError) as ei:
                recommend_pb2_grpc.RecommenderStub(ch).Recommend(
                    req, metadata=[("authorization", "Bearer s3cret")], timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE  # handshake refused without a client cert
    finally:
        r.close()


def test_search_index_from_the_feature_store(world):
    from services.inference.search import BM25Index, catalogue_from_redis

    cat = catalogue_from_redis(world["platform"].redis_url, world["prefix"])
    seen = {it["item_id"]: it for it in cat}
    items = {it["item_id"]: it for it in world["items"]}
    assert seen and set(seen) <= set(items)
    for iid, it in seen.items():
        assert it["title"] == items[iid]["title"] and it["category"] == items[iid]["category"]
    hits = [i for i, _ in BM25Index.build(cat).search("scarf", 50)]
    assert hits and all("scarf" in items[i]["title"] for i in hits)


def test_shadow_is_scored_and_logged_but_never_served(srv, world):
    from prometheus_client import REGISTRY

    v1, v2 = world["versions"]

    def shadow_count():
        return REGISTRY.get_sample_value("recpilot_inference_shadow_scored_total",
                                         {"model": "ranker", "version": v2}) or 0.0

    before = shadow_count()
    srv.models.reconcile("ranker", Desired(production=v1, shadow=v2))
    try:
        cands = [it["item_id"] for it in world["items"][:12]]
        for _ in range(3):
            resp = srv.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user5", k=4, candidate_ids=cands))
            assert resp.model_version == v1 and resp.variant == "production"
        exp = np.sort(_expected_scores(world, "user5", cands, seed=1))[::-1][:4]
        np.testing.assert_allclose([it.score for it in resp.items], exp, rtol=1e-4, atol=1e-6)
        t0 = time.monotonic()
        while shadow_count() < before + 3 and time.monotonic() - t0 < 5:
            time.sleep(0.05)
        assert shadow_count() == before + 3
    finally:
        srv.models.reconcile("ranker", Desired(production=v1))


def test_tampered_version_is_refused_and_the_old_one_keeps_answering(srv, world):
    """A published artifact with other weights, same size, still valid TorchScript: without the
    manifest check it would load and answer; with it the load fails, counted, and the old version
    keeps answering."""
    from prometheus_client import REGISTRY

    from tests.support.repository import negated_weights, tamper

    v1 = world["versions"][0]
    forged = write_version(world["root"], "ranker", seed=3)
    artifact = world["root"] / "ranker" / forged / "model.pt"
    tamper(artifact, negated_weights(artifact.read_bytes()))  # same size: only the hash can tell

    def failed():
        return REGISTRY.get_sample_value("recpilot_inference_model_loads_total",
                                         {"model": "ranker", "outcome": "failed"}) or 0.0

    before = failed()
    res = srv.models.reconcile("ranker", Desired(production=forged))
    try:
        assert "model.pt: content changed (sha256 mismatch)" in res.failed.get(forged, ""), res.failed
        assert failed() == before + 1
        cands = [it["item_id"] for it in world["items"][:12]]
        resp = srv.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user5", k=4, candidate_ids=cands))
        assert resp.model_version == v1 and not resp.fallback
        exp = np.sort(_expected_scores(world, "user5", cands, seed=1))[::-1][:4]
        np.testing.assert_allclose([it.score for it in resp.items], exp, rtol=1e-4, atol=1e-6)
        assert srv.wait_serving() == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.models.reconcile("ranker", Desired(production=v1))


def test_near_deadline_answers_from_popularity(world):
    # margin 2 s, client deadline 1.5 s: the server knows at once it cannot finish in time
    r = Running(world, deadline_margin_ms=2000)
    try:
        cands = [it["item_id"] for it in world["items"][:8]]
        resp = r.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user1", k=3, candidate_ids=cands), timeout=1.5)
        assert resp.fallback and resp.fallback_reason == "deadline" and resp.variant == "fallback"
        assert len(resp.items) == 3 and {i.item_id for i in resp.items} <= set(cands)
        pop = [i for i in r.service._popular if i in cands]  # candidates ordered by popularity
        assert [i.item_id for i in resp.items] == (pop + [c for c in cands if c not in pop])[:3]
        ok = r.reco.Recommend(recommend_pb2.RecommendRequest(user_id="user1", k=3, candidate_ids=cands), timeout=10)
        assert not ok.fallback and ok.model_version == "1"
    finally:
        r.close()


def test_reflection_lists_the_services(srv):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(srv.channel)
    resp = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
    names = {s.name for s in resp.list_services_response.service}
    assert {"recpilot.v1.Recommender", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_cli_recommend_and_search(srv, capsys):
    import json

    from recpilot.cli import main

    target = f"127.0.0.1:{srv.server.port}"
    assert main(["recommend", "--target", target, "--user", "user2", "-k", "2", "--candidates", "it001", "it002",
                 "it003"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_version"] == "1" and len(out["items"]) == 2
    assert {i["item_id"] for i in out["items"]} <= {"it001", "it002", "it003"}
    assert main(["search", "--target", target, "--user", "user2", "-k", "3", "green scarf"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 3 and out["request_id"]


def test_a_wedged_event_loop_fails_liveness(world, wait_until):
    """Liveness is "the loop makes progress": a blocking call on the serving loop fails it (while
    readiness, a different question, is unchanged); once the loop runs again it is live again."""
    import threading

    r = Running(world, loop_stall_s=0.5)
    unblock = threading.Event()
    try:
        assert r.wait_serving() == health_pb2.HealthCheckResponse.SERVING
        assert r.server.live()[0] and r.oip.ServerLive(oip.ServerLiveRequest()).live
        r.server.loop.call_soon_threadsafe(unblock.wait, 30)  # wedge the loop
        wait_until(lambda: not r.server.live()[0], 10, lambda: f"still live: {r.server.live()}")
        assert r.server.live()[1]["event_loop_since_tick_s"] > 0.5
        unblock.set()
        wait_until(lambda: r.server.live()[0], 10, "liveness did not come back")
        assert r.oip.ServerLive(oip.ServerLiveRequest(), timeout=10).live
    finally:
        unblock.set()
        r.close()
