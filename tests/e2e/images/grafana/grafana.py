#!/usr/bin/env python3
"""Test-only stand-in for Grafana (docs/container-testing.md): listens on :3000 and serves, under the
sub-path of GF_SERVER_ROOT_URL (GF_SERVER_SERVE_FROM_SUB_PATH), the health endpoint and a page. Like
Grafana it refuses to start without its admin password file, so the secret mount is exercised too."""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

password_file = os.environ.get("GF_SECURITY_ADMIN_PASSWORD__FILE", "")
try:
    with open(password_file) as f:
        if not f.read().strip():
            sys.exit(f"grafana stand-in: {password_file} is empty")
except OSError as exc:
    sys.exit(f"grafana stand-in: cannot read the admin password: {exc}")

prefix = urlsplit(os.environ.get("GF_SERVER_ROOT_URL", "")).path.rstrip("/")


class Handler(BaseHTTPRequestHandler):
    server_version = "grafana-stand-in"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == f"{prefix}/api/health":
            self.answer(200, "application/json", json.dumps({"database": "ok", "version": "stand-in"}))
        elif path in (f"{prefix}/", f"{prefix}/login"):
            self.answer(200, "text/html; charset=utf-8", "<!doctype html><title>Grafana</title>grafana stand-in")
        else:
            self.answer(404, "text/plain", "not found")

    def answer(self, status: int, kind: str, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write(json.dumps({"logger": "grafana-stand-in", "msg": format % args}) + "\n")


ThreadingHTTPServer(("0.0.0.0", 3000), Handler).serve_forever()  # noqa: S104 - a container's own port
