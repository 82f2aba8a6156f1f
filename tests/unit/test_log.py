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
