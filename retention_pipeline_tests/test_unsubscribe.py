"""Unsubscribe tokens, Svix signatures, and the Flask blueprint against a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
from datetime import date, datetime, timedelta, timezone

import pytest

from retention_pipeline import clock
from retention_pipeline.flask import create_app, create_blueprint, mask_email
from retention_pipeline.outreach.tokens import (
    InvalidSignature,
    InvalidToken,
    UnsubscribeClaim,
    list_unsubscribe_headers,
    make_unsubscribe_token,
    sign_svix,
    unsubscribe_url,
    verify_svix_signature,
    verify_unsubscribe_token,
)
from retention_pipeline.schema import install_schema

SECRET = "unsubscribe-secret-for-tests"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook-key-for-tests-0123456789").decode()
OTHER_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"some-other-key-entirely-98765432").decode()
ISSUED = date(2025, 3, 10)
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=timezone.utc)
UNSUBSCRIBE = "/retention/unsubscribe"
WEBHOOK = "/retention/webhooks/resend"
ONE_CLICK = {"data": "List-Unsubscribe=One-Click", "content_type": "application/x-www-form-urlencoded"}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _replace_payload(token: str, **changes) -> str:
    """The token with its payload re-encoded with `changes`, keeping the original signature."""
    version, payload_b64, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
    payload.update(changes)
    return ".".join([version, _b64url(json.dumps(payload, separators=(",", ":")).encode()), signature])


# --- token functions ------------------------------------------------------------------------------


def test_token_round_trip_is_url_safe_versioned_and_lower_cases_the_email():
    token = make_unsubscribe_token(SECRET, "  Jane.Doe+News@Example.COM ", "winback", ISSUED)
    assert token.startswith("v1.")
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", token)
    claim = verify_unsubscribe_token(SECRET, token, today=ISSUED)
    assert claim == UnsubscribeClaim(email="jane.doe+news@example.com", campaign="winback", issued_on=ISSUED)
    # Deterministic, and bound to every field.
    assert token == make_unsubscribe_token(SECRET, "jane.doe+news@example.com", "winback", ISSUED)
    assert token != make_unsubscribe_token(SECRET, "jane.doe+news@example.com", "winback-2", ISSUED)


def test_token_age_limits():
    token = make_unsubscribe_token(SECRET, "a@example.com", "winback", ISSUED)
    assert verify_unsubscribe_token(SECRET, token, ISSUED + timedelta(days=365)).issued_on == ISSUED
    with pytest.raises(InvalidToken, match="expired"):
        verify_unsubscribe_token(SECRET, token, ISSUED + timedelta(days=366))
    with pytest.raises(InvalidToken, match="expired"):
        verify_unsubscribe_token(SECRET, token, ISSUED + timedelta(days=8), max_age_days=7)
    with pytest.raises(InvalidToken, match="future"):
        verify_unsubscribe_token(SECRET, token, ISSUED - timedelta(days=1))


def test_forged_and_altered_tokens_are_rejected():
    token = make_unsubscribe_token(SECRET, "victim@example.com", "winback", ISSUED)
    with pytest.raises(InvalidToken, match="signature"):
        verify_unsubscribe_token("wrong-secret", token, ISSUED)
    forged = make_unsubscribe_token("attacker-secret", "victim@example.com", "winback", ISSUED)
    with pytest.raises(InvalidToken, match="signature"):
        verify_unsubscribe_token(SECRET, forged, ISSUED)
    for changes in ({"e": "someone.else@example.com"}, {"c": "other"}, {"d": "2030-01-01"}):
        with pytest.raises(InvalidToken, match="signature"):
            verify_unsubscribe_token(SECRET, _replace_payload(token, **changes), ISSUED)
    # No single character of a token can change, not even the spare bits of the last base64 digit.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for position, original in enumerate(token):
        replacement = alphabet[(alphabet.index(original) + 1) % len(alphabet)]
        altered = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(InvalidToken):
            verify_unsubscribe_token(SECRET, altered, ISSUED)


@pytest.mark.parametrize(
    "bad",
    ["", "garbage", "v1.abc", "v1..", "v2.eyJ9.AAAA", "v1.eyJ9.AAAA.extra", "v1.e=J9.AAAA", "v1.é.AAAA", "v1." + "A" * 5000],
)
def test_malformed_tokens_are_rejected(bad):
    with pytest.raises(InvalidToken):
        verify_unsubscribe_token(SECRET, bad, ISSUED)


def test_invalid_token_is_a_value_error_and_never_mentions_the_secret():
    token = make_unsubscribe_token(SECRET, "a@example.com", "winback", ISSUED)
    for bad, today in ((token + "x", ISSUED), (token, ISSUED + timedelta(days=999)), ("nope", ISSUED)):
        with pytest.raises(ValueError) as info:
            verify_unsubscribe_token(SECRET, bad, today)
        assert isinstance(info.value, InvalidToken)
        assert SECRET not in str(info.value) and len(str(info.value)) < 40


def test_token_arguments_are_validated():
    with pytest.raises(ValueError):
        make_unsubscribe_token(SECRET, "not-an-address", "winback", ISSUED)
    with pytest.raises(ValueError):
        make_unsubscribe_token(SECRET, "a@example.com", "", ISSUED)
    with pytest.raises(ValueError):
        make_unsubscribe_token("", "a@example.com", "winback", ISSUED)


def test_unsubscribe_link_helpers():
    token = make_unsubscribe_token(SECRET, "a@example.com", "winback", ISSUED)
    url = unsubscribe_url("https://app.example.com/retention/unsubscribe", token)
    assert url == f"https://app.example.com/retention/unsubscribe?token={token}"
    assert list_unsubscribe_headers(url) == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
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


def _suppressions(db) -> list[tuple]:
    return [tuple(r) for r in db.fetch_all("SELECT email, reason, source, detail, created_at FROM {rs}.email_suppressions ORDER BY email")]


def _receipts(db) -> list[tuple]:
    return [tuple(r) for r in db.fetch_all("SELECT svix_id, event_type FROM {rs}.webhook_receipts ORDER BY svix_id")]


def test_round_trip_confirm_then_one_click_then_idempotent(client, app_db):
    token = make_unsubscribe_token(SECRET, "Jane.Doe@Example.com", "winback", clock.today())

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
    token = make_unsubscribe_token(SECRET, "button@example.com", "nudge", clock.today())
    html = client.get(UNSUBSCRIBE, query_string={"token": token}).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert action.startswith(UNSUBSCRIBE + "?token=")
    response = client.post(action, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert _suppressions(app_db) == [("button@example.com", "unsubscribed", "link", "nudge", NOW)]
    # A bare POST (no body at all) works too: the token alone authorises it.
    other = make_unsubscribe_token(SECRET, "bare@example.com", "nudge", clock.today())
    assert client.post(UNSUBSCRIBE, query_string={"token": other}).status_code == 200
    assert [row[0] for row in _suppressions(app_db)] == ["bare@example.com", "button@example.com"]


def _bad_tokens() -> dict[str, str]:
    good = make_unsubscribe_token(SECRET, "victim@example.com", "winback", ISSUED)
    version, payload, signature = good.split(".")
    flipped = payload[:5] + ("A" if payload[5] != "A" else "B") + payload[6:]
    return {
        "forged": make_unsubscribe_token("not-the-secret", "victim@example.com", "winback", ISSUED),
        "altered_email": _replace_payload(good, e="someone.else@example.com"),
        "flipped_payload_byte": ".".join([version, flipped, signature]),
        "malformed": "v1.this-is-not-a-token",
        "empty": "",
    }


@pytest.mark.parametrize("kind", ["forged", "altered_email", "flipped_payload_byte", "malformed", "empty", "absent", "expired"])
def test_bad_tokens_get_400_and_write_nothing(client, app_db, kind):
    if kind == "expired":
        token = make_unsubscribe_token(SECRET, "victim@example.com", "winback", ISSUED)
        clock.set_now(NOW + timedelta(days=366))
    else:
        token = None if kind == "absent" else _bad_tokens()[kind]
    query = {} if token is None else {"token": token}
    for response in (client.get(UNSUBSCRIBE, query_string=query), client.post(UNSUBSCRIBE, query_string=query, **ONE_CLICK)):
        assert response.status_code == 400
        assert "invalid or has expired" in response.get_data(as_text=True)
    assert _suppressions(app_db) == []


def test_html_in_the_address_is_escaped(client, app_db):
    email = "<img/src=x/onerror=alert(1)>@<script>alert(1)</script>.example"
    token = make_unsubscribe_token(SECRET, email, "<b>campaign</b>", clock.today())
    for response in (client.get(UNSUBSCRIBE, query_string={"token": token}), client.post(UNSUBSCRIBE, query_string={"token": token})):
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
    response = _deliver(client, _event("email.bounced", "Gone@Example.com", "Also Gone <also@example.com>", bounce=bounce), "msg_b")
    assert response.status_code == 200 and response.get_json() == {"status": "processed", "suppressed": 2}
    response = _deliver(client, _event("email.complained", "angry@example.com"), "msg_c")
    assert response.status_code == 200
    rows = {row[0]: row[1:4] for row in _suppressions(app_db)}
    assert rows == {
        "gone@example.com": ("bounced", "resend_webhook", "email_id=em_123; bounce=Permanent/General; message=mailbox does not exist"),
        "also@example.com": ("bounced", "resend_webhook", "email_id=em_123; bounce=Permanent/General; message=mailbox does not exist"),
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
    [b"{not json", b"[1, 2]", b'{"data": {}}', b'{"type": "email.bounced", "data": {"to": 5}}', b'{"type": "email.bounced"}', b"\xff\xfe"],
)
def test_webhook_malformed_body_with_valid_signature_is_400(client, app_db, body):
    response = _deliver(client, None, "msg_bad", body=body)
    assert response.status_code == 400
    assert _suppressions(app_db) == [] and _receipts(app_db) == []


def test_suppression_reasons_only_get_stronger(client, app_db):
    token = make_unsubscribe_token(SECRET, "user@example.com", "winback", clock.today())
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
