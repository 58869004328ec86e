"""Signed unsubscribe tokens and Svix (Resend webhook) signatures.

Unsubscribe token, version 2 (issued today):  ``v2.<kid>.<ref>.<YYYYMMDD>.<signature>``, all URL-safe:

* ``ref`` is the send's opaque reference: 16 random bytes, base64url, stored in the ledger row
  (``retention.email_sends.unsubscribe_ref``); the endpoint finds the address there. No personal data
  is in the token: not the address, not the user id.
* ``kid`` names the key that signed it: the first 8 base64url characters of HMAC-SHA256(secret,
  ``"retention-unsubscribe.kid"``). Keys rotate by moving the current secret to the retired list;
  a token signed with a retired key keeps working, one with an unknown kid is refused.
* ``YYYYMMDD`` is the day it was issued; the verifier refuses it after ``max_age_days`` (365).
* ``signature`` is unpadded base64url of HMAC-SHA256(secret, ``"retention-unsubscribe.v2." + kid + "." +
  ref + "." + date``).

Version 1 (issued before; verified, never issued, for their lifetime): ``v1.<payload>.<signature>``,
``payload`` unpadded base64url of compact JSON ``{"c": campaign, "d": "YYYY-MM-DD", "e": email}`` and
``signature`` base64url of HMAC-SHA256(secret, ``"retention-unsubscribe.v1." + payload``). It carries the
address, readable; any key of the ring may have signed it.

Every part must be the canonical base64url encoding of its bytes, so no character of a token can
change without the token being rejected.

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
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

TOKEN_VERSION = "v2"
_LEGACY_VERSION = "v1"
_TOKEN_CONTEXT = b"retention-unsubscribe."
_KID_CONTEXT = b"retention-unsubscribe.kid"
_KID_LENGTH = 8
_REF_BYTES = 16
_MAX_TOKEN_LENGTH = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_ISSUED = re.compile(r"[0-9]{8}")

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
    """What a genuine token names: a send (v2, `send_ref`) or, in a legacy v1 token, an address and campaign."""

    issued_on: date
    send_ref: str | None = None
    email: str | None = None
    campaign: str | None = None
    # From the send's ledger row: the topic its one-click leaves; None = all email.
    topic: str | None = None


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


def key_id(secret: str) -> str:
    """The public name of a key: reveals nothing of it, and lets the verifier pick it during a rotation."""
    return _b64url_encode(hmac.new(_key(secret), _KID_CONTEXT, hashlib.sha256).digest())[:_KID_LENGTH]


class UnsubscribeKeys:
    """The key ring: `current` signs new tokens; `retired` keys (a list, or one comma-separated string as in
    RETENTION_UNSUBSCRIBE_OLD_SECRETS) still verify the tokens they signed."""

    def __init__(self, current: str, retired: Iterable[str] | str = ()):
        if isinstance(retired, str):
            retired = retired.split(",")
        retired = [secret.strip() for secret in retired if secret.strip()]
        self.current = current
        self._by_kid = {key_id(secret): _key(secret) for secret in [*retired, current]}  # the current key wins a clash
        self.current_kid = key_id(current)

    def key(self, kid: str) -> bytes | None:
        return self._by_kid.get(kid)

    def all_keys(self) -> list[bytes]:
        return list(self._by_kid.values())

    def __repr__(self) -> str:
        return f"UnsubscribeKeys(current=<hidden kid {self.current_kid}>, keys={len(self._by_kid)})"


def new_send_ref() -> str:
    """A fresh opaque reference for one send (stored in its ledger row, named by its unsubscribe token)."""
    return _b64url_encode(secrets.token_bytes(_REF_BYTES))


def _v2_signature(key: bytes, kid: str, ref: str, issued: str) -> bytes:
    message = _TOKEN_CONTEXT + f"{TOKEN_VERSION}.{kid}.{ref}.{issued}".encode("ascii")
    return hmac.new(key, message, hashlib.sha256).digest()


def make_unsubscribe_token(secret: str, send_ref: str, issued_on: date) -> str:
    """A URL-safe token naming one send (its ledger reference), signed with `secret`, issued on a day."""
    if not isinstance(send_ref, str) or len(_b64url_decode(send_ref)) != _REF_BYTES:
        raise ValueError("send_ref must come from new_send_ref()")
    if isinstance(issued_on, datetime):
        issued_on = issued_on.date()
    if not isinstance(issued_on, date):
        raise TypeError("issued_on must be a date")
    kid, issued = key_id(secret), issued_on.strftime("%Y%m%d")
    signature = _v2_signature(_key(secret), kid, send_ref, issued)
    return f"{TOKEN_VERSION}.{kid}.{send_ref}.{issued}.{_b64url_encode(signature)}"


def verify_unsubscribe_token(keys: UnsubscribeKeys | str, token: str, today: date, max_age_days: int = 365) -> UnsubscribeClaim:
    """The claim of a genuine, current token; raises InvalidToken otherwise.

    Checks, in order: shape, version, key id, signature (constant-time), payload, then age: a token
    issued after `today` or more than `max_age_days` before it is refused.
    """
    if not isinstance(keys, UnsubscribeKeys):
        keys = UnsubscribeKeys(keys)  # a configuration error is not the token's fault: ValueError, first
    if not isinstance(token, str) or not token:
        raise InvalidToken("missing token")
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    version = token.split(".", 1)[0]
    if version == TOKEN_VERSION:
        claim = _verify_v2(keys, token)
    elif version == _LEGACY_VERSION:
        claim = _verify_v1(keys, token)
    else:
        raise InvalidToken("unsupported token version")
    age_days = (today - claim.issued_on).days
    if age_days < 0:
        raise InvalidToken("token issued in the future")
    if age_days > max_age_days:
        raise InvalidToken("token expired")
    return claim


def _verify_v2(keys: UnsubscribeKeys, token: str) -> UnsubscribeClaim:
    parts = token.split(".")
    if len(parts) != 5:
        raise InvalidToken("malformed token")
    _, kid, ref, issued, signature_b64 = parts
    signature = _b64url_decode(signature_b64)
    if len(_b64url_decode(ref)) != _REF_BYTES or not _ISSUED.fullmatch(issued) or not _B64URL.fullmatch(kid):
        raise InvalidToken("malformed token")
    key = keys.key(kid)
    if key is None:
        raise InvalidToken("unknown key id")
    if not hmac.compare_digest(signature, _v2_signature(key, kid, ref, issued)):
        raise InvalidToken("bad signature")
    try:
        issued_on = datetime.strptime(issued, "%Y%m%d").date()
    except ValueError:
        raise InvalidToken("malformed payload") from None  # signed, so only a bug in the issuer gets here
    return UnsubscribeClaim(issued_on=issued_on, send_ref=ref)


def _normalise_email(email: str) -> str:
    normalised = email.strip().lower()
    if "@" not in normalised or any(ch.isspace() or ord(ch) < 32 for ch in normalised):
        raise ValueError("email must be a single address such as user@example.com")
    return normalised


def _verify_v1(keys: UnsubscribeKeys, token: str) -> UnsubscribeClaim:
    """Tokens of the email-bearing format, still in inboxes: checked against every key of the ring."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("malformed token")
    _, payload_b64, signature_b64 = parts
    signature = _b64url_decode(signature_b64)
    _b64url_decode(payload_b64)  # canonical form before the signature is even considered
    message = _TOKEN_CONTEXT + f"{_LEGACY_VERSION}.{payload_b64}".encode("ascii")
    matched = False
    for key in keys.all_keys():
        matched |= hmac.compare_digest(signature, hmac.new(key, message, hashlib.sha256).digest())
    if not matched:
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
    return UnsubscribeClaim(issued_on=issued_on, email=email, campaign=campaign)


# --- Svix webhook signatures ----------------------------------------------------------------------


def _svix_key(secret: str) -> bytes:
    """The HMAC key of a Svix endpoint secret; ValueError (a configuration error) if it is not one."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("the webhook secret must be a non-empty string such as 'whsec_...'")
    encoded = secret[len(_SVIX_SECRET_PREFIX) :] if secret.startswith(_SVIX_SECRET_PREFIX) else secret
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
    return hmac.new(key, f"{svix_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def _unix_seconds(value: int | datetime) -> int:
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    return int(value)


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
