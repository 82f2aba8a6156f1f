"""Bounded cost per request and per process, and auth hygiene: every request limit answers
INVALID_ARGUMENT with a message naming it, the impression queue is bounded in bytes, an empty token
is refused at start, and the CLI reads its token from a file or the environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recpilot.errors import InvalidArgument
from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES
from recpilot.settings import SettingsError, load
from services.inference.service import RankingService, Request
from services.inference.settings import InferenceSettings

LIMITS = dict(max_k=50, max_candidate_ids=10, max_id_length=16, max_query_length=20, max_context_entries=2,
              max_context_length=8)


class Models:
    model_names = ["ranker"]

    def serves(self, name):
        return name == "ranker"


@pytest.fixture
def svc():
    return RankingService(InferenceSettings(**LIMITS), features=None, models=Models())


CASES = {
    "k": (Request("u", 51), "k must be in 1..50, got 51"),
    "candidate count": (Request("u", 5, candidate_ids=[f"i{n}" for n in range(11)]), "at most 10 candidate_ids"),
    "user_id": (Request("u" * 17, 5), "user_id is 17 characters, at most 16"),
    "session_id": (Request("u", 5, session_id="s" * 17), "session_id is 17 characters, at most 16"),
    "request_id": (Request("u", 5, request_id="r" * 40), "request_id is 40 characters, at most 16"),
    "model_name": (Request("u", 5, model_name="m" * 17), "model_name is 17 characters, at most 16"),
    "a candidate id": (Request("u", 5, candidate_ids=["ok", "x" * 17]), "candidate id is longer than 16"),
    "context entries": (Request("u", 5, context={"a": "1", "b": "2", "c": "3"}), "context has 3 entries, at most 2"),
    "a context value": (Request("u", 5, context={"a": "v" * 9}), "context key or value is 9 characters, at most 8"),
    "a context key": (Request("u", 5, context={"k" * 9: "v"}), "context key or value is 9 characters"),
}


@pytest.mark.parametrize("what", list(CASES))
def test_each_request_limit_is_invalid_argument_with_a_message(svc, what):
    req, message = CASES[what]
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(".", r"\.")):
        svc.validate(req)


def test_search_query_length_is_limited(svc):
    with pytest.raises(InvalidArgument, match="query is 21 characters, at most 20"):
        svc.validate(Request("u", 5, query="q" * 21), search=True)
    assert svc.validate(Request("u" * 16, 50, candidate_ids=["x" * 16] * 10, context={"k" * 8: "v" * 8},
                                session_id="s" * 16, request_id="r" * 16, query="q" * 20), search=True) == "ranker"


def test_model_infer_rows_are_limited(tmp_path):
    from bench.toymodel import write_version
    from recpilot.pb import open_inference_grpc_pb2 as oip
    from services.inference.dataplane import DataPlane
    from services.inference.routing import Desired, ModelManager
    from services.inference.settings import BatchingConfig

    v = write_version(tmp_path, "ranker", seed=1)
    ex = ThreadPoolExecutor(1)
    models = ModelManager(tmp_path, ["ranker"], device="cpu", executor=ex, batching_for=lambda _n: BatchingConfig())
    models.reconcile("ranker", Desired(production=v))
    plane = DataPlane(InferenceSettings(max_infer_rows=8), None, models)

    def request(rows):
        r = oip.ModelInferRequest(model_name="ranker")
        r.inputs.add(name="dense", datatype="FP32", shape=[rows, len(DENSE_FEATURES)])
        r.inputs.add(name="ids", datatype="INT64", shape=[rows, len(ID_FEATURES)])
        r.raw_input_contents.extend([np.zeros((rows, len(DENSE_FEATURES)), np.float32).tobytes(),
                                     np.zeros((rows, len(ID_FEATURES)), np.int64).tobytes()])
        return r

    async def run():
        ok = await plane.model_infer(request(8))
        with pytest.raises(InvalidArgument, match="9 rows, at most 8 per ModelInfer") as ei:
            await plane.model_infer(request(9))
        return ok, ei.value

    (mv, scores), err = asyncio.run(run())
    assert scores.shape == (8,) and err.model_version == v
    ex.shutdown()


def test_impression_queue_is_bounded_in_bytes():
    from prometheus_client import REGISTRY

    from services.inference.impressions import ImpressionLogger, ImpressionRecord

    class Producer:
        def __init__(self):
            self.sent = []

        def produce(self, topic, value, key, on_delivery):  # acknowledged at once
            self.sent.append(value)
            on_delivery(None, types.SimpleNamespace(value=lambda: value))

        def poll(self, _t):
            return 0

        def __len__(self):
            return 0

    def rec(n, k):
        return ImpressionRecord(f"r{n}", "u", "s", "recommend", "", "ranker", "1", "p",
                                [(f"it{j}", j + 1, 0.5, 1.0) for j in range(k)], {}, 0, False, "production",
                                shown_dense=np.zeros((k, len(DENSE_FEATURES)), np.float32))

    dropped = lambda: REGISTRY.get_sample_value("recpilot_inference_impressions_total", {"outcome": "dropped"}) or 0.0  # noqa: E731
    size = rec(0, 50).approx_bytes()
    assert size > 50 * len(DENSE_FEATURES) * 4  # counts the items and the feature snapshot
    producer = Producer()
    logger = ImpressionLogger(producer, "t", max_pending=1000, max_bytes=10 * size)
    before = dropped()
    for n in range(15):  # far below the count bound, above the byte bound
        logger.log(rec(n, 50))
    assert logger.dropped == 5 and dropped() == before + 5
    assert logger.pending_bytes == 10 * size
    logger._drain()  # the producer thread's work: the bytes are released
    assert len(producer.sent) == 10 and logger.pending_bytes == 0
    logger.log(rec(99, 50))
    assert logger.pending_bytes == size and logger.dropped == 5



def test_the_producer_buffer_is_held_to_the_queue_bound():
    """Broker gone: librdkafka would take every record (up to its own limits); the thread hands it at
    most ``max_pending`` unacknowledged ones, so the deque fills and later impressions are dropped."""
    from services.inference.impressions import ImpressionLogger, ImpressionRecord

    class Stuck:  # a producer whose messages are never acknowledged
        def __init__(self):
            self.sent = []

        def produce(self, topic, value, key, on_delivery):
            self.sent.append(value)

        def poll(self, _t):
            return 0

        def __len__(self):
            return len(self.sent)

    def rec(n):
        return ImpressionRecord(f"r{n}", "u", "s", "recommend", "", "ranker", "1", "p", [("it", 1, 0.5, 1.0)], {}, 0,
                                False, "production")

    producer = Stuck()
    logger = ImpressionLogger(producer, "t", max_pending=5, max_bytes=1 << 30)
    for n in range(20):
        logger.log(rec(n))
        logger._drain()
    assert len(producer.sent) == 5  # the producer's buffer: at the bound
    assert len(logger._q) == 5 and logger.dropped == 10  # the deque full, the rest dropped
    small = ImpressionLogger(Stuck(), "t", max_pending=100, max_bytes=1)  # the byte bound: one in flight
    for n in range(3):
        small._q.append(rec(n))  # past log()'s own byte check: only the producer side is tested
        small._drain()
    assert len(small.producer.sent) == 1 and len(small._q) == 2

def test_an_empty_auth_token_is_refused_at_start(monkeypatch):
    for empty in ("", "   "):
        monkeypatch.setenv("RECPILOT_INFERENCE_AUTH_TOKEN", empty)
        with pytest.raises(SettingsError, match="RECPILOT_INFERENCE_AUTH_TOKEN.*auth_token is empty"):
            load(InferenceSettings)
    monkeypatch.delenv("RECPILOT_INFERENCE_AUTH_TOKEN")
    assert load(InferenceSettings).auth_token is None  # unset: no auth, allowed


def test_a_token_without_tls_logs_a_warning(caplog, tmp_path):
    from services.inference.security import BearerTokenInterceptor, interceptors

    with caplog.at_level(logging.WARNING, logger="services.inference.security"):
        got = interceptors(InferenceSettings(auth_token="s3cret"))
    assert len(got) == 1 and isinstance(got[0], BearerTokenInterceptor)
    assert any("TLS is off" in r.getMessage() and "s3cret" not in r.getMessage() for r in caplog.records)
    caplog.clear()
    (tmp_path / "c.pem").write_text("x")
    with caplog.at_level(logging.WARNING, logger="services.inference.security"):
        interceptors(InferenceSettings(auth_token="s3cret", tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.pem"))
    assert not caplog.records
    assert interceptors(InferenceSettings()) == []
    with pytest.raises(ValueError):
        BearerTokenInterceptor("")


def _cli_args(*argv):
    from services.inference import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    return parser.parse_args(["recommend", "--user", "u", *argv])


def test_cli_reads_the_token_from_a_file_or_the_environment(monkeypatch, tmp_path, capsys):
    from services.inference.commands import TOKEN_ENV, token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token(_cli_args()) is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert token(_cli_args()) == "from-env"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert token(_cli_args("--token-file", str(f))) == "from-file"  # the file wins over the environment
    assert "deprecated" not in capsys.readouterr().err
    assert token(_cli_args("--token", "from-argv")) == "from-argv"  # still works, with a warning
    assert "--token is deprecated" in capsys.readouterr().err
    f.write_text("\n")
    with pytest.raises(InvalidArgument, match="empty"):
        token(_cli_args("--token-file", str(f)))
    with pytest.raises(InvalidArgument, match="cannot read --token-file"):
        token(_cli_args("--token-file", str(tmp_path / "missing")))
    monkeypatch.setenv(TOKEN_ENV, "")
    with pytest.raises(InvalidArgument, match=f"from {TOKEN_ENV} is empty"):
        token(_cli_args())
