#!/usr/bin/env python3
"""Default Alertmanager receiver of the Tally stack: logs every notification, needs no secret.

Alertmanager POSTs its webhook payload to http://alert-logger:9095/<receiver>; this prints one JSON
line per notification to stdout (`docker compose logs alert-logger`) with the receiver taken from
the URL path. It is deliberately stdlib-only so it runs in any Python 3.9+ image, and it is the same
program the end-to-end tests use as their webhook, so what is tested is what ships.

    python3 webhook_logger.py [--listen 0.0.0.0:9095]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # Alertmanager payloads are a few KiB; refuse anything absurd.


class Handler(BaseHTTPRequestHandler):
    server_version = "tally-alert-logger"

    def _reply(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path == "/healthz":
            self._reply(200, b"ok\n")
        else:
            self._reply(404)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._reply(413 if length > MAX_BODY else 400)
            return
        try:
            payload = json.loads(self.rfile.read(length))
        except ValueError:
            self._reply(400)
            return
        record = {
            "ts": time.time(),
            "receiver": self.path.strip("/").split("?")[0] or "default",
            "status": payload.get("status"),
            "alerts": [
                {
                    "status": a.get("status"),
                    "labels": a.get("labels", {}),
                    "summary": a.get("annotations", {}).get("summary"),
                    "runbook_url": a.get("annotations", {}).get("runbook_url"),
                    "startsAt": a.get("startsAt"),
                    "endsAt": a.get("endsAt"),
                }
                for a in payload.get("alerts", [])
            ],
            "groupLabels": payload.get("groupLabels", {}),
            "externalURL": payload.get("externalURL"),
        }
        sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
        sys.stdout.flush()
        self._reply(200)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # Access logs would interleave with the JSON lines operators grep for.
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="0.0.0.0:9095", help="host:port (default %(default)s)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    # Inside its container it must listen on the network; tests pass --listen 127.0.0.1:<port>.
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104
    # As PID 1 in a container SIGTERM is ignored unless handled; exit cleanly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"ts": time.time(), "msg": "listening", "listen": args.listen}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
