"""Sending outreach emails: one interface (`base.EmailSender`), one module per provider.

- `resend.ResendSender`: the Resend API (the production default when RESEND_API_KEY is set);
- `smtp.SmtpSender`: any SMTP relay (when SMTP_HOST is set);
- `outbox.OutboxSender`: no provider; shows exactly what would be sent (the embedded default).

A new provider is a new module here with an `EmailSender` subclass, chosen in `definitions.email_sender`.
"""

from retention_pipeline.outreach.senders.base import (
    RESEND_MAX_BATCH_SIZE,
    BatchOutcome,
    EmailSender,
    OutgoingEmail,
    SenderConfigurationError,
    TransientSendError,
    sanitize_tag,
)
from retention_pipeline.outreach.senders.outbox import OutboxSender, outbox_message_id
from retention_pipeline.outreach.senders.resend import ResendSender, to_resend_params
from retention_pipeline.outreach.senders.smtp import SmtpSender, smtp_message_id, smtp_sender_from_env

__all__ = [
    "RESEND_MAX_BATCH_SIZE",
    "BatchOutcome",
    "EmailSender",
    "OutboxSender",
    "OutgoingEmail",
    "ResendSender",
    "SenderConfigurationError",
    "SmtpSender",
    "TransientSendError",
    "outbox_message_id",
    "sanitize_tag",
    "smtp_message_id",
    "smtp_sender_from_env",
    "to_resend_params",
]
