"""The fake Resend server's HTTP side: a threading server whose handler hands each request to its
`FakeResend` (which decides the answer and records it) and then writes the answer, late or never."""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retention_pipeline.local.fake_resend import FakeResend


class FakeResendServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    fake: FakeResend


class FakeResendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeResend/1.0"
    server: FakeResendServer

    def do_POST(self) -> None:
        self._serve("POST")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        delay = fake.take_arrival_delay()
        if delay > 0:  # a slow hop on the way in: the limiter sees the request this much later
            fake.stopping.wait(delay)
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        reply = fake.decide(method, self.path, dict(self.headers.items()), raw, arrived)
        if reply.hang:
            # Say nothing for longer than the client waits, then drop the connection.
            fake.stopping.wait(fake.hang_seconds)
            self.close_connection = True
            return
        if fake.latency_seconds > 0:  # time the real API takes to answer (decided and recorded already)
            fake.stopping.wait(fake.latency_seconds)
        data = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.fake.verbose:
            sys.stderr.write(f"FakeResend {self.address_string()} {format % args}\n")
