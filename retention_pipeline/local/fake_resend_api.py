"""The request side of Resend's `POST /emails/batch` as the fake server checks it: the limits, the
fields, addresses and tags a batch must have (422 otherwise), what the server records, and Resend's
error shape `{"statusCode": .., "name": .., "message": ..}`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BATCH_PATH = "/emails/batch"
MAX_BATCH_SIZE = 100
MAX_RECIPIENTS = 50
FAULT_KINDS = ("429", "500", "hang", "500_after_accept")
DEFAULT_FAULT_KINDS = ("429", "500", "hang")

_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")
_NAMED_ADDRESS = re.compile(r"^[^<>]*<([^<>]+)>$")
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


@dataclass(frozen=True)
class ScriptedResponse:
    """One answer queued with `FakeResend.script()`. `accept=True` first accepts the batch as usual."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    accept: bool = False


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]  # as received, the Authorization value replaced by "Bearer [redacted]"
    idempotency_key: str | None
    email_count: int | None  # None when the body was not a JSON array
    status: int | None  # None for a hang (no answer was sent)
    time: float  # time.monotonic() at arrival (comparable with the test's clock in-process)
    outcome: str  # accepted, replayed, rate_limited, fault_429, fault_500, hang,
    #                                  accepted_then_500, scripted, unauthorized, forbidden, invalid,
    #                                  conflict, not_found, method_not_allowed


@dataclass(frozen=True)
class AcceptedEmail:
    id: str
    idempotency_key: str | None
    position: int
    email: dict[str, Any]
    time: float


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


def error_reply(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"statusCode": status, "name": name, "message": message}, dict(headers or {}))


def _address_ok(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    value = value.strip()
    named = _NAMED_ADDRESS.match(value)
    return bool(_ADDRESS.match(named.group(1).strip() if named else value))


def _tag_ok(value: Any) -> bool:
    return isinstance(value, str) and bool(_TAG.match(value))


def validate_batch(emails: list[Any]) -> Reply | None:
    if not emails:
        return error_reply(422, "validation_error", "The batch must contain at least one email.")
    if len(emails) > MAX_BATCH_SIZE:
        return error_reply(
            422, "validation_error", f"Too many emails in the batch: {len(emails)}. The maximum is {MAX_BATCH_SIZE}."
        )
    for index, item in enumerate(emails):
        where = f"emails[{index}]"
        if not isinstance(item, dict):
            return error_reply(422, "validation_error", f"{where}: each email must be an object.")
        for required in ("from", "to", "subject"):
            if item.get(required) in (None, "", []):
                return error_reply(422, "missing_required_field", f"{where}: Missing `{required}` field.")
        if not item.get("html") and not item.get("text"):
            return error_reply(422, "missing_required_field", f"{where}: Missing `html` or `text` field.")
        recipients = item["to"] if isinstance(item["to"], list) else [item["to"]]
        if len(recipients) > MAX_RECIPIENTS:
            return error_reply(422, "validation_error", f"{where}: Too many recipients in `to` (max {MAX_RECIPIENTS}).")
        for name in ("from", "to"):
            values = item[name] if isinstance(item[name], list) else [item[name]]
            if not all(_address_ok(v) for v in values):
                return error_reply(
                    422,
                    "validation_error",
                    f"{where}: Invalid `{name}` field. The email address needs to follow the "
                    "`email@example.com` or `Name <email@example.com>` format.",
                )
        if not isinstance(item["subject"], str):
            return error_reply(422, "validation_error", f"{where}: `subject` must be a string.")
        headers = item.get("headers")
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        ):
            return error_reply(422, "validation_error", f"{where}: `headers` must be an object of strings.")
        tags = item.get("tags")
        if tags is not None:
            if not isinstance(tags, list) or not all(
                isinstance(t, dict) and _tag_ok(t.get("name")) and ("value" not in t or _tag_ok(t["value"])) for t in tags
            ):
                return error_reply(
                    422,
                    "validation_error",
                    f"{where}: Tags should only contain ASCII letters, numbers, underscores, or dashes.",
                )
