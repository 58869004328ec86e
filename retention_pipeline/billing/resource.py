"""Stripe, through the official SDK (`stripe.StripeClient`), with failures that say what to do.

The API key never appears in an error message, a log line or metadata: Stripe's own messages are
scrubbed of anything key-shaped before they are passed on, and a rejected key gets our own message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe
from dagster import ConfigurableResource, Failure
from pydantic import Field, PrivateAttr

PAGE_SIZE = 100  # Stripe's maximum page size for list endpoints.

# Secret, restricted and publishable keys, live or test; also Stripe's masked echo (sk_test_****1234).
_KEY_SHAPED = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[A-Za-z0-9*]+")


class StripeResource(ConfigurableResource):
    """Read access to one Stripe account (secret key or restricted key with read permissions)."""

    api_key: str = Field(
        repr=False,
        description=(
            "Stripe secret key or restricted key (STRIPE_API_KEY) with read access to Subscriptions, Customers and Products."
        ),
    )
    api_base: str = Field(
        default="",
        description="Override of https://api.stripe.com for a local Stripe-compatible server (localstripe); empty = real Stripe.",
    )
    max_network_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="SDK retries of a request after a network error, a 409 or a 5xx (exponential backoff from 0.5 s).",
    )
    request_timeout_seconds: float = Field(default=60.0, gt=0, description="Timeout of one HTTP request to Stripe.")

    _client: stripe.StripeClient | None = PrivateAttr(default=None)

    # No pydantic validators here: with EnvVar(...) they would see the variable's name, not its value.

    @property
    def base(self) -> str:
        """api_base without surrounding blanks or a trailing slash ('' = real Stripe)."""
        return (self.api_base or "").strip().rstrip("/")

    @property
    def display_base(self) -> str:
        return self.base or stripe.DEFAULT_API_BASE

    def client(self) -> stripe.StripeClient:
        """The SDK client; fails clearly (without retries) when no key is configured."""
        if self._client is None:
            if not self.api_key or not self.api_key.strip():
                raise Failure(
                    description=(
                        "The Stripe API key is empty. Set the STRIPE_API_KEY environment variable to a secret key "
                        "(sk_live_... / sk_test_...) or a restricted key (rk_...) with read access to Subscriptions, "
                        "Customers and Products, then restart the code location."
                    ),
                    allow_retries=False,
                )
            if self.base and not re.match(r"^https?://[^/\s]+$", self.base):
                raise Failure(
                    description=(
                        f"The Stripe api_base {self.base!r} is not an http(s) base URL such as http://127.0.0.1:8420. "
                        "Leave it empty to use the real Stripe API."
                    ),
                    allow_retries=False,
                )
            self._client = stripe.StripeClient(
                self.api_key.strip(),
                base_addresses={"api": self.base} if self.base else None,
                max_network_retries=self.max_network_retries,
                http_client=stripe.RequestsClient(timeout=self.request_timeout_seconds),
            )
        return self._client

    def scrub(self, text: str) -> str:
        """`text` without the API key or anything shaped like a Stripe key."""
        key = (self.api_key or "").strip()
        if len(key) >= 4:
            text = text.replace(key, "[redacted]")
        return _KEY_SHAPED.sub("[redacted key]", text)

    @contextmanager
    def translated_errors(self, doing: str) -> Iterator[None]:
        """Turn SDK errors raised while `doing` something into a dagster.Failure that says what to do."""
        try:
            yield
        except stripe.AuthenticationError:
            raise Failure(
                description=(
                    f"Stripe rejected the API key (401) while {doing} at {self.display_base}. Check STRIPE_API_KEY: "
                    "it must be a current secret key or restricted key of the right account and mode (live/test); "
                    "keys that were rolled or deleted in the Stripe dashboard stop working."
                ),
                allow_retries=False,
            ) from None
        except stripe.PermissionError as exc:
            raise Failure(
                description=(
                    f"Stripe refused access (403) while {doing}: {self.scrub(str(exc))}. Give the restricted key "
                    "read permission on Subscriptions, Customers and Products."
                ),
                allow_retries=False,
            ) from None
        except stripe.APIConnectionError as exc:
            raise Failure(
                description=(
                    f"Could not reach the Stripe API at {self.display_base} while {doing}, "
                    f"{self._retries_text()}: {self._first_lines(exc)}. Check network access to "
                    "Stripe (proxy, firewall, DNS) or, for a local server, that it is running. Nothing was written."
                ),
            ) from None
        except stripe.RateLimitError as exc:
            raise Failure(
                description=(
                    f"Stripe rate-limited the requests (429) while {doing}: {self.scrub(str(exc))}. "
                    "Another integration may be using the same account's limit; retry later. Nothing was written."
                ),
            ) from None
        except stripe.APIError as exc:
            status = getattr(exc, "http_status", None)
            raise Failure(
                description=(
                    f"The Stripe API at {self.display_base} answered with an error (HTTP {status}) while {doing}, "
                    f"{self._retries_text()}: {self._first_lines(exc)}. Stripe may be having an "
                    "outage (https://status.stripe.com); retry later. Nothing was written."
                ),
            ) from None
        except stripe.StripeError as exc:
            status = getattr(exc, "http_status", None)
            raise Failure(
                description=f"Stripe request failed (HTTP {status}) while {doing}: {self._first_lines(exc)}",
                allow_retries=False,
            ) from None

    def _retries_text(self) -> str:
        n = self.max_network_retries
        return "without retries (max_network_retries=0)" if n == 0 else f"after {n} {'retry' if n == 1 else 'retries'}"

    def _first_lines(self, exc: Exception, limit: int = 400) -> str:
        text = " ".join(str(exc).split())
        text = text[:limit] + "..." if len(text) > limit else text.rstrip(".")
        return self.scrub(text)

    def list_all(self, resource: str, params: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], int]:
        """Every object of a v1 list endpoint (e.g. "subscriptions"), as plain dicts, and the page count.

        Pages of PAGE_SIZE are followed with `starting_after` until `has_more` is false."""
        service = getattr(self.client().v1, resource)
        items: list[dict[str, Any]] = []
        pages = 0
        page = None
        while True:
            progress = f"page {pages + 1}" + (f", {len(items)} read before it" if items else "")
            with self.translated_errors(f"listing {resource} ({progress})"):
                page = service.list(params={**(params or {}), "limit": PAGE_SIZE}) if page is None else page.next_page()
            pages += 1
            items.extend(obj.to_dict() for obj in page.data)
            if not page.has_more or not page.data:
                return items, pages
