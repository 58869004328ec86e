"""The Flask side of outreach: unsubscribe links (RFC 8058 one-click) and Resend's bounce/complaint webhooks.

Both write only `{rs}.email_suppressions`, `{rs}.email_topic_suppressions` (an unsubscribe from one topic)
and `{rs}.webhook_receipts`, which the planner consults before every send. Nothing here needs a session, cookie or CSRF token: mail clients POST the one-click
unsubscribe directly, and webhooks are authenticated by their Svix signature.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from email.utils import parseaddr

import jinja2
import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request, url_for

from retention_pipeline import clock
from retention_pipeline.outreach.tokens import (
    SVIX_ID_HEADER,
    InvalidSignature,
    InvalidToken,
    UnsubscribeClaim,
    UnsubscribeKeys,
    validate_svix_secret,
    verify_svix_signature,
    verify_unsubscribe_token,
)
from retention_pipeline.resources import AppDatabase

log = logging.getLogger(__name__)

_MAX_FORM_BYTES = 16 * 1024
_MAX_WEBHOOK_BYTES = 1024 * 1024
_MAX_DETAIL_CHARS = 500

# Webhook event type -> suppression reason. Resend sends `email.bounced` only for permanent rejections.
_SUPPRESSING_EVENTS = {"email.bounced": "bounced", "email.complained": "complained"}

# First suppression wins, except that a stronger reason replaces a weaker one (an unsubscribed address
# that later bounces is recorded as bounced). 'manual' rows are an operator's decision and never change.
_SUPPRESS_SQL = """
INSERT INTO {rs}.email_suppressions AS s (email, reason, source, detail, created_at)
VALUES (:email, :reason, :source, :detail, :created_at)
ON CONFLICT (email) DO UPDATE
    SET reason = EXCLUDED.reason, source = EXCLUDED.source, detail = EXCLUDED.detail
    WHERE (CASE s.reason WHEN 'unsubscribed' THEN 1 WHEN 'bounced' THEN 2 WHEN 'complained' THEN 3 ELSE 9 END)
        < (CASE EXCLUDED.reason WHEN 'unsubscribed' THEN 1 WHEN 'bounced' THEN 2 WHEN 'complained' THEN 3 ELSE 9 END)
"""

# A v2 token names a send; its ledger row holds the address (tokens carry no personal data).
_SEND_SQL = "SELECT email, campaign, unsubscribe_topic FROM {rs}.email_sends WHERE unsubscribe_ref = :ref AND email IS NOT NULL"

# Leaving one topic ("tips") keeps the others ("billing"); campaigns of that topic skip the address from then on.
_LEAVE_TOPIC_SQL = """
INSERT INTO {rs}.email_topic_suppressions (email, topic, source, created_at)
VALUES (:email, :topic, :source, :created_at)
ON CONFLICT (email, topic) DO NOTHING
"""

_RECEIPT_SQL = """
INSERT INTO {rs}.webhook_receipts (svix_id, event_type, received_at)
VALUES (:svix_id, :event_type, :received_at)
ON CONFLICT (svix_id) DO NOTHING
RETURNING svix_id
"""

# Templates live here, with their own always-autoescaping environment, so the host app's Jinja
# settings (custom loaders, autoescape rules) cannot change what these pages render.
_templates = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_PAGE = _templates.from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>{{ title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5}
button{font-size:1rem;padding:.5rem 1.25rem;cursor:pointer}</style></head>
<body><h1>{{ title }}</h1>
{% if kind == "confirm" and topic %}
<p>Stop <strong>{{ topic }}</strong> emails to <strong>{{ email }}</strong>? Other emails keep coming.</p>
<form method="post" action="{{ action }}"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe from {{ topic }} emails</button></form>
<p>Or stop every email we send you:</p>
<form method="post" action="{{ action }}"><input type="hidden" name="scope" value="all">
<button type="submit">Unsubscribe from all emails</button></form>
{% elif kind == "confirm" %}
<p>Stop these emails to <strong>{{ email }}</strong>?</p>
<form method="post" action="{{ action }}"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>
{% elif kind == "done" and topic %}
<p><strong>{{ email }}</strong> will no longer receive {{ topic }} emails.</p>
{% elif kind == "done" %}
<p><strong>{{ email }}</strong> will no longer receive these emails.</p>
{% else %}
<p>This unsubscribe link is invalid or has expired. Please use the link in a more recent email.</p>
{% endif %}
</body></html>
"""
)

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}


def mask_email(email: str) -> str:
    """`jane.doe@example.com` -> `j***@example.com`: enough to recognise, not enough to harvest."""
    local, _, domain = email.rpartition("@")
    keep = 1 if len(local) > 2 else 0
    return f"{local[:keep]}***@{domain}"


def _page(kind: str, status: int, title: str, **context) -> Response:
    html = _PAGE.render(kind=kind, title=title, **{"email": "", "action": "", "topic": None, **context})
    return Response(html, status=status, mimetype="text/html", headers=_PAGE_HEADERS)


def _suppress(conn: sa.Connection, db: AppDatabase, email: str, reason: str, source: str, detail: str | None) -> None:
    conn.execute(
        sa.text(db.render(_SUPPRESS_SQL)),
        {
            "email": email,
            "reason": reason,
            "source": source,
            "detail": detail[:_MAX_DETAIL_CHARS] if detail else None,
            "created_at": clock.now(),
        },
    )


class _BadEvent(ValueError):
    pass


def _recipients(event: dict) -> list[str]:
    """Lower-cased addresses in `data.to` (a list, or a single string); _BadEvent if there are none."""
    data = event.get("data")
    if not isinstance(data, dict):
        raise _BadEvent("event has no data object")
    to = data.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not all(isinstance(item, str) for item in to):
        raise _BadEvent("data.to must be a list of addresses")
    addresses = []
    for item in to:
        address = parseaddr(item)[1].strip().lower()
        if "@" in address and address not in addresses:
            addresses.append(address)
    if not addresses:
        raise _BadEvent("data.to holds no address")
    return addresses


def _event_detail(event: dict) -> str:
    data = event["data"]
    parts = [f"email_id={data.get('email_id')}"]
    bounce = data.get("bounce")
    if isinstance(bounce, dict):
        kind = "/".join(str(bounce[k]) for k in ("type", "subType") if bounce.get(k))
        if kind:
            parts.append(f"bounce={kind}")
        if bounce.get("message"):
            parts.append(f"message={bounce['message']}")
    return "; ".join(parts)


def create_blueprint(
    db: AppDatabase,
    unsubscribe_secret: str,
    webhook_secret: str | None = None,
    url_prefix: str = "/retention",
    *,
    old_unsubscribe_secrets: Iterable[str] | str = (),
    token_max_age_days: int = 365,
    webhook_tolerance_seconds: int = 300,
) -> Blueprint:
    """Routes, under `url_prefix`:

    * ``GET  /unsubscribe?token=...``  confirmation page with a button (never writes: link scanners GET)
    * ``POST /unsubscribe?token=...``  RFC 8058 one-click or the button: suppress the address (idempotent)
    * ``POST /webhooks/resend``        Resend (Svix-signed) events; only if `webhook_secret` is given

    `unsubscribe_secret` is the current key (RETENTION_UNSUBSCRIBE_SECRET); `old_unsubscribe_secrets` the
    retired ones (RETENTION_UNSUBSCRIBE_OLD_SECRETS, comma-separated), whose tokens keep working.
    """
    if not isinstance(unsubscribe_secret, str) or not unsubscribe_secret:
        raise ValueError("unsubscribe_secret must be a non-empty string")
    keys = UnsubscribeKeys(unsubscribe_secret, old_unsubscribe_secrets)
    if webhook_secret is not None:
        validate_svix_secret(webhook_secret)

    bp = Blueprint("retention", __name__, url_prefix=url_prefix)

    def _claim(token: str | None) -> UnsubscribeClaim | None:
        """The token's address and campaign, from the token (legacy v1) or the ledger row it names (v2)."""
        try:
            claim = verify_unsubscribe_token(keys, token or "", clock.today(), token_max_age_days)
        except InvalidToken as exc:
            log.info("unsubscribe refused: %s", exc.reason)
            return None
        if claim.send_ref is None:
            return claim
        row = db.fetch_all(_SEND_SQL, {"ref": claim.send_ref})
        if not row:
            log.info("unsubscribe refused: no send with this reference")
            return None
        return UnsubscribeClaim(
            issued_on=claim.issued_on,
            send_ref=claim.send_ref,
            email=row[0].email.strip().lower(),
            campaign=row[0].campaign,
            topic=row[0].unsubscribe_topic,
        )

    def _invalid_link() -> Response:
        return _page("invalid", 400, "Link invalid or expired")

    @bp.route("/unsubscribe", methods=["GET", "POST"])
    def unsubscribe() -> Response:
        if request.method == "GET":
            token = request.args.get("token")
            claim = _claim(token)
            if claim is None:
                return _invalid_link()
            action = url_for(".unsubscribe", token=token)
            return _page("confirm", 200, "Unsubscribe", email=mask_email(claim.email), action=action, topic=claim.topic)

        # POST: a mail client's one-click (body "List-Unsubscribe=One-Click") or the page's button.
        # The body is not required: what authorises the request is the signed token, nothing else.
        request.max_content_length = _MAX_FORM_BYTES
        token = request.args.get("token") or request.form.get("token")
        claim = _claim(token)
        if claim is None:
            return _invalid_link()
        # One-click (RFC 8058) leaves the list the email came from: its topic, if it has one. The page's second
        # button (scope=all), and every email without a topic (transactional ones included), stop all email.
        topic = None if request.form.get("scope") == "all" else claim.topic
        with db.begin() as conn:
            if topic:
                conn.execute(
                    sa.text(db.render(_LEAVE_TOPIC_SQL)),
                    {"email": claim.email, "topic": topic, "source": f"link:{claim.campaign}", "created_at": clock.now()},
                )
            else:
                _suppress(conn, db, claim.email, "unsubscribed", "link", claim.campaign)
        log.info("unsubscribed via link (campaign %s, topic %s)", claim.campaign, topic or "all")
        return _page("done", 200, "You are unsubscribed", email=mask_email(claim.email), topic=topic)

    if webhook_secret is not None:

        @bp.post("/webhooks/resend")
        def resend_webhook() -> tuple[Response, int]:
            request.max_content_length = _MAX_WEBHOOK_BYTES
            body = request.get_data(cache=True)  # the raw bytes: the signature covers them exactly
            try:
                verify_svix_signature(webhook_secret, request.headers, body, clock.now(), webhook_tolerance_seconds)
            except InvalidSignature as exc:
                log.warning("resend webhook rejected: %s", exc.reason)
                return jsonify(error="invalid signature"), 400

            try:
                event = json.loads(body.decode("utf-8"))
                if not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]:
                    raise _BadEvent("event has no type")
                reason = _SUPPRESSING_EVENTS.get(event["type"])
                addresses = _recipients(event) if reason else []
            except (ValueError, UnicodeDecodeError) as exc:  # json errors and _BadEvent are ValueErrors
                log.warning("resend webhook with a valid signature but a malformed body: %s", exc)
                return jsonify(error="malformed event"), 400

            # The receipt and its effects commit together: a failure leaves no receipt, so Resend's
            # retry is processed; a concurrent re-delivery waits on the primary key, then sees it.
            with db.begin() as conn:
                first = conn.execute(
                    sa.text(db.render(_RECEIPT_SQL)),
                    {"svix_id": request.headers[SVIX_ID_HEADER], "event_type": event["type"][:200], "received_at": clock.now()},
                ).first()
                if first is None:
                    return jsonify(status="duplicate"), 200
                for address in addresses:
                    _suppress(conn, db, address, reason, "resend_webhook", _event_detail(event))
            if reason is None:
                return jsonify(status="ignored"), 200
            log.info("resend %s: suppressed %d address(es)", event["type"], len(addresses))
            return jsonify(status="processed", suppressed=len(addresses)), 200

    return bp
