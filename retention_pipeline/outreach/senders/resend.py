"""`ResendSender`: the Resend API through the official SDK, paced to the team's rate limit, retried with
the same Idempotency-Key on every attempt, so a batch is accepted at most once whatever happens on the wire.

The API key never appears in a message, a log line or a repr.
"""

import random
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import resend
from dagster import get_dagster_logger
from pydantic import Field, PrivateAttr
from resend.exceptions import ResendError
from resend.http_client_requests import RequestsClient

from retention_pipeline.outreach.senders.base import (
    BatchOutcome,
    EmailSender,
    OutgoingEmail,
    SenderConfigurationError,
    TransientSendError,
    sanitize_tag,
)

log = get_dagster_logger("retention_pipeline.outreach.senders")

# Paced calls start (1 + 2 %)/rps apart: whatever the rate, N calls then span >= 1.02 s, so jitter of up
# to 20 ms in arrival times does not trip a sliding window of N requests per second. Each rate-limit 429
# widens the slack by 2 points (up to 10 %) for the rest of the instance's life.
_PACING_SLACK = 0.02
_PACING_SLACK_STEP = 0.02
_PACING_SLACK_MAX = 0.10
# Jitter beyond the slack: a call that takes longer than the median of the recent ones may have reached the
# API that much later than it started (a 60 ms garbage collection pass in the client, a wait on the SDK
# gate, a slow hop), so the calls after it are shifted by the excess. Otherwise the call N places later
# lands inside the same 1 s window and costs a 429 plus a 1 s retry-after; the shift costs the excess only.
_CALL_TIMES_KEPT = 15
_PERMANENT_CODES = {400, 409, 413, 415, 422}
_QUOTA_TYPES = {"daily_quota_exceeded", "monthly_quota_exceeded"}
# A 429 asking for a longer wait than this (or than backoff_max_seconds) fails the op instead of sleeping in it.
_MAX_RETRY_AFTER_SECONDS = 60.0


def to_resend_params(email: OutgoingEmail) -> dict[str, Any]:
    """One email in the JSON shape of Resend's send / batch endpoints."""
    params: dict[str, Any] = {
        "from": email.from_address,
        "to": [email.to],
        "subject": email.subject,
        "html": email.html,
        "text": email.text,
    }
    if email.headers:
        params["headers"] = dict(email.headers)
    if email.tags:
        params["tags"] = [{"name": sanitize_tag(k), "value": sanitize_tag(v)} for k, v in email.tags.items()]
    return params


class _SdkGate:
    """The SDK keeps key, URL and HTTP client in module globals. Calls with the same settings may run
    concurrently (e.g. batches sent from a few threads to hide latency); calls with other settings wait."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._settings: tuple | None = None
        self._users = 0

    @contextmanager
    def use(self, api_key: str, api_url: str, timeout: float, client: RequestsClient) -> Iterator[None]:
        settings = (api_key, api_url, timeout)
        with self._cond:
            while self._users and self._settings != settings:
                self._cond.wait()
            if not self._users:
                self._settings = settings
                resend.default_http_client = client
            # Re-applied on every call: other code in the process may have changed them meanwhile.
            resend.api_key = api_key
            resend.api_url = api_url
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                if not self._users:
                    self._cond.notify_all()


_SDK_GATE = _SdkGate()


@dataclass(frozen=True)
class _Decision:
    kind: str  # "config", "permanent", "retry", "give_up"
    message: str
    wait: float = 0.0


class ResendSender(EmailSender):
    """The Resend API (official SDK), paced, retried with one Idempotency-Key per batch."""

    api_key: str = Field(repr=False, description="Resend API key (wire to EnvVar('RESEND_API_KEY')).")
    api_url: str = Field(default="https://api.resend.com", description="Resend API base URL.")
    requests_per_second: float = Field(
        default=2.0, gt=0, description="Client-side pacing: calls start at least 1/rps apart (Resend's default team limit is 2)."
    )
    max_attempts: int = Field(default=8, ge=1, description="Attempts per batch, all with the same Idempotency-Key.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="HTTP timeout per attempt.")
    backoff_base_seconds: float = Field(default=1.0, ge=0, description="Exponential backoff base (full jitter).")
    backoff_max_seconds: float = Field(default=60.0, ge=0, description="Cap of one backoff wait.")

    _pace_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _next_start: float = PrivateAttr(default=0.0)
    _slack: float = PrivateAttr(default=_PACING_SLACK)
    _call_seconds: deque = PrivateAttr(default_factory=lambda: deque(maxlen=_CALL_TIMES_KEPT))
    _http_client: RequestsClient | None = PrivateAttr(default=None)

    def __repr__(self) -> str:
        return (
            f"ResendSender(api_url={self.api_url!r}, api_key=[redacted], requests_per_second={self.requests_per_second}, "
            f"max_attempts={self.max_attempts}, max_batch_size={self.max_batch_size})"
        )

    __str__ = __repr__

    @property
    def name(self) -> str:
        return "resend"

    # -- public ------------------------------------------------------------------------------
    def send_batch(self, emails: list[OutgoingEmail], idempotency_key: str) -> BatchOutcome:
        self._check_batch(emails, idempotency_key)
        if not emails:
            return BatchOutcome(provider_ids=[], error=None, attempts=0)
        if not (self.api_key or "").strip():
            raise SenderConfigurationError(
                "The Resend API key is empty. Set RESEND_API_KEY to a key from https://resend.com/api-keys "
                "(or unset it to use the local outbox)."
            )
        params = [to_resend_params(e) for e in emails]
        jitter = random.Random(idempotency_key)  # deterministic per batch, different across batches
        attempts = 0
        transient_failures = 0
        while True:
            attempts += 1
            decision: _Decision | None = None
            response: Any = None
            try:
                response = self._post(params, idempotency_key)
            except ResendError as exc:
                decision = self._classify(exc)
            if decision is None:
                return self._accepted(response, len(emails), attempts, idempotency_key)

            if decision.kind == "config":
                raise SenderConfigurationError(decision.message) from None
            if decision.kind == "permanent":
                log.warning(f"Resend rejected batch {idempotency_key} permanently: {decision.message}")
                return BatchOutcome(provider_ids=None, error=decision.message, attempts=attempts)
            if decision.kind == "give_up" or attempts >= self.max_attempts:
                raise TransientSendError(
                    f"Resend batch {idempotency_key}: {attempts} attempt(s) failed, the last with {decision.message}. "
                    "The batch may or may not have been accepted; re-running with the same idempotency key "
                    "within 24 h is safe and sends nothing twice."
                ) from None
            transient_failures += 1
            wait = decision.wait
            if wait <= 0:
                ceiling = min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (transient_failures - 1))
                wait = jitter.uniform(0, ceiling)
            log.warning(
                f"Resend batch {idempotency_key}: attempt {attempts}/{self.max_attempts} failed with "
                f"{decision.message}; retrying with the same idempotency key in {wait:.2f} s"
            )
            time.sleep(wait)

    # -- internals ---------------------------------------------------------------------------
    def _redact(self, text: Any) -> str:
        text = str(text)
        key = self.api_key or ""
        if len(key) >= 4:
            text = text.replace(key, "[redacted]")
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1[redacted]", text)

    def _pace(self) -> None:
        """Block until this call may start: starts are at least (1 + slack)/rps apart."""
        with self._pace_lock:
            now = time.monotonic()
            if self._next_start > now:
                time.sleep(self._next_start - now)
            self._next_start = time.monotonic() + self._interval()

    def wait_out_rate_window(self) -> None:
        # The send op holds the `email_provider` pool slot until then, so the next run's first call is paced
        # after our last one as if both came from this sender.
        with self._pace_lock:
            wait = self._next_start - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _interval(self) -> float:
        return (1.0 + self._slack) / self.requests_per_second

    def _post(self, params: list[dict[str, Any]], idempotency_key: str) -> Any:
        if self._http_client is None:
            self._http_client = RequestsClient(timeout=self.timeout_seconds)  # type: ignore[arg-type]
        self._pace()
        started = time.monotonic()
        try:
            with _SDK_GATE.use(self.api_key, self.api_url.rstrip("/"), self.timeout_seconds, self._http_client):
                return resend.Batch.send(params, options={"idempotency_key": idempotency_key})
        finally:
            self._shift_pace_after_a_slow_call(started, time.monotonic() - started)

    def _shift_pace_after_a_slow_call(self, started: float, seconds: float) -> None:
        """Treat a call slower than the recent median as having started that much later (see _CALL_TIMES_KEPT)."""
        with self._pace_lock:
            # Without a history (a fresh run's first call, which also opens the connection) the call may
            # have reached the API as late as it returned (41 ms after its start in a new run worker on a
            # loaded 2-core machine: the next call landed in its rate window and got a 429). Assuming the worst costs one
            # call's duration once.
            typical = statistics.median(self._call_seconds) if self._call_seconds else 0.0
            self._call_seconds.append(seconds)
            late = seconds - typical
            if late > 0:
                self._next_start = max(self._next_start, started + late + self._interval())

    def _accepted(self, response: Any, count: int, attempts: int, idempotency_key: str) -> BatchOutcome:
        data = response.get("data") if isinstance(response, dict) else None
        ids = [item.get("id") for item in data] if isinstance(data, list) else []
        if len(ids) != count or not all(isinstance(i, str) and i for i in ids):
            # Should not happen in strict batch mode; the emails may have gone out, so say so.
            return BatchOutcome(
                provider_ids=None,
                error=f"Resend accepted batch {idempotency_key} but returned {len(ids)} ids for {count} emails; "
                "check the Resend dashboard before re-sending these emails under a new key.",
                attempts=attempts,
            )
        if attempts > 1:
            log.info(f"Resend batch {idempotency_key} accepted after {attempts} attempts")
        return BatchOutcome(provider_ids=list(ids), error=None, attempts=attempts)

    def _classify(self, exc: ResendError) -> _Decision:
        try:
            code = int(exc.code)
        except (TypeError, ValueError):
            code = 500
        error_type = str(getattr(exc, "error_type", "") or "")
        message = self._redact(getattr(exc, "message", "") or exc)
        described = f"HTTP {code} {error_type}: {message}"
        if error_type == "HttpClientError":
            return _Decision("retry", f"a transport error or timeout ({message})")
        if code in (401, 403):
            if error_type in ("missing_api_key", "invalid_api_key", "restricted_api_key") or code == 401:
                what = (
                    "Resend refused the API key. Set RESEND_API_KEY to a valid sending key from "
                    "https://resend.com/api-keys (or unset it to use the local outbox), then re-run."
                )
            else:
                what = (
                    "Resend refused to send for this account (check that the sending domain is verified "
                    "and the key may send), then re-run."
                )
            return _Decision("config", f"{what} ({described})")
        if code in (404, 405):
            return _Decision(
                "config",
                f"{self.api_url.rstrip('/')}/emails/batch does not exist ({described}); check the sender's api_url.",
            )
        if code == 429:
            if error_type in _QUOTA_TYPES:
                return _Decision("give_up", f"{described} (the account's sending quota is used up)")
            with self._pace_lock:
                self._slack = min(_PACING_SLACK_MAX, self._slack + _PACING_SLACK_STEP)
            retry_after = self._retry_after(exc.headers)
            if retry_after > max(_MAX_RETRY_AFTER_SECONDS, self.backoff_max_seconds):
                return _Decision("give_up", f"{described} (Resend asks to wait {retry_after:.0f} s)")
            return _Decision("retry", described, retry_after)
        if code == 409 and error_type == "concurrent_idempotent_requests":
            return _Decision("retry", described)
        if code in _PERMANENT_CODES:
            return _Decision("permanent", f"Resend rejected the batch ({described})")
        if code == 408 or code >= 500:
            return _Decision("retry", described)
        return _Decision("permanent", f"Resend rejected the batch ({described})")

    @staticmethod
    def _retry_after(headers: dict[str, str] | None) -> float:
        """Seconds from a `retry-after` header (seconds or HTTP date); 0 when absent (then: backoff)."""
        value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None)
        if value is None:
            return 0.0
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
