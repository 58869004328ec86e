"""Signed unsubscribe links, as a resource so the secret comes from the environment and stays out of logs."""

from datetime import date
from urllib.parse import urlencode

from dagster import ConfigurableResource
from pydantic import Field

from retention_pipeline.outreach.tokens import make_unsubscribe_token


class UnsubscribeLinks(ConfigurableResource):
    """Makes the HMAC-signed unsubscribe link of every email (RETENTION_UNSUBSCRIBE_SECRET)."""

    secret: str = Field(repr=False, description="HMAC key of unsubscribe tokens; the Flask blueprint verifies with the same key.")

    def link(self, base_url: str, email: str, campaign: str, issued_on: date) -> str:
        token = make_unsubscribe_token(self.secret, email, campaign, issued_on)
        separator = "&" if "?" in base_url else "?"
        return f"{base_url}{separator}{urlencode({'token': token})}"

    def __repr__(self) -> str:
        return "UnsubscribeLinks(secret=<hidden>)"
