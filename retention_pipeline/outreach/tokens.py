"""Signed unsubscribe tokens and Svix (Resend webhook) signatures.

Unsubscribe token, version 1:  ``v1.<payload>.<signature>``, all URL-safe, where

* ``payload`` is unpadded base64url of compact JSON ``{"c": campaign, "d": "YYYY-MM-DD", "e": email}``
  (email lower-cased), and
* ``signature`` is unpadded base64url of HMAC-SHA256(secret, ``"retention-unsubscribe.v1." + payload``).

The signature covers the version and the payload exactly as transmitted, and both parts must be the
canonical base64url encoding of their bytes, so no character of a token can change without the token
being rejected. Tokens are not encrypted: the email address is readable by whoever holds the link,
which is the recipient.

Svix: ``secret`` is ``"whsec_" + base64(key)``; the signature is base64(HMAC-SHA256(key,
``f"{svix_id}.{svix_timestamp}.{body}"``)), sent as space-separated ``v1,<sig>`` entries in the
``svix-signature`` header (several during a key rotation; any may match).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone

TOKEN_VERSION = "v1"
_TOKEN_CONTEXT = b"retention-unsubscribe."
_MAX_TOKEN_LENGTH = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

SVIX_ID_HEADER = "svix-id"
SVIX_TIMESTAMP_HEADER = "svix-timestamp"
SVIX_SIGNATURE_HEADER = "svix-signature"
_SVIX_SECRET_PREFIX = "whsec_"
_MAX_SVIX_ID_LENGTH = 256


class InvalidToken(ValueError):
    """An unsubscribe token that must not be honoured; `reason` is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidSignature(ValueError):
    """A webhook delivery whose Svix signature or timestamp does not check out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class UnsubscribeClaim:
    email: str
    campaign: str
    issued_on: date


# --- unsubscribe tokens ---------------------------------------------------------------------------


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    """Strict: only the base64url alphabet, no padding, and only the canonical encoding of its bytes."""
    if not _B64URL.fullmatch(text):
        raise InvalidToken("malformed token")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    if _b64url_encode(raw) != text:
        raise InvalidToken("malformed token")
    return raw


def _key(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ValueError("the unsubscribe secret must be a non-empty string")
    return secret.encode("utf-8")


def _token_signature(secret: str, payload_b64: str) -> bytes:
    message = _TOKEN_CONTEXT + f"{TOKEN_VERSION}.{payload_b64}".encode("ascii")
    return hmac.new(_key(secret), message, hashlib.sha256).digest()


def _normalise_email(email: str) -> str:
    if not isinstance(email, str):
        raise TypeError("email must be a string")
    normalised = email.strip().lower()
    if "@" not in normalised or any(ch.isspace() or ord(ch) < 32 for ch in normalised):
        raise ValueError("email must be a single address such as user@example.com")
    return normalised


def make_unsubscribe_token(secret: str, email: str, campaign: str, issued_on: date) -> str:
    """A URL-safe, signed token naming who unsubscribes from what, issued on which day."""
    if not isinstance(campaign, str) or not campaign:
        raise ValueError("campaign must be a non-empty string")
    if isinstance(issued_on, datetime):
        issued_on = issued_on.date()
    if not isinstance(issued_on, date):
        raise TypeError("issued_on must be a date")
    payload = {"c": campaign, "d": issued_on.isoformat(), "e": _normalise_email(email)}
    payload_b64 = _b64url_encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    return f"{TOKEN_VERSION}.{payload_b64}.{_b64url_encode(_token_signature(secret, payload_b64))}"


def verify_unsubscribe_token(secret: str, token: str, today: date, max_age_days: int = 365) -> UnsubscribeClaim:
    """The claim of a genuine, current token; raises InvalidToken otherwise.

    Checks, in order: shape, version, signature (constant-time), payload, then age: a token issued
    after `today` or more than `max_age_days` before it is refused.
    """
    _key(secret)  # a configuration error is not the token's fault: ValueError, before anything else
    if not isinstance(token, str) or not token:
        raise InvalidToken("missing token")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    version, payload_b64, signature_b64 = parts
    if version != TOKEN_VERSION:
        raise InvalidToken("unsupported token version")
    signature = _b64url_decode(signature_b64)
    _b64url_decode(payload_b64)  # canonical form before the signature is even considered
    if not hmac.compare_digest(signature, _token_signature(secret, payload_b64)):
        raise InvalidToken("bad signature")

    try:
        payload = json.loads(_b64url_decode(payload_b64).decode("utf-8"))
        email, campaign, issued_text = payload["e"], payload["c"], payload["d"]
        if not (isinstance(email, str) and isinstance(campaign, str) and isinstance(issued_text, str)):
            raise TypeError
        issued_on = date.fromisoformat(issued_text)
        email = _normalise_email(email)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        # Only reachable with a correctly signed but unusable payload, i.e. a bug in the issuer.
        raise InvalidToken("malformed payload") from None
    if not campaign:
        raise InvalidToken("malformed payload")

    age_days = (today - issued_on).days
    if age_days < 0:
        raise InvalidToken("token issued in the future")
    if age_days > max_age_days:
        raise InvalidToken("token expired")
    return UnsubscribeClaim(email=email, campaign=campaign, issued_on=issued_on)


def unsubscribe_url(base_url: str, token: str) -> str:
    """The link for an email: `base_url` is the blueprint's unsubscribe endpoint, e.g.
    ``https://app.example.com/retention/unsubscribe``."""
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}token={token}"


def list_unsubscribe_headers(url: str) -> dict[str, str]:
    """RFC 2369 + RFC 8058 headers that let mail clients unsubscribe with one click (a POST to `url`)."""
    return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


# --- Svix webhook signatures ----------------------------------------------------------------------


def _svix_key(secret: str) -> bytes:
    """The HMAC key of a Svix endpoint secret; ValueError (a configuration error) if it is not one."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("the webhook secret must be a non-empty string such as 'whsec_...'")
    encoded = secret[len(_SVIX_SECRET_PREFIX):] if secret.startswith(_SVIX_SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the webhook secret must be 'whsec_' followed by base64") from None
    if not key:
        raise ValueError("the webhook secret must be 'whsec_' followed by base64")
    return key


def validate_svix_secret(secret: str) -> None:
    """Raise ValueError now, at start-up, rather than on the first delivery."""
    _svix_key(secret)


def _svix_signature(key: bytes, svix_id: str, timestamp: str, body: bytes) -> bytes:
    return hmac.new(key, f"{svix_id}.{timestamp}.".encode("utf-8") + body, hashlib.sha256).digest()


def _unix_seconds(value: int | datetime) -> int:
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())
    return int(value)


def sign_svix(secret: str, svix_id: str, timestamp: int | datetime, body: bytes) -> dict[str, str]:
    """Headers of a delivery signed like Svix signs it (for tests and the local demo)."""
    seconds = str(_unix_seconds(timestamp))
    signature = base64.b64encode(_svix_signature(_svix_key(secret), svix_id, seconds, body)).decode("ascii")
    return {SVIX_ID_HEADER: svix_id, SVIX_TIMESTAMP_HEADER: seconds, SVIX_SIGNATURE_HEADER: f"v1,{signature}"}


def verify_svix_signature(
    secret: str, headers: Mapping[str, str], body: bytes, now: datetime, tolerance_seconds: int = 300
) -> None:
    """Return if `body` was signed with `secret` within `tolerance_seconds` of `now`; else InvalidSignature.

    `headers` may be any mapping (Flask's request.headers, a dict); names are matched case-insensitively.
    """
    key = _svix_key(secret)
    lowered = {str(name).lower(): value for name, value in headers.items()}
    svix_id = lowered.get(SVIX_ID_HEADER)
    timestamp = lowered.get(SVIX_TIMESTAMP_HEADER)
    signatures = lowered.get(SVIX_SIGNATURE_HEADER)
    if not svix_id or not timestamp or not signatures:
        raise InvalidSignature("missing svix headers")
    if len(svix_id) > _MAX_SVIX_ID_LENGTH:
        raise InvalidSignature("svix-id too long")
    if not re.fullmatch(r"[0-9]{1,12}", timestamp):
        raise InvalidSignature("malformed svix-timestamp")

    expected = _svix_signature(key, svix_id, timestamp, body)
    matched = False
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        raise InvalidSignature("no matching signature")

    # Checked after the signature so an unsigned request learns nothing about our clock.
    skew = _unix_seconds(now) - int(timestamp)
    if skew > tolerance_seconds:
        raise InvalidSignature("timestamp too old")
    if skew < -tolerance_seconds:
        raise InvalidSignature("timestamp too new")
