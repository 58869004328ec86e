"""What every sender shares: the email, the outcome of a batch, the errors that tell the send op what to do.

How a `send_batch` call ends:
- `BatchOutcome(provider_ids=[...])`: accepted (possibly on a retry, possibly a replay of an earlier
  acceptance of the same key);
- `BatchOutcome(error=...)`: permanently rejected (400/422 validation, 409 key reused with another
  payload): mark those emails failed and go on with the others;
- `SenderConfigurationError`: the key or account cannot send (401/403, wrong URL): stop everything;
- `TransientSendError`: 429/5xx/timeouts outlasted `max_attempts`: fail the op; its RetryPolicy re-runs
  it later with the SAME idempotency keys (Resend honours a key for 24 h), so nothing goes out twice.
"""

import re
from dataclasses import dataclass

from dagster import ConfigurableResource
from pydantic import Field

RESEND_MAX_BATCH_SIZE = 100
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    from_address: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]  # includes List-Unsubscribe and List-Unsubscribe-Post
    tags: dict[str, str]  # e.g. campaign, step, variant


@dataclass
class BatchOutcome:
    provider_ids: list[str] | None  # one per email, in order, when accepted
    error: str | None  # set when the batch was permanently rejected
    attempts: int


class SenderConfigurationError(Exception):
    """The sender cannot work as configured (bad/missing key, unverified domain, wrong URL): stop everything."""


class TransientSendError(Exception):
    """Retries exhausted on 429/5xx/timeouts; re-running later with the same idempotency keys is safe."""


def sanitize_tag(value: str) -> str:
    """Resend tags allow ASCII letters, digits, `_` and `-` only, at most 256 characters."""
    cleaned = _TAG_CHARS.sub("_", str(value))[:256]
    return cleaned or "_"


class EmailSender(ConfigurableResource):
    """Sends batches of outreach emails; implementations are idempotent per `idempotency_key`."""

    max_batch_size: int = Field(default=100, gt=0, le=RESEND_MAX_BATCH_SIZE, description="Emails per batch call.")

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def live(self) -> bool:
        """Whether emails reach real inboxes (then the campaign must carry a real postal address)."""
        return True

    def send_batch(self, emails: list[OutgoingEmail], idempotency_key: str) -> BatchOutcome:
        raise NotImplementedError

    def wait_out_rate_window(self) -> None:
        """Return once a call made now could not share a rate window with this sender's earlier calls."""

    def _check_batch(self, emails: list[OutgoingEmail], idempotency_key: str) -> None:
        if not idempotency_key or len(idempotency_key) > 256:
            raise ValueError("idempotency_key must be 1 to 256 characters")
        if len(emails) > self.max_batch_size:
            raise ValueError(f"a batch holds at most {self.max_batch_size} emails, got {len(emails)}")
