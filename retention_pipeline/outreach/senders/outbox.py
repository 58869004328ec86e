"""`OutboxSender`: the embedded default without a Resend key. It "sends" into `{rs}.email_outbox` and
writes each message as an RFC 5322 `.eml` file, idempotent per key like Resend."""

# No `from __future__ import annotations` here: Dagster must see `ResourceDependency[...]` as a real
# type (as a string annotation, OutboxSender(app_db=AppDatabase(...)) is rejected).
import json
import os
import uuid
from datetime import UTC, datetime
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import ResourceDependency
from pydantic import Field

from retention_pipeline import clock
from retention_pipeline.outreach.senders.base import BatchOutcome, EmailSender, OutgoingEmail, sanitize_tag
from retention_pipeline.resources import AppDatabase

_OUTBOX_NAMESPACE = uuid.UUID("6f1f3c1e-8f7a-4c51-9a55-0f1f0b7d2c11")
# CRLF line ends; fold only past RFC 5322's hard limit, so List-Unsubscribe URLs stay intact.
_EML_POLICY = email_policy.SMTP.clone(max_line_length=998)
_RESERVED_HEADERS = {"from", "to", "subject", "date", "message-id", "mime-version", "content-type", "content-transfer-encoding"}

_EXISTING = """
SELECT position, message_id, to_address, from_address, subject, html, text_body, headers, eml_path, created_at
FROM {rs}.email_outbox WHERE idempotency_key = :key ORDER BY position
"""
_INSERT = """
INSERT INTO {rs}.email_outbox (idempotency_key, position, message_id, to_address, from_address, subject,
                               html, text_body, headers, eml_path, created_at)
VALUES (:key, :position, :message_id, :to_address, :from_address, :subject, :html, :text_body,
        CAST(:headers AS jsonb), :eml_path, :created_at)
ON CONFLICT DO NOTHING
"""


def outbox_message_id(idempotency_key: str, position: int) -> str:
    """The outbox's provider id: deterministic per (key, position), like a replayed Resend response."""
    return "outbox_" + str(uuid.uuid5(_OUTBOX_NAMESPACE, f"{idempotency_key}\x00{position}"))


class OutboxSender(EmailSender):
    """Embedded default without a Resend key: shows exactly the emails the pipeline would send."""

    app_db: ResourceDependency[AppDatabase]
    outbox_dir: str = Field(description="Git-ignored folder for the .eml files (e.g. .retention/outbox).")

    def __repr__(self) -> str:
        return f"OutboxSender(outbox_dir={self.outbox_dir!r}, app_db={self.app_db.display_url!r})"

    __str__ = __repr__

    @property
    def name(self) -> str:
        return "outbox"

    @property
    def live(self) -> bool:
        return False

    def send_batch(self, emails: list[OutgoingEmail], idempotency_key: str) -> BatchOutcome:
        self._check_batch(emails, idempotency_key)
        if not emails:
            return BatchOutcome(provider_ids=[], error=None, attempts=0)
        folder = Path(self.outbox_dir)
        folder.mkdir(parents=True, exist_ok=True)
        created_at = clock.now()
        wanted = [self._row(idempotency_key, position, e, folder, created_at) for position, e in enumerate(emails)]
        for row in wanted:
            self._eml_bytes(row)  # a header the .eml cannot hold (e.g. a newline) fails before anything is stored
        db = self.app_db
        with db.begin() as conn:
            # Serialise senders of the same key, so "already there?" and the insert cannot interleave.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": "email_outbox:" + idempotency_key})
            existing = [dict(r._mapping) for r in conn.execute(sa.text(db.render(_EXISTING)), {"key": idempotency_key})]
            if existing:
                if not self._same_payload(existing, wanted):
                    return BatchOutcome(
                        provider_ids=None,
                        error=f"outbox: idempotency key {idempotency_key} was already used with a different payload",
                        attempts=1,
                    )
                rows = existing
            else:
                conn.execute(
                    sa.text(db.render(_INSERT)),
                    [{**row, "key": idempotency_key, "headers": json.dumps(row["headers"])} for row in wanted],
                )
                rows = wanted
        # The table is the record; files are (re)written after the commit and only when missing.
        for row in rows:
            path = Path(row["eml_path"] or folder / f"{row['message_id']}.eml")
            if not path.exists():
                self._write_eml(path, row)
        return BatchOutcome(provider_ids=[row["message_id"] for row in rows], error=None, attempts=1)

    @staticmethod
    def _row(key: str, position: int, email: OutgoingEmail, folder: Path, created_at: datetime) -> dict[str, Any]:
        message_id = outbox_message_id(key, position)
        headers = dict(email.headers)
        if email.tags:
            headers["X-Tags"] = "; ".join(f"{sanitize_tag(k)}={sanitize_tag(v)}" for k, v in email.tags.items())
        headers["X-Idempotency-Key"] = key
        return {
            "position": position,
            "message_id": message_id,
            "to_address": email.to,
            "from_address": email.from_address,
            "subject": email.subject,
            "html": email.html,
            "text_body": email.text,
            "headers": headers,
            "eml_path": str((folder / f"{message_id}.eml").resolve()),
            "created_at": created_at,
        }

    @staticmethod
    def _same_payload(existing: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> bool:
        fields = ("position", "to_address", "from_address", "subject", "html", "text_body", "headers")
        return [tuple(r[f] for f in fields) for r in existing] == [tuple(r[f] for f in fields) for r in wanted]

    @classmethod
    def _write_eml(cls, path: Path, row: dict[str, Any]) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(cls._eml_bytes(row))
        os.replace(temporary, path)

    @staticmethod
    def _eml_bytes(row: dict[str, Any]) -> bytes:
        """RFC 5322 message: CRLF line ends, multipart/alternative (text, then html), all headers."""
        message = EmailMessage(policy=_EML_POLICY)
        message["From"] = row["from_address"]
        message["To"] = row["to_address"]
        message["Subject"] = row["subject"]
        message["Date"] = format_datetime(row["created_at"].astimezone(UTC))
        message["Message-ID"] = f"<{row['message_id']}@outbox.retention-pipeline.invalid>"
        for name, value in row["headers"].items():
            if name.lower() not in _RESERVED_HEADERS:
                message[name] = value
        message.set_content(row["text_body"])
        message.add_alternative(row["html"], subtype="html")
        return message.as_bytes()
