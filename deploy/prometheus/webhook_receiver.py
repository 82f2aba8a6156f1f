"""An example webhook receiver for recpilot's alerts, independent of recpilot (standard library only):
it prints one JSON line per alert it receives, from Alertmanager (deploy/prometheus/alertmanager.yml
posts to /hooks/page and /hooks/ticket) or straight from the monitor's signed webhooks
(RECPILOT_MONITOR_WEBHOOK_URLS=http://127.0.0.1:9999/hooks/monitor).

With a secret (``--secret`` or WEBHOOK_SECRET, the monitor's RECPILOT_MONITOR_WEBHOOK_SECRET), a
request to /hooks/monitor must carry ``X-Recpilot-Signature: sha256=<hex HMAC-SHA256(secret, raw
body)>``, else it is answered 401 and not printed. Verify on the raw bytes, before parsing them.

    python deploy/prometheus/webhook_receiver.py --port 9999 --secret "$RECPILOT_MONITOR_WEBHOOK_SECRET"
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIGNED_PATHS = ("/hooks/monitor",)


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """The check a receiver makes: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return bool(header) and hmac.compare_digest(expected.encode(), header.strip().encode())


def make_handler(secret: bytes | None, out=sys.stdout):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if secret and self.path in SIGNED_PATHS and not signature_ok(
                    secret, body, self.headers.get("X-Recpilot-Signature")):
                self.send_response(401)
                self.end_headers()
                return
            try:
                doc = json.loads(body)
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            for alert in doc.get("alerts", []):
                out.write(json.dumps({"path": self.path, "status": alert.get("status"),
                                      "labels": alert.get("labels"), "summary": alert.get("annotations", {}).get("summary"),
                                      "startsAt": alert.get("startsAt"), "endsAt": alert.get("endsAt")}) + "\n")
            out.flush()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args):
            pass

    return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--secret", default=os.environ.get("WEBHOOK_SECRET"), help="HMAC key of the monitor's webhooks")
    args = p.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(args.secret.encode() if args.secret else None))
    print(f"listening on http://{args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
