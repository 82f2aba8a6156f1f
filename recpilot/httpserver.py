"""The HTTP side of every service: ``/metrics`` (Prometheus text), ``/healthz`` (live) and
``/readyz`` (ready: the service can do its job now, with the failing checks in the body), plus any
JSON documents a service serves (``routes``: path -> a function returning a JSON-able dict, e.g.
the monitor's ``/status``)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, dict]]


def _always_ready() -> tuple[bool, dict]:
    return True, {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that left before its answer was written (a probe's timeout) is no error; any
        other failure of a request is logged as one JSON line (not socketserver's traceback on stderr)."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            return
        log.error("http request failed", exc_info=True, extra={"client": f"{client_address[0]}:{client_address[1]}"})


class HealthServer:
    def __init__(
        self,
        port: int,
        host: str | None = None,
        ready: ReadyCheck = _always_ready,
        live: ReadyCheck = _always_ready,
        registry: CollectorRegistry = REGISTRY,
        routes: dict[str, Callable[[], dict]] | None = None,
    ) -> None:
        if host is None:
            from recpilot.settings import PlatformSettings, load

            host = load(PlatformSettings).bind_host
        self.host, self.port = host, port
        self.ready, self.live, self.registry = ready, live, registry
        self.routes = dict(routes or {})
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:  # quiet: metrics scrapes are frequent
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    data = generate_latest(outer.registry)
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif path in ("/healthz", "/readyz"):
                    check = outer.live if path == "/healthz" else outer.ready
                    try:
                        ok, details = check()
                    except Exception as exc:  # a failing check is "not ready", with the reason
                        ok, details = False, {"error": repr(exc)}
                    self._json(200 if ok else 503, {"status": "ok" if ok else "unavailable", **details})
                elif path in outer.routes:
                    try:
                        body = outer.routes[path]()
                    except Exception as exc:
                        log.exception("route failed", extra={"path": path})
                        self._json(500, {"error": repr(exc)})
                        return
                    self._json(200, body)
                else:
                    self._json(404, {"error": f"no route {path}"})

        return Handler

    def start(self) -> None:
        self._server = _Server((self.host, self.port), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("http server listening", extra={"address": f"{self.host}:{self.port}"})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
