"""Signed unsubscribe links, as a resource so the secret comes from the environment and stays out of logs."""

from datetime import date
from urllib.parse import urlencode

from dagster import ConfigurableResource
from pydantic import Field

from retention_pipeline.outreach.tokens import make_unsubscribe_token


class UnsubscribeLinks(ConfigurableResource):
    """Makes the signed, opaque unsubscribe link of every email (RETENTION_UNSUBSCRIBE_SECRET).

    The link names the send (its ledger reference), never the address; the Flask blueprint verifies it
    with the same key, or with a retired one during a rotation (RETENTION_UNSUBSCRIBE_OLD_SECRETS)."""

    secret: str = Field(repr=False, description="Current HMAC key of unsubscribe tokens; the Flask blueprint verifies with it.")

    def link(self, base_url: str, send_ref: str, issued_on: date) -> str:
        token = make_unsubscribe_token(self.secret, send_ref, issued_on)
        separator = "&" if "?" in base_url else "?"
        return f"{base_url}{separator}{urlencode({'token': token})}"

    def __repr__(self) -> str:
        return "UnsubscribeLinks(secret=<hidden>)"
