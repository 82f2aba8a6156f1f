"""Structured logging: one JSON object per line on stdout.

``log.info("delivered", extra={"offset": 42, "request_id": rid})`` puts ``offset`` and
``request_id`` into the JSON object as fields. Secrets never go into ``extra``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str = "") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.service:
            out["service"] = self.service
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


# Loggers of Kafka clients: while a broker is down they repeat the same complaint many times a
# second (aiokafka in the features service, librdkafka's reconnect attempts).
REPEAT_LOGGERS = ("aiokafka", "kafka", "faust", "mode", "recpilot.kafka.client", "recpilot.deployments.kafka")
_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Collapses repeated complaints: the first record of a kind passes; the same kind again (same
    logger and level, same message and ``error`` field with digits ignored) within ``window_s`` is
    counted instead, and the first one after the window passes with ``repeated`` = how many were
    held back. Applies to the Kafka clients' loggers and to records logged with
    ``extra={"collapse": True}`` (a per-request warning during an outage); others are untouched."""

    def __init__(self, window_s: float = 30.0, loggers: tuple[str, ...] = REPEAT_LOGGERS, max_kinds: int = 1000,
                 clock=time.monotonic) -> None:
        super().__init__()
        self.window_s, self.loggers, self.max_kinds, self.clock = window_s, loggers, max_kinds, clock
        self._seen: dict[tuple, list] = {}  # kind -> [time the last record passed, held back since]
        self._lock = threading.Lock()

    def _ours(self, name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in self.loggers)

    def filter(self, record: logging.LogRecord) -> bool:
        collapse = record.__dict__.pop("collapse", False)
        if not (collapse or self._ours(record.name)):
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the handler's problem, not ours
            return True
        error = str(record.__dict__.get("error", ""))
        kind = (record.name, record.levelno, _DIGITS.sub("#", text)[:200], _DIGITS.sub("#", error)[:200])
        now = self.clock()
        with self._lock:
            entry = self._seen.get(kind)
            if entry is not None and now - entry[0] < self.window_s:
                entry[1] += 1
                return False
            if entry is not None and entry[1]:
                record.repeated = entry[1]
                record.repeated_window_s = round(now - entry[0], 1)
            if len(self._seen) >= self.max_kinds:
                self._seen.clear()
            self._seen[kind] = [now, 0]
        return True


def setup_logging(service: str = "", level: str | int = "INFO", stream=None) -> None:
    """Route the root logger to JSON lines on ``stream`` (stdout by default). Idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_recpilot", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RepeatFilter())
    handler._recpilot = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # Chatty libraries stay at WARNING unless asked.
    for noisy in ("aiokafka", "kafka", "urllib3", "faust", "mode", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
