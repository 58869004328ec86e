"""The SMTP sender: any relay (Amazon SES, Postmark, Mailgun, an in-house MTA) through `smtplib`.

SMTP has no idempotency key, so the ledger's guarantees are kept differently from Resend:
- one message per batch (`max_batch_size` is 1): every ledger row has its own outcome, and a rejected
  recipient fails only its own row;
- a 4xx reply or a dropped connection is retried with backoff (the message was not accepted); a 5xx
  reply is a permanent failure of that row; a refused login is a configuration error that stops the run;
- the Message-ID is derived from the ledger row's batch key, the same on every attempt and re-run, so
  a receiver that dedupes on Message-ID drops a repeat. What SMTP cannot rule out: the server accepted
  (250) and the connection broke before the reply arrived, or the process died between the 250 and
  the ledger's commit; the re-send then delivers a second copy with the same Message-ID.
The connection is kept open across batches and re-opened after any error. The password never appears
in a message, a log line or a repr.
"""

import os
import random
import re
import smtplib
import ssl
import time
from email import policy as email_policy
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Literal

from dagster import EnvVar, get_dagster_logger
from pydantic import Field, PrivateAttr

from retention_pipeline import clock
from retention_pipeline.outreach.senders.base import (
    BatchOutcome,
    EmailSender,
    OutgoingEmail,
    SenderConfigurationError,
    TransientSendError,
    sanitize_tag,
)

log = get_dagster_logger("retention_pipeline.outreach.smtp")

# Replies that mean "these credentials or this account cannot send": retrying cannot help.
_CONFIG_CODES = {530, 534, 535, 538}
_MESSAGE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# CRLF line ends; fold only past RFC 5322's hard limit, so List-Unsubscribe URLs stay intact.
_POLICY = email_policy.SMTP.clone(max_line_length=998)


def smtp_message_id(idempotency_key: str, position: int, from_address: str) -> str:
    """`<key.position@sender-domain>`: the same for every attempt of the same ledger batch."""
    domain = parseaddr(from_address)[1].rpartition("@")[2] or "retention-pipeline.invalid"
    return f"<{_MESSAGE_ID_CHARS.sub('-', idempotency_key)}.{position}@{_MESSAGE_ID_CHARS.sub('-', domain)}>"


class SmtpSender(EmailSender):
    """Sends through an SMTP relay (STARTTLS, implicit TLS or plain), one ledger row per message."""

    host: str = Field(description="SMTP relay host, e.g. email-smtp.eu-west-1.amazonaws.com (SMTP_HOST).")
    port: int = Field(default=587, gt=0, lt=65536, description="587 for STARTTLS, 465 for implicit TLS (SMTP_PORT).")
    security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls", description="starttls (upgrade after connecting), ssl (TLS from the start) or none (SMTP_SECURITY)."
    )
    username: str = Field(default="", description="Login (SMTP_USERNAME); empty = no authentication.")
    password: str = Field(default="", repr=False, description="Password or API token (SMTP_PASSWORD).")
    tls_ca_file: str = Field(default="", description="CA bundle for a relay with a private certificate; empty = system CAs.")
    max_batch_size: int = Field(
        default=1,
        ge=1,
        le=1,
        description="Always 1: SMTP accepts one message at a time, so each ledger row gets its own outcome.",
    )
    max_attempts: int = Field(default=5, ge=1, description="Attempts per message on 4xx replies and dropped connections.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Socket timeout per SMTP command.")
    backoff_base_seconds: float = Field(default=1.0, ge=0, description="Exponential backoff base (full jitter).")
    backoff_max_seconds: float = Field(default=60.0, ge=0, description="Cap of one backoff wait.")

    _connection: smtplib.SMTP | None = PrivateAttr(default=None)

    def __repr__(self) -> str:
        return (
            f"SmtpSender(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={'[set]' if self.username else '[none]'}, password=[redacted])"
        )

    __str__ = __repr__

    @property
    def name(self) -> str:
        return "smtp"

    def send_batch(self, emails: list[OutgoingEmail], idempotency_key: str) -> BatchOutcome:
        self._check_batch(emails, idempotency_key)
        if not emails:
            return BatchOutcome(provider_ids=[], error=None, attempts=0)
        if not self.host.strip():
            raise SenderConfigurationError("SMTP_HOST is empty: set it to the relay's host name (or unset it for the outbox).")
        [email] = emails
        message = self._message(email, idempotency_key)
        jitter = random.Random(idempotency_key)
        attempts = 0
        while True:
            attempts += 1
            try:
                self._deliver(message, email.to)
                return BatchOutcome(provider_ids=[message["Message-ID"]], error=None, attempts=attempts)
            except smtplib.SMTPAuthenticationError as exc:
                self._close()
                raise SenderConfigurationError(
                    f"The SMTP server refused the login ({exc.smtp_code}). Check SMTP_USERNAME and SMTP_PASSWORD."
                ) from None
            except smtplib.SMTPNotSupportedError:
                self._close()
                raise SenderConfigurationError(
                    f"The SMTP server at {self.host}:{self.port} does not offer what SMTP_SECURITY={self.security} "
                    "needs (STARTTLS or AUTH)."
                ) from None
            except ssl.SSLCertVerificationError as exc:
                self._close()
                raise SenderConfigurationError(
                    f"The SMTP server's TLS certificate is not trusted ({exc.verify_message})."
                ) from None
            except smtplib.SMTPRecipientsRefused as exc:
                self._close()
                code, reply = next(iter(exc.recipients.values()))
                failure = self._failure(code, reply)
            except smtplib.SMTPResponseException as exc:  # sender refused, data refused, other replies
                self._close()
                failure = self._failure(exc.smtp_code, exc.smtp_error)
            except (smtplib.SMTPException, OSError) as exc:  # dropped connection, timeout, refused connect
                self._close()
                failure = ("retry", f"{type(exc).__name__}: {self._redact(exc)}")
            kind, described = failure
            if kind == "config":
                raise SenderConfigurationError(f"The SMTP server refused to send for this account: {described}")
            if kind == "permanent":
                log.warning(f"SMTP rejected {idempotency_key} permanently: {described}")
                return BatchOutcome(provider_ids=None, error=f"SMTP rejected the message: {described}", attempts=attempts)
            if attempts >= self.max_attempts:
                raise TransientSendError(
                    f"SMTP message {idempotency_key}: {attempts} attempt(s) failed, the last with {described}. "
                    "Re-running sends it again with the same Message-ID."
                ) from None
            wait = jitter.uniform(0, min(self.backoff_max_seconds, self.backoff_base_seconds * 2 ** (attempts - 1)))
            log.warning(
                f"SMTP message {idempotency_key}: attempt {attempts}/{self.max_attempts} failed with {described}; "
                f"retrying in {wait:.2f} s"
            )
            time.sleep(wait)

    def _failure(self, code: int, reply: bytes | str) -> tuple[str, str]:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        described = f"{code} {self._redact(text)}"
        if code in _CONFIG_CODES:
            return "config", described
        return ("permanent", described) if code >= 500 else ("retry", described)

    def _message(self, email: OutgoingEmail, idempotency_key: str) -> EmailMessage:
        message = EmailMessage(policy=_POLICY)
        message["From"] = email.from_address
        message["To"] = email.to
        message["Subject"] = email.subject
        message["Date"] = format_datetime(clock.now())
        message["Message-ID"] = smtp_message_id(idempotency_key, 0, email.from_address)
        for name, value in email.headers.items():
            message[name] = value
        if email.tags:
            message["X-Tags"] = "; ".join(f"{sanitize_tag(k)}={sanitize_tag(v)}" for k, v in email.tags.items())
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    def _deliver(self, message: EmailMessage, to: str) -> None:
        connection = self._connection or self._connect()
        connection.send_message(message, to_addrs=[to])

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context(cafile=self.tls_ca_file or None)
        if self.security == "ssl":
            connection = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_seconds, context=context)
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds)
        try:
            connection.ehlo()
            if self.security == "starttls":
                connection.starttls(context=context)
                connection.ehlo()
            if self.username:
                self._login(connection)
        except BaseException:
            _quietly_close(connection)
            raise
        self._connection = connection
        return connection

    def _login(self, connection: smtplib.SMTP) -> None:
        """PLAIN when offered (every relay named above does): smtplib.login would try each mechanism in turn
        after a refused password, so one wrong password costs several failed logins."""
        if "PLAIN" in connection.esmtp_features.get("auth", "").upper().split():
            connection.user, connection.password = self.username, self.password
            connection.auth("PLAIN", connection.auth_plain)
        else:
            connection.login(self.username, self.password)

    def _close(self) -> None:
        if self._connection is not None:
            _quietly_close(self._connection)
            self._connection = None

    def _redact(self, text: object) -> str:
        text = str(text)
        return text.replace(self.password, "[redacted]") if len(self.password) >= 4 else text

    def teardown_after_execution(self, context) -> None:
        self._close()


def _quietly_close(connection: smtplib.SMTP) -> None:
    try:
        connection.quit()
    except (smtplib.SMTPException, OSError):
        connection.close()


def smtp_sender_from_env() -> SmtpSender:
    """SMTP_HOST and friends, the secrets as EnvVar so they stay out of the run config and the UI."""
    return SmtpSender(
        host=EnvVar("SMTP_HOST"),
        port=int(os.environ.get("SMTP_PORT") or 587),
        security=os.environ.get("SMTP_SECURITY") or "starttls",
        username=EnvVar("SMTP_USERNAME") if os.environ.get("SMTP_USERNAME") else "",
        password=EnvVar("SMTP_PASSWORD") if os.environ.get("SMTP_PASSWORD") else "",
        tls_ca_file=os.environ.get("SMTP_TLS_CA_FILE", ""),
    )
