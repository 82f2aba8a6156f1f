import json
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from recpilot.httpserver import HealthServer


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type")


@pytest.fixture
def server():
    reg = CollectorRegistry()
    c = Counter("recpilot_test_things_total", "things", ["kind"], registry=reg)
    c.labels("a").inc(3)
    state = {"ready": False}
    srv = HealthServer(0, ready=lambda: (state["ready"], {"checks": {"redis": state["ready"]}}), registry=reg)
    srv.start()
    yield srv, state
    srv.stop()


def test_metrics_health_ready(server):
    srv, state = server
    base = f"http://127.0.0.1:{srv.port}"
    code, body, ctype = _get(base + "/metrics")
    assert code == 200 and 'recpilot_test_things_total{kind="a"} 3.0' in body
    assert ctype.startswith("text/plain")
    assert _get(base + "/healthz")[0] == 200
    code, body, _ = _get(base + "/readyz")
    assert code == 503 and json.loads(body) == {"status": "unavailable", "checks": {"redis": False}}
    state["ready"] = True
    code, body, _ = _get(base + "/readyz")
    assert code == 200 and json.loads(body)["status"] == "ok"
    assert _get(base + "/nope")[0] == 404


def test_failing_check_is_not_ready():
    def broken():
        raise ConnectionError("redis down")

    srv = HealthServer(0, ready=broken, registry=CollectorRegistry())
    srv.start()
    try:
        code, body, _ = _get(f"http://127.0.0.1:{srv.port}/readyz")
        assert code == 503 and "redis down" in json.loads(body)["error"]
    finally:
        srv.stop()


def test_json_routes_serve_their_document_and_a_failure_is_a_500():
    calls = []

    def status():
        calls.append(1)
        return {"detectors": {"feature_drift": {"firing": 0}}, "calls": len(calls)}

    def broken():
        raise RuntimeError("status unavailable")

    srv = HealthServer(0, registry=CollectorRegistry(), routes={"/status": status, "/broken": broken})
    srv.start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        code, body, ctype = _get(base + "/status?verbose=1")
        assert code == 200 and ctype == "application/json"
        assert json.loads(body) == {"detectors": {"feature_drift": {"firing": 0}}, "calls": 1}
        code, body, _ = _get(base + "/broken")
        assert code == 500 and "status unavailable" in json.loads(body)["error"]
        assert _get(base + "/healthz")[0] == 200
    finally:
        srv.stop()


def test_a_client_that_leaves_before_the_answer_is_no_traceback(capfd, caplog):
    """A readiness probe that times out closes its socket before the answer is written: the server
    drops the answer quietly (socketserver would print a BrokenPipeError traceback on stderr)."""
    import socket
    import struct
    import threading

    answered = threading.Event()

    def slow_ready():
        answered.wait(5)  # the client is gone by the time the answer is written
        return True, {"pad": "x" * 300_000}  # more than the socket buffers take: the write fails

    srv = HealthServer(0, ready=slow_ready, registry=CollectorRegistry())
    srv.start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.close()
        answered.set()
        assert _get(f"http://127.0.0.1:{srv.port}/healthz")[0] == 200  # still serving
    finally:
        srv.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
