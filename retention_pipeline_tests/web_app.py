"""The app's side of the web endpoints, as the tests play it: a Flask app that registers the blueprint the
way the README tells a real app to, and webhook deliveries signed the way Svix (Resend's webhooks) signs
them, written from Svix's documentation rather than from the verifier under test."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime

from flask import Flask

from retention_pipeline.outreach.web import create_blueprint
from retention_pipeline.resources import AppDatabase


def create_app(
    db: AppDatabase, unsubscribe_secret: str, webhook_secret: str | None = None, old_unsubscribe_secrets: Iterable[str] | str = ()
) -> Flask:
    app = Flask(__name__)
    app.register_blueprint(
        create_blueprint(db, unsubscribe_secret, webhook_secret, old_unsubscribe_secrets=old_unsubscribe_secrets)
    )
    return app


def sign_svix(secret: str, svix_id: str, timestamp: int | datetime, body: bytes) -> dict[str, str]:
    """Headers of a delivery: base64 of HMAC-SHA256 over "{id}.{timestamp}.{body}", keyed with the base64
    part of the `whsec_` secret."""
    if isinstance(timestamp, datetime):
        timestamp = (timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=UTC)).timestamp()
    seconds = str(int(timestamp))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signature = base64.b64encode(hmac.new(key, f"{svix_id}.{seconds}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"svix-id": svix_id, "svix-timestamp": seconds, "svix-signature": f"v1,{signature}"}
