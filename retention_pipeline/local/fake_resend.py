"""A local HTTP server that behaves like Resend's `POST /emails/batch`, for tests and chaos runs.

In-process::

    with FakeResend(api_key="re_test", rate=2) as fake:
        sender = ResendSender(api_key="re_test", api_url=fake.url)
        ...
        fake.requests, fake.accepted

As a standalone process (e.g. to kill the client mid-send and count what really went out)::

    python -m retention_pipeline.local.fake_resend --port 0 --log sent.jsonl [--rate 2]
        [--fault-rate 0.2 --seed 1 --faults 429,500,hang,500_after_accept --hang-seconds 2]

It prints `FakeResend listening on http://127.0.0.1:PORT` on stdout once it accepts connections, and
appends every accepted email to the log as one JSON line, fsync'ed before the response is sent.

What it implements, like Resend:
- Bearer auth: 401 `missing_api_key` without a key, 403 `invalid_api_key` for a wrong one (when an
  expected key is configured; otherwise any non-empty key is accepted). Errors use Resend's JSON
  shape `{"statusCode": .., "name": .., "message": ..}`.
- At most 100 emails per batch, `from`/`to`/`subject` required, addresses and tags validated: 422.
- `Idempotency-Key`: the same key with the same body returns the original response again and records
  nothing new; the same key with a different body gets 409 `invalid_idempotent_request`. Only
  accepted batches are remembered (a 422 can be corrected and re-sent under the same key).
- A rate limit of `rate` requests per sliding 1 s window for the whole server: 429
  `rate_limit_exceeded` with an integer `retry-after` (>= 1) and `ratelimit-*` headers. Requests
  refused by the limiter do not count against it.
- Success: `{"data": [{"id": "<uuid>"}, ...]}`, content-type application/json.

Faults, drawn with a seeded generator at `fault_rate` from `fault_kinds`, or queued with `script()`:
- "429": a rate-limit answer; "500": an internal error before anything is accepted;
- "hang": no answer for `hang_seconds` (longer than the client's timeout), then the connection is
  closed; nothing is accepted;
- "500_after_accept": the batch is accepted and logged, then the client gets a 500: the realistic
  dangerous case, which only the idempotency key makes safe to retry;
- a `ScriptedResponse` (scripts only): any status, body and headers; "ok": process normally.
`latency_seconds` delays every answer (decided on arrival), like the real API's response time;
`delay_arrivals()` makes chosen requests reach the server late, like a slow hop on the way in.

Only the standard library is used, so the standalone process starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from retention_pipeline.local.fake_resend_api import (
    BATCH_PATH,
    DEFAULT_FAULT_KINDS,
    FAULT_KINDS,
    AcceptedEmail,
    Reply,
    RequestRecord,
    ScriptedResponse,
    error_reply,
    validate_batch,
)
from retention_pipeline.local.fake_resend_http import FakeResendHandler, FakeResendServer

__all__ = ["AcceptedEmail", "FakeResend", "RequestRecord", "ScriptedResponse", "main"]


class FakeResend:
    """A Resend-like server on 127.0.0.1 (port 0 picks a free port). Use as a context manager."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: int = 2,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = DEFAULT_FAULT_KINDS,
        seed: int = 0,
        hang_seconds: float = 35.0,
        retry_after: int = 1,
        latency_seconds: float = 0.0,
        log_path: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ):
        self.api_key = api_key
        self.host = host
        self.port = port
        self.rate = int(rate)
        self.fault_rate = float(fault_rate)
        self.fault_kinds = tuple(fault_kinds)
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown or (self.fault_rate > 0 and not self.fault_kinds):
            raise ValueError(f"fault kinds must be among {FAULT_KINDS}, got {self.fault_kinds}")
        self.seed = seed
        self.hang_seconds = float(hang_seconds)
        self.retry_after = max(1, int(retry_after))
        self.latency_seconds = float(latency_seconds)
        self.log_path = Path(log_path) if log_path else None
        self.verbose = verbose
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: FakeResendServer | None = None
        self._thread: threading.Thread | None = None
        self._init_state()

    def _init_state(self) -> None:
        self._rng = random.Random(self.seed)
        self._requests: list[RequestRecord] = []
        self._accepted: list[AcceptedEmail] = []
        self._idempotency: dict[str, tuple[str, Any]] = {}
        self._window: deque[float] = deque()
        self._script: deque[str | ScriptedResponse] = deque()
        self._arrival_delays: deque[float] = deque()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeResend:
        if self._server is not None:
            return self
        self.stopping.clear()
        server = FakeResendServer((self.host, self.port), FakeResendHandler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeResend", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self.stopping.set()  # wakes hanging handlers
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeResend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeResend is not started")
        return f"http://{self.host}:{self.port}"

    # -- what tests look at ------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def accepted(self) -> list[AcceptedEmail]:
        with self._lock:
            return list(self._accepted)

    def delay_arrivals(self, *seconds: float) -> None:
        """Make the next requests, in order, reach the API (and its rate limiter) this many seconds late."""
        with self._lock:
            self._arrival_delays.extend(float(s) for s in seconds)

    def take_arrival_delay(self) -> float:
        with self._lock:
            return self._arrival_delays.popleft() if self._arrival_delays else 0.0

    def script(self, *responses: str | ScriptedResponse) -> None:
        """Queue answers for the next requests, in order (after auth, before the limiter and random faults)."""
        for response in responses:
            if isinstance(response, str) and response not in (*FAULT_KINDS, "ok"):
                raise ValueError(f"unknown scripted response {response!r}")
        with self._lock:
            self._script.extend(responses)

    def reset(self) -> None:
        """Forget requests, accepted emails, idempotency keys, the script and the rate window."""
        with self._lock:
            self._init_state()

    # -- the API -----------------------------------------------------------------------------
    def decide(self, method: str, target: str, headers: dict[str, str], raw: bytes, now: float) -> Reply:
        with self._lock:
            lower = {k.lower(): v for k, v in headers.items()}
            key = lower.get("idempotency-key")
            shown = {k: ("Bearer [redacted]" if k.lower() == "authorization" else v) for k, v in headers.items()}
            emails: Any = None
            try:
                emails = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError):
                emails = None
            count = len(emails) if isinstance(emails, list) else None
            reply, outcome = self._answer(method, urlsplit(target).path, lower, raw, emails, key, now)
            self._requests.append(
                RequestRecord(
                    method, urlsplit(target).path, shown, key, count, None if reply.hang else reply.status, now, outcome
                )
            )
            return reply

    def _answer(self, method, path, headers, raw, emails, key, now) -> tuple[Reply, str]:
        if path != BATCH_PATH:
            return error_reply(404, "not_found", "The requested endpoint does not exist."), "not_found"
        if method != "POST":
            return error_reply(405, "method_not_allowed", "Method is not allowed for the requested path."), "method_not_allowed"
        authorization = headers.get("authorization", "")
        token = authorization[len("Bearer ") :].strip() if authorization.startswith("Bearer ") else ""
        if not token:
            return error_reply(401, "missing_api_key", "Missing API key in the authorization header."), "unauthorized"
        if self.api_key is not None and token != self.api_key:
            return error_reply(403, "invalid_api_key", "API key is invalid"), "forbidden"

        if self._script:
            scripted = self._script.popleft()
            if scripted != "ok":
                return self._fault(scripted, emails, raw, key, now)

        if self.rate > 0:
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate:
                return self._rate_limited(now), "rate_limited"
            self._window.append(now)

        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            return self._fault(self._rng.choice(self.fault_kinds), emails, raw, key, now)
        return self._accept(emails, raw, key, now)

    def _ratelimit_headers(self, now: float) -> dict[str, str]:
        if self.rate <= 0:
            return {}
        live = [t for t in self._window if t > now - 1.0]
        reset = max(1, math.ceil(live[0] + 1.0 - now)) if live else 1
        return {
            "ratelimit-limit": str(self.rate),
            "ratelimit-remaining": str(max(0, self.rate - len(live))),
            "ratelimit-reset": str(reset),
            "ratelimit-policy": f"{self.rate};w=1",
        }

    def _rate_limited(self, now: float) -> Reply:
        headers = self._ratelimit_headers(now)
        headers["retry-after"] = str(max(self.retry_after, int(headers.get("ratelimit-reset", "1"))))
        limit = f" You can only make {self.rate} requests per second." if self.rate > 0 else ""
        return error_reply(
            429,
            "rate_limit_exceeded",
            f"Too many requests.{limit} See rate limit response headers for more information.",
            headers,
        )

    def _fault(self, kind: str | ScriptedResponse, emails, raw, key, now) -> tuple[Reply, str]:
        if isinstance(kind, ScriptedResponse):
            if kind.accept:
                self._accept(emails, raw, key, now)
            body = (
                kind.body
                if kind.body is not None
                else {"statusCode": kind.status, "name": "scripted", "message": f"Scripted {kind.status} response."}
            )
            return Reply(kind.status, body, dict(kind.headers)), "scripted"
        if kind == "429":
            return self._rate_limited(now), "fault_429"
        if kind == "500":
            return error_reply(500, "application_error", "An unexpected error occurred."), "fault_500"
        if kind == "hang":
            return Reply(hang=True), "hang"
        if kind == "500_after_accept":
            reply, outcome = self._accept(emails, raw, key, now)
            if reply.status != 200:
                return reply, outcome
            return error_reply(500, "application_error", "An unexpected error occurred."), "accepted_then_500"
        raise ValueError(kind)

    def _accept(self, emails, raw, key, now) -> tuple[Reply, str]:
        headers = self._ratelimit_headers(now)
        if key is not None and not 1 <= len(key) <= 256:
            return error_reply(
                400, "invalid_idempotency_key", "The idempotency key must be 1 to 256 characters.", headers
            ), "invalid"
        if not isinstance(emails, list):
            if raw and emails is None:
                return error_reply(400, "validation_error", "Invalid JSON body.", headers), "invalid"
            return error_reply(422, "validation_error", "The batch must be a JSON array of emails.", headers), "invalid"
        fingerprint = hashlib.sha256(json.dumps(emails, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        if key is not None and key in self._idempotency:
            stored_fingerprint, stored_body = self._idempotency[key]
            if stored_fingerprint != fingerprint:
                return error_reply(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload. Change your idempotency key or payload.",
                    headers,
                ), "conflict"
            return Reply(200, stored_body, headers), "replayed"
        invalid = validate_batch(emails)
        if invalid is not None:
            invalid.headers.update(headers)
            return invalid, "invalid"
        ids = [str(uuid.uuid4()) for _ in emails]
        accepted = [AcceptedEmail(i, key, pos, email, now) for pos, (i, email) in enumerate(zip(ids, emails, strict=False))]
        if self.log_path is not None:
            self._append_log(accepted)
        self._accepted.extend(accepted)
        body = {"data": [{"id": i} for i in ids]}
        if key is not None:
            self._idempotency[key] = (fingerprint, body)
        return Reply(200, body, headers), "accepted"

    def _append_log(self, accepted: list[AcceptedEmail]) -> None:
        lines = "".join(
            json.dumps(
                {
                    "id": a.id,
                    "idempotency_key": a.idempotency_key,
                    "position": a.position,
                    "accepted_at": time.time(),
                    "email": a.email,
                }
            )
            + "\n"
            for a in accepted
        )
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retention_pipeline.local.fake_resend",
        description="A local server that behaves like Resend's POST /emails/batch.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--log", help="append every accepted email as a JSON line (fsync'ed)")
    parser.add_argument("--api-key", help="the expected Bearer key (default: any non-empty key)")
    parser.add_argument("--rate", type=int, default=2, help="requests per sliding second; 0 = unlimited")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(DEFAULT_FAULT_KINDS), help=f"comma-separated, among {FAULT_KINDS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=35.0)
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every answer takes")
    parser.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = parser.parse_args(argv)

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    fake = FakeResend(
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        rate=args.rate,
        fault_rate=args.fault_rate,
        fault_kinds=[k for k in args.faults.split(",") if k],
        seed=args.seed,
        hang_seconds=args.hang_seconds,
        retry_after=args.retry_after,
        latency_seconds=args.latency,
        log_path=args.log,
        verbose=args.verbose,
    )
    with fake:
        print(f"FakeResend listening on {fake.url}", flush=True)
        while not done.wait(0.2):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
