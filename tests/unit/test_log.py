import io
import json
import logging

from recpilot.log import setup_logging


def test_json_lines_with_extra_fields_and_exceptions():
    buf = io.StringIO()
    setup_logging("ingest", "DEBUG", stream=buf)
    log = logging.getLogger("recpilot.test")
    log.info("delivered %d", 3, extra={"offset": 42, "request_id": "r-1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["msg"] == "delivered 3"
    assert lines[0]["offset"] == 42 and lines[0]["request_id"] == "r-1"
    assert lines[0]["service"] == "ingest" and lines[0]["level"] == "INFO"
    assert lines[0]["ts"].endswith("Z")
    assert lines[1]["level"] == "ERROR" and "ValueError: boom" in lines[1]["exc"]


def test_setup_is_idempotent():
    buf = io.StringIO()
    setup_logging("a", stream=buf)
    setup_logging("a", stream=buf)
    logging.getLogger("x").warning("once")
    assert len(buf.getvalue().splitlines()) == 1


def test_kafka_client_repeats_are_collapsed_with_a_count_and_others_untouched():
    from recpilot.log import JsonFormatter, RepeatFilter

    now = [100.0]
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("t"))
    handler.addFilter(RepeatFilter(window_s=30.0, clock=lambda: now[0]))
    for name in ("aiokafka.conn", "recpilot.kafka.client", "recpilot.mine"):
        lg = logging.getLogger(name)
        lg.propagate = False
        lg.handlers[:] = [handler]
        lg.setLevel(logging.NOTSET)  # a CLI command run in-process earlier may have quietened it
    kafka, client, mine = (logging.getLogger(n) for n in ("aiokafka.conn", "recpilot.kafka.client", "recpilot.mine"))
    for i in range(50):  # a broker down: the same complaint, only numbers differ
        kafka.error("Unable connect to node with id 1: [Errno 111] Connection refused (attempt %d)", i)
        client.error("FAIL [c#consumer-%d] connect to 127.0.0.1:9092 failed", i)
        mine.warning("event loop lagged")
        now[0] += 0.1
    kafka.error("Unable to update metadata from [1]")  # another kind passes at once
    now[0] += 30.0
    kafka.error("Unable connect to node with id 1: [Errno 111] Connection refused (attempt %d)", 99)
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    by = lambda logger: [x for x in lines if x["logger"] == logger]  # noqa: E731
    assert len(by("recpilot.mine")) == 50  # not a Kafka client: never collapsed
    assert len(by("recpilot.kafka.client")) == 1
    k = by("aiokafka.conn")
    assert [x["msg"][:20] for x in k] == ["Unable connect to no", "Unable to update met", "Unable connect to no"]
    assert "repeated" not in k[0] and k[2]["repeated"] == 49 and k[2]["repeated_window_s"] == 35.0
    for lg in (kafka, client, mine):
        lg.handlers[:] = []
        lg.propagate = True


def test_records_marked_collapse_are_collapsed_per_message_and_error():
    from recpilot.log import JsonFormatter, RepeatFilter

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("t"))
    handler.addFilter(RepeatFilter(window_s=30.0, clock=lambda: 0.0))
    lg = logging.getLogger("services.some.service")
    lg.propagate = False
    lg.handlers[:] = [handler]
    try:
        for i in range(100):  # one warning per request while Redis is down
            lg.warning("feature fetch failed", extra={"request_id": f"r{i}", "error": "ConnectionError()", "collapse": True})
        lg.warning("feature fetch failed", extra={"request_id": "x", "error": "TimeoutError()", "collapse": True})
        lg.warning("feature fetch failed", extra={"request_id": "y", "error": "TimeoutError()"})  # not marked
    finally:
        lg.handlers[:] = []
        lg.propagate = True
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [(x["request_id"], x["error"]) for x in lines] == [("r0", "ConnectionError()"), ("x", "TimeoutError()"),
                                                               ("y", "TimeoutError()")]
    assert all("collapse" not in x for x in lines)
