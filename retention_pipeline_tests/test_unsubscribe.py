"""Unsubscribe tokens, Svix signatures, and the Flask blueprint against a real PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest

from retention_pipeline import clock
from retention_pipeline.outreach.tokens import (
    InvalidSignature,
    InvalidToken,
    UnsubscribeClaim,
    UnsubscribeKeys,
    key_id,
    make_unsubscribe_token,
    new_send_ref,
    verify_svix_signature,
    verify_unsubscribe_token,
)
from retention_pipeline.outreach.web import create_blueprint, mask_email
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.web_app import create_app, sign_svix

SECRET = "unsubscribe-secret-for-tests"
OLD_SECRET = "retired-unsubscribe-secret"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook-key-for-tests-0123456789").decode()
OTHER_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"some-other-key-entirely-98765432").decode()
ISSUED = date(2025, 3, 10)
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
UNSUBSCRIBE = "/retention/unsubscribe"
WEBHOOK = "/retention/webhooks/resend"
ONE_CLICK = {"data": "List-Unsubscribe=One-Click", "content_type": "application/x-www-form-urlencoded"}
REF = "AAECAwQFBgcICQoLDA0ODw"  # 16 bytes, as new_send_ref() makes them


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def legacy_token(secret: str, email: str, campaign: str, issued_on: date) -> str:
    """A version 1 token exactly as the pipeline issued them before (the address readable inside),
    built here from its specification: the package only verifies them now."""
    payload = {"c": campaign, "d": issued_on.isoformat(), "e": email.strip().lower()}
    payload_b64 = _b64url(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    signature = hmac.new(secret.encode(), b"retention-unsubscribe.v1." + payload_b64.encode(), hashlib.sha256).digest()
    return f"v1.{payload_b64}.{_b64url(signature)}"


def _replace_payload(token: str, **changes) -> str:
    """The v1 token with its payload re-encoded with `changes`, keeping the original signature."""
    version, payload_b64, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    payload.update(changes)
    return ".".join([version, _b64url(json.dumps(payload, separators=(",", ":")).encode()), signature])


def _each_character_changed(token: str):
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for position, original in enumerate(token):
        replacement = alphabet[(alphabet.index(original) + 1) % len(alphabet)]
        yield token[:position] + replacement + token[position + 1 :]


# --- token functions ------------------------------------------------------------------------------


def test_token_is_opaque_url_safe_versioned_and_names_its_key():
    ref = new_send_ref()
    token = make_unsubscribe_token(SECRET, ref, ISSUED)
    version, kid, named_ref, issued, _ = token.split(".")
    assert (version, kid, named_ref, issued) == ("v2", key_id(SECRET), ref, "20250310")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token) and len(token) < 100
    assert verify_unsubscribe_token(SECRET, token, today=ISSUED) == UnsubscribeClaim(issued_on=ISSUED, send_ref=ref)
    # References are random, so two sends never share a token; the kid reveals nothing of the key.
    assert new_send_ref() != ref and SECRET not in token and key_id(SECRET) != key_id(OLD_SECRET)


def test_token_age_limits_expired_refused():
    token = make_unsubscribe_token(SECRET, REF, ISSUED)
    assert verify_unsubscribe_token(SECRET, token, ISSUED + timedelta(days=365)).issued_on == ISSUED
    with pytest.raises(InvalidToken, match="expired"):
        verify_unsubscribe_token(SECRET, token, ISSUED + timedelta(days=366))
    with pytest.raises(InvalidToken, match="expired"):
        verify_unsubscribe_token(SECRET, token, ISSUED + timedelta(days=8), max_age_days=7)
    with pytest.raises(InvalidToken, match="future"):
        verify_unsubscribe_token(SECRET, token, ISSUED - timedelta(days=1))


def test_token_rotation_old_key_still_verifies_unknown_key_id_refused():
    old = make_unsubscribe_token(OLD_SECRET, REF, ISSUED)
    rotated = UnsubscribeKeys(SECRET, f" {OLD_SECRET} , another-retired-key")
    assert verify_unsubscribe_token(rotated, old, ISSUED).send_ref == REF
    assert verify_unsubscribe_token(rotated, make_unsubscribe_token(SECRET, REF, ISSUED), ISSUED).send_ref == REF
    with pytest.raises(InvalidToken, match="unknown key id"):
        verify_unsubscribe_token(SECRET, old, ISSUED)  # the old key retired from the ring altogether
    with pytest.raises(InvalidToken, match="unknown key id"):
        verify_unsubscribe_token(rotated, make_unsubscribe_token("attacker-secret", REF, ISSUED), ISSUED)
    # A token claiming a known kid but signed with another key is a forgery, not a rotation.
    _, _, ref, issued, signature = make_unsubscribe_token("attacker-secret", REF, ISSUED).split(".")
    with pytest.raises(InvalidToken, match="signature"):
        verify_unsubscribe_token(rotated, ".".join(["v2", key_id(SECRET), ref, issued, signature]), ISSUED)
    # Legacy v1 tokens, from either key, still verify for their lifetime.
    for secret in (SECRET, OLD_SECRET):
        claim = verify_unsubscribe_token(rotated, legacy_token(secret, "Jane@Example.com", "winback", ISSUED), ISSUED)
        assert claim == UnsubscribeClaim(issued_on=ISSUED, email="jane@example.com", campaign="winback")
    with pytest.raises(InvalidToken, match="expired"):
        verify_unsubscribe_token(
            rotated, legacy_token(OLD_SECRET, "a@example.com", "winback", ISSUED), ISSUED + timedelta(days=366)
        )


def test_token_tampering_refused():
    token = make_unsubscribe_token(SECRET, REF, ISSUED)
    with pytest.raises(InvalidToken):
        verify_unsubscribe_token("wrong-secret", token, ISSUED)
    version, kid, ref, issued, signature = token.split(".")
    for changed in (new_send_ref(), ref):
        for day in ("20250309", issued):
            if (changed, day) != (ref, issued):
                with pytest.raises(InvalidToken, match="signature"):
                    verify_unsubscribe_token(SECRET, ".".join([version, kid, changed, day, signature]), ISSUED)
    # No single character of a token can change, not even the spare bits of the last base64 digit.
    for altered in _each_character_changed(token):
        with pytest.raises(InvalidToken):
            verify_unsubscribe_token(SECRET, altered, ISSUED)
    legacy = legacy_token(SECRET, "victim@example.com", "winback", ISSUED)
    for changes in ({"e": "someone.else@example.com"}, {"c": "other"}, {"d": "2030-01-01"}):
        with pytest.raises(InvalidToken, match="signature"):
            verify_unsubscribe_token(SECRET, _replace_payload(legacy, **changes), ISSUED)
    for altered in _each_character_changed(legacy):
        with pytest.raises(InvalidToken):
            verify_unsubscribe_token(SECRET, altered, ISSUED)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        "v1.abc",
        "v1..",
        "v2.eyJ9.AAAA",
        "v1.eyJ9.AAAA.extra",
        "v1.e=J9.AAAA",
        "v1.é.AAAA",
        "v1." + "A" * 5000,
        "v2....",
        "v2.kid.AAAA.20250310.AAAA",
        f"v2.{key_id(SECRET)}.{REF}.2025031.AAAA",
        "v3.a.b.c.d",
    ],
)
def test_malformed_tokens_are_rejected(bad):
    with pytest.raises(InvalidToken):
        verify_unsubscribe_token(SECRET, bad, ISSUED)


def test_invalid_token_is_a_value_error_and_never_mentions_the_secret():
    token = make_unsubscribe_token(SECRET, REF, ISSUED)
    for bad, today in ((token + "x", ISSUED), (token, ISSUED + timedelta(days=999)), ("nope", ISSUED)):
        with pytest.raises(ValueError) as info:
            verify_unsubscribe_token(SECRET, bad, today)
        assert isinstance(info.value, InvalidToken)
        assert SECRET not in str(info.value) and len(str(info.value)) < 40
    assert SECRET not in repr(UnsubscribeKeys(SECRET, OLD_SECRET)) and OLD_SECRET not in repr(UnsubscribeKeys(SECRET, OLD_SECRET))


def test_token_arguments_are_validated():
    with pytest.raises(ValueError):
        make_unsubscribe_token(SECRET, "jane@example.com", ISSUED)  # a reference, never an address
    with pytest.raises(ValueError):
        make_unsubscribe_token(SECRET, "", ISSUED)
    with pytest.raises(ValueError):
        make_unsubscribe_token("", REF, ISSUED)
    with pytest.raises(ValueError):
        UnsubscribeKeys("", OLD_SECRET)


def test_mask_email():
    assert mask_email("jane.doe@example.com") == "j***@example.com"
    assert mask_email("jo@example.com") == "***@example.com"


# --- Svix signatures ------------------------------------------------------------------------------


def test_svix_round_trip_and_case_insensitive_headers():
    body = b'{"type":"email.bounced"}'
    headers = sign_svix(WEBHOOK_SECRET, "msg_1", NOW, body)
    assert headers["svix-timestamp"] == str(int(NOW.timestamp()))
    assert headers["svix-signature"].startswith("v1,")
    verify_svix_signature(WEBHOOK_SECRET, headers, body, NOW)
    verify_svix_signature(WEBHOOK_SECRET, {k.title(): v for k, v in headers.items()}, body, NOW)
    # During a key rotation several signatures are sent; any one may match.
    rotated = sign_svix(OTHER_WEBHOOK_SECRET, "msg_1", NOW, body)["svix-signature"]
    multi = {**headers, "svix-signature": f"v1,bm90LWl0 {rotated} v2,xyz {headers['svix-signature']}"}
    verify_svix_signature(WEBHOOK_SECRET, multi, body, NOW)


def test_svix_rejections():
    body = b'{"type":"email.bounced"}'
    headers = sign_svix(WEBHOOK_SECRET, "msg_1", NOW, body)
    with pytest.raises(InvalidSignature, match="signature"):
        verify_svix_signature(OTHER_WEBHOOK_SECRET, headers, body, NOW)
    with pytest.raises(InvalidSignature, match="signature"):
        verify_svix_signature(WEBHOOK_SECRET, headers, body + b" ", NOW)
    with pytest.raises(InvalidSignature, match="signature"):
        verify_svix_signature(WEBHOOK_SECRET, {**headers, "svix-id": "msg_2"}, body, NOW)
    with pytest.raises(InvalidSignature, match="signature"):
        verify_svix_signature(WEBHOOK_SECRET, {**headers, "svix-signature": "v1,AAAA v1,!!!"}, body, NOW)
    for missing in ("svix-id", "svix-timestamp", "svix-signature"):
        partial = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(InvalidSignature, match="missing"):
            verify_svix_signature(WEBHOOK_SECRET, partial, body, NOW)
    with pytest.raises(InvalidSignature, match="timestamp"):
        verify_svix_signature(WEBHOOK_SECRET, {**headers, "svix-timestamp": "12abc"}, body, NOW)
    # Replay window: 300 s either way by default.
    verify_svix_signature(WEBHOOK_SECRET, headers, body, NOW + timedelta(seconds=300))
    with pytest.raises(InvalidSignature, match="old"):
        verify_svix_signature(WEBHOOK_SECRET, headers, body, NOW + timedelta(seconds=301))
    with pytest.raises(InvalidSignature, match="new"):
        verify_svix_signature(WEBHOOK_SECRET, headers, body, NOW - timedelta(seconds=301))
    with pytest.raises(InvalidSignature, match="old"):
        verify_svix_signature(WEBHOOK_SECRET, headers, body, NOW + timedelta(seconds=61), tolerance_seconds=60)
    # A secret that is not "whsec_" + base64 is a configuration error, not a bad delivery.
    with pytest.raises(ValueError) as info:
        verify_svix_signature("whsec_not base64!", headers, body, NOW)
    assert not isinstance(info.value, InvalidSignature)


# --- the blueprint against PostgreSQL -------------------------------------------------------------


@pytest.fixture
def client(app_db):
    install_schema(app_db)
    clock.set_now(NOW)
    app = create_app(app_db, SECRET, WEBHOOK_SECRET)
    app.config["TESTING"] = True
    # Mail clients carry no cookies: neither must the tests.
    return app.test_client(use_cookies=False)


_users = itertools.count(1)


def _sent(db, email: str, campaign: str = "winback", secret: str = SECRET, issued_on: date | None = None) -> str:
    """A ledger row as the pipeline writes it for a sent email, and the token of its unsubscribe link."""
    ref = new_send_ref()
    db.execute(
        "INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email, "
        "created_at, unsubscribe_ref) VALUES (:c, 1, :u, :d, :d, 'recap', 'sent', :e, :t, :r)",
        {"c": campaign, "u": next(_users), "d": ISSUED, "e": email, "t": NOW, "r": ref},
    )
    return make_unsubscribe_token(secret, ref, issued_on or clock.today())


def _suppressions(db) -> list[tuple]:
    return [
        tuple(r)
        for r in db.fetch_all("SELECT email, reason, source, detail, created_at FROM {rs}.email_suppressions ORDER BY email")
    ]


def _receipts(db) -> list[tuple]:
    return [tuple(r) for r in db.fetch_all("SELECT svix_id, event_type FROM {rs}.webhook_receipts ORDER BY svix_id")]


def test_round_trip_confirm_then_one_click_then_idempotent(client, app_db):
    token = _sent(app_db, "Jane.Doe@Example.com")
    assert "jane" not in token.lower()

    page = client.get(UNSUBSCRIBE, query_string={"token": token})
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "j***@example.com" in html and "jane.doe@" not in html
    assert '<form method="post"' in html
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "no-referrer"
    assert _suppressions(app_db) == []  # GET never writes: link scanners follow links

    done = client.post(UNSUBSCRIBE, query_string={"token": token}, **ONE_CLICK)
    assert done.status_code == 200 and "j***@example.com" in done.get_data(as_text=True)
    assert _suppressions(app_db) == [("jane.doe@example.com", "unsubscribed", "link", "winback", NOW)]

    clock.set_now(NOW + timedelta(hours=3))
    again = client.post(UNSUBSCRIBE, query_string={"token": token}, **ONE_CLICK)
    assert again.status_code == 200
    assert _suppressions(app_db) == [("jane.doe@example.com", "unsubscribed", "link", "winback", NOW)]


def test_the_confirmation_button_unsubscribes(client, app_db):
    token = _sent(app_db, "button@example.com", "nudge")
    html = client.get(UNSUBSCRIBE, query_string={"token": token}).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert action.startswith(UNSUBSCRIBE + "?token=")
    response = client.post(action, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert _suppressions(app_db) == [("button@example.com", "unsubscribed", "link", "nudge", NOW)]
    # A bare POST (no body at all) works too: the token alone authorises it.
    other = _sent(app_db, "bare@example.com", "nudge")
    assert client.post(UNSUBSCRIBE, query_string={"token": other}).status_code == 200
    assert [row[0] for row in _suppressions(app_db)] == ["bare@example.com", "button@example.com"]


def _bad_tokens(db) -> dict[str, str]:
    good = _sent(db, "victim@example.com", issued_on=ISSUED)
    version, kid, ref, issued, signature = good.split(".")
    legacy = legacy_token(SECRET, "victim@example.com", "winback", ISSUED)
    return {
        "forged": _sent(db, "victim@example.com", secret="not-the-secret", issued_on=ISSUED),
        "retired_key_not_configured": _sent(db, "victim@example.com", secret=OLD_SECRET, issued_on=ISSUED),
        "other_send": ".".join([version, kid, new_send_ref(), issued, signature]),
        "signed_but_no_such_send": make_unsubscribe_token(SECRET, new_send_ref(), ISSUED),
        "altered_legacy_email": _replace_payload(legacy, e="someone.else@example.com"),
        "flipped_signature": ".".join(
            [version, kid, ref, issued, signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]]
        ),
        "malformed": "v2.this-is-not-a-token",
        "empty": "",
    }


@pytest.mark.parametrize(
    "kind",
    [
        "forged",
        "retired_key_not_configured",
        "other_send",
        "signed_but_no_such_send",
        "altered_legacy_email",
        "flipped_signature",
        "malformed",
        "empty",
        "absent",
        "expired",
    ],
)
def test_bad_tokens_get_400_and_write_nothing(client, app_db, kind):
    if kind == "expired":
        token = _sent(app_db, "victim@example.com", issued_on=ISSUED)
        clock.set_now(NOW + timedelta(days=366))
    else:
        token = None if kind == "absent" else _bad_tokens(app_db)[kind]
    query = {} if token is None else {"token": token}
    for response in (client.get(UNSUBSCRIBE, query_string=query), client.post(UNSUBSCRIBE, query_string=query, **ONE_CLICK)):
        assert response.status_code == 400
        assert "invalid or has expired" in response.get_data(as_text=True)
    assert _suppressions(app_db) == []


def test_token_rotation_through_the_endpoint(app_db):
    """After a rotation (new current key, the old one retired), links already in inboxes still work."""
    install_schema(app_db)
    clock.set_now(NOW)
    before_rotation = _sent(app_db, "old-key@example.com", secret=OLD_SECRET)
    after_rotation = _sent(app_db, "new-key@example.com")
    legacy = legacy_token(OLD_SECRET, "Legacy@Example.com", "winback", ISSUED)
    client = create_app(app_db, SECRET, old_unsubscribe_secrets=OLD_SECRET).test_client(use_cookies=False)
    for token in (before_rotation, after_rotation, legacy):
        assert client.post(UNSUBSCRIBE, query_string={"token": token}, **ONE_CLICK).status_code == 200
    assert [row[:4] for row in _suppressions(app_db)] == [
        ("legacy@example.com", "unsubscribed", "link", "winback"),
        ("new-key@example.com", "unsubscribed", "link", "winback"),
        ("old-key@example.com", "unsubscribed", "link", "winback"),
    ]
    # Once the old key is dropped from the ring, its tokens are refused: their kid is unknown.
    app_db.execute("DELETE FROM {rs}.email_suppressions")
    dropped = create_app(app_db, SECRET).test_client(use_cookies=False)
    assert dropped.post(UNSUBSCRIBE, query_string={"token": before_rotation}, **ONE_CLICK).status_code == 400
    assert dropped.post(UNSUBSCRIBE, query_string={"token": legacy}, **ONE_CLICK).status_code == 400
    assert _suppressions(app_db) == []


def test_html_in_the_address_is_escaped(client, app_db):
    email = "<img/src=x/onerror=alert(1)>@<script>alert(1)</script>.example"
    token = _sent(app_db, email, "<b>campaign</b>")
    for response in (
        client.get(UNSUBSCRIBE, query_string={"token": token}),
        client.post(UNSUBSCRIBE, query_string={"token": token}),
    ):
        html = response.get_data(as_text=True)
        assert response.status_code == 200
        assert "<script>" not in html and "<img" not in html
        assert "&lt;***@&lt;script&gt;alert(1)&lt;/script&gt;.example" in html
    assert _suppressions(app_db)[0][:4] == (email.lower(), "unsubscribed", "link", "<b>campaign</b>")


def _deliver(client, event, svix_id: str, *, secret: str = WEBHOOK_SECRET, at: datetime | None = None, body: bytes | None = None):
    body = json.dumps(event).encode() if body is None else body
    headers = sign_svix(secret, svix_id, at or clock.now(), body)
    return client.post(WEBHOOK, data=body, headers=headers, content_type="application/json")


def _event(kind: str, *to: str, **data) -> dict:
    return {"type": kind, "created_at": "2025-03-10T12:00:00Z", "data": {"email_id": "em_123", "to": list(to), **data}}


def test_webhook_bounced_and_complained_suppress(client, app_db):
    bounce = {"message": "mailbox does not exist", "subType": "General", "type": "Permanent"}
    response = _deliver(
        client, _event("email.bounced", "Gone@Example.com", "Also Gone <also@example.com>", bounce=bounce), "msg_b"
    )
    assert response.status_code == 200 and response.get_json() == {"status": "processed", "suppressed": 2}
    response = _deliver(client, _event("email.complained", "angry@example.com"), "msg_c")
    assert response.status_code == 200
    rows = {row[0]: row[1:4] for row in _suppressions(app_db)}
    assert rows == {
        "gone@example.com": (
            "bounced",
            "resend_webhook",
            "email_id=em_123; bounce=Permanent/General; message=mailbox does not exist",
        ),
        "also@example.com": (
            "bounced",
            "resend_webhook",
            "email_id=em_123; bounce=Permanent/General; message=mailbox does not exist",
        ),
        "angry@example.com": ("complained", "resend_webhook", "email_id=em_123"),
    }
    assert _receipts(app_db) == [("msg_b", "email.bounced"), ("msg_c", "email.complained")]


def test_webhook_bad_signatures_are_rejected_and_write_nothing(client, app_db):
    event = _event("email.bounced", "x@example.com")
    body = json.dumps(event).encode()
    assert _deliver(client, event, "msg_1", secret=OTHER_WEBHOOK_SECRET).status_code == 400
    tampered = sign_svix(WEBHOOK_SECRET, "msg_1", clock.now(), body)
    other_body = json.dumps(_event("email.bounced", "someone-else@example.com")).encode()
    assert client.post(WEBHOOK, data=other_body, headers=tampered, content_type="application/json").status_code == 400
    assert client.post(WEBHOOK, data=body, content_type="application/json").status_code == 400  # unsigned
    assert _suppressions(app_db) == [] and _receipts(app_db) == []


def test_webhook_stale_replay_is_rejected(client, app_db):
    captured_at = NOW
    event = _event("email.bounced", "replayed@example.com")
    body = json.dumps(event).encode()
    headers = sign_svix(WEBHOOK_SECRET, "msg_old", captured_at, body)  # a genuine delivery, captured
    clock.set_now(captured_at + timedelta(minutes=10))
    response = client.post(WEBHOOK, data=body, headers=headers, content_type="application/json")
    assert response.status_code == 400
    assert _suppressions(app_db) == [] and _receipts(app_db) == []


def test_webhook_duplicate_svix_id_has_no_second_effect(client, app_db):
    assert _deliver(client, _event("email.bounced", "first@example.com"), "msg_dup").get_json()["status"] == "processed"
    before = _suppressions(app_db)
    # The operator re-enables the address; Resend re-delivers the same message a minute later.
    app_db.execute("DELETE FROM {rs}.email_suppressions")
    clock.set_now(NOW + timedelta(minutes=1))
    again = _deliver(client, _event("email.bounced", "first@example.com"), "msg_dup")
    assert again.status_code == 200 and again.get_json() == {"status": "duplicate"}
    different = _deliver(client, _event("email.complained", "second@example.com"), "msg_dup")
    assert different.status_code == 200 and different.get_json() == {"status": "duplicate"}
    assert before and _suppressions(app_db) == []
    assert _receipts(app_db) == [("msg_dup", "email.bounced")]


def test_webhook_other_events_are_acknowledged_and_ignored(client, app_db):
    response = _deliver(client, _event("email.delivered", "fine@example.com"), "msg_d")
    assert response.status_code == 200 and response.get_json() == {"status": "ignored"}
    response = _deliver(client, {"type": "contact.created", "data": {"id": "c_1"}}, "msg_e")
    assert response.status_code == 200 and response.get_json() == {"status": "ignored"}
    assert _suppressions(app_db) == []
    assert _receipts(app_db) == [("msg_d", "email.delivered"), ("msg_e", "contact.created")]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"data": {}}',
        b'{"type": "email.bounced", "data": {"to": 5}}',
        b'{"type": "email.bounced"}',
        b"\xff\xfe",
    ],
)
def test_webhook_malformed_body_with_valid_signature_is_400(client, app_db, body):
    response = _deliver(client, None, "msg_bad", body=body)
    assert response.status_code == 400
    assert _suppressions(app_db) == [] and _receipts(app_db) == []


def test_suppression_reasons_only_get_stronger(client, app_db):
    token = _sent(app_db, "user@example.com")
    client.post(UNSUBSCRIBE, query_string={"token": token}, **ONE_CLICK)
    _deliver(client, _event("email.bounced", "user@example.com"), "msg_1")
    assert _suppressions(app_db)[0][1:3] == ("bounced", "resend_webhook")
    client.post(UNSUBSCRIBE, query_string={"token": token}, **ONE_CLICK)  # weaker: no change
    assert _suppressions(app_db)[0][1:3] == ("bounced", "resend_webhook")
    assert _suppressions(app_db)[0][4] == NOW  # the first suppression's time is kept
    app_db.execute("UPDATE {rs}.email_suppressions SET reason = 'manual', source = 'ops'")
    _deliver(client, _event("email.complained", "user@example.com"), "msg_2")
    assert _suppressions(app_db)[0][1:3] == ("manual", "ops")  # an operator's decision stands


def test_without_a_webhook_secret_the_route_does_not_exist(app_db):
    install_schema(app_db)
    app = create_app(app_db, SECRET)
    response = app.test_client().post(WEBHOOK, data=b"{}", headers=sign_svix(WEBHOOK_SECRET, "m", clock.now(), b"{}"))
    assert response.status_code == 404
    assert _receipts(app_db) == []


def test_blueprint_configuration_errors_fail_at_start_up(app_db):
    with pytest.raises(ValueError):
        create_blueprint(app_db, "")
    with pytest.raises(ValueError):
        create_blueprint(app_db, SECRET, webhook_secret="whsec_***")
    blueprint = create_blueprint(app_db, SECRET, url_prefix="/mail")
    assert blueprint.url_prefix == "/mail"
