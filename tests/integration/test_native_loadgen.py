"""The native load generator (bench/native): builds, drives a real gRPC server in a
closed loop, counts answers and failures correctly, rejects bad input with a clear error.

The server is `recpilot bench grpc-floor`'s no-op Open Inference Protocol server in its own process,
whose ModelInfer answer is always the same 200 scores (so response bytes per call are known)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recpilot.net import free_port
from recpilot.pb import open_inference_grpc_pb2 as oip
from bench import native
from bench.loadgen import infer_requests


@pytest.fixture(scope="module")
def noop_server():
    try:
        native.binary()  # installs g++/libgrpc++-dev from Debian when missing and root
    except native.NativeUnavailable as exc:
        pytest.fail(f"native load generator unavailable: {exc}")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", "--serve", str(port), "uvloop"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_closed_loop_counts_answers(noop_server):
    r = native.closed_loop(noop_server, "/inference.GRPCInferenceService/ModelInfer", infer_requests(200, count=4),
                           concurrency=8, seconds=1.0, connections=2, warmup=0.2)
    assert r["errors"] == 0 and r["error_kinds"] == {}
    assert r["requests"] > 50
    assert abs(r["rps"] - r["requests"] / r["seconds"]) < 1.0
    # every answer is the no-op server's fixed response
    expected = oip.ModelInferResponse(model_name="noop", model_version="1")
    expected.outputs.add(name="score", datatype="FP32", shape=[200])
    expected.raw_output_contents.append(b"\0" * 800)
    assert r["response_bytes"] == r["requests"] * expected.ByteSize()
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
    assert r["client_cpu_ms_per_request"] > 0
    assert (r["concurrency"], r["connections"]) == (8, 2)


def test_failures_counted_by_status(noop_server):
    r = native.closed_loop(noop_server, "/inference.GRPCInferenceService/ModelMetadata",
                           [oip.ModelMetadataRequest(name="x")], concurrency=2, seconds=0.5, warmup=0)
    assert r["requests"] > 0
    assert r["errors"] == r["requests"]
    assert r["error_kinds"] == {"UNIMPLEMENTED": r["requests"]}
    assert r["response_bytes"] == 0


def test_bad_input_is_a_clear_error(noop_server, tmp_path):
    exe = str(native.binary())
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(b"\x10\x00\x00\x00abc")
    cases = [
        (["--method", "/a/b", "--requests", str(empty)], "no requests in"),
        (["--method", "/a/b", "--requests", str(truncated)], "truncated request in"),
        (["--method", "/a/b", "--requests", str(tmp_path / "missing.bin")], "cannot read"),
        (["--requests", str(empty)], "--method and --requests are required"),
        (["--method", "/a/b", "--requests", str(empty), "--concurrency", "zero"], "bad value for --concurrency"),
        (["--method", "/a/b", "--requests", str(empty), "--seconds", "0"], "must be positive"),
        (["--bogus", "1"], "unknown option --bogus"),
    ]
    for args, message in cases:
        p = subprocess.run([exe, "--target", f"127.0.0.1:{noop_server}", *args], capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stderr)
        assert message in p.stderr, (args, p.stderr)
        assert p.stdout == ""


def test_unreachable_target(tmp_path):
    reqs = tmp_path / "r.bin"
    native.write_requests(reqs, [oip.ServerLiveRequest()])
    # nothing listens on a fresh free port: connect fails within the timeout instead of hanging
    p = subprocess.run([str(native.binary()), "--target", f"127.0.0.1:{free_port()}", "--method",
                        "/inference.GRPCInferenceService/ServerLive", "--requests", str(reqs),
                        "--connect-timeout-s", "1"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "cannot connect" in p.stderr
