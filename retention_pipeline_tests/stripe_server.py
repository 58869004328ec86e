"""A tiny fake Stripe API for outage tests: canned subscriptions (newer API shape), 500s on demand.

It serves `GET /v1/products` (empty) and `GET /v1/subscriptions` in pages of the requested size.
With `fail_after_pages = n`, every request for a page after the first n answers 500, as Stripe does
during an incident; `requests` counts what arrived, so tests can check the SDK's retries.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PERIOD_END = 1_798_000_000  # 2026-12-23, on the items only (API versions from 2025-03-31)


def canned_subscription(index: int) -> dict:
    """An active monthly subscription of the newer API shape: price objects, period end on the item."""
    return {
        "id": f"sub_fake{index:05d}",
        "object": "subscription",
        "status": "active",
        "currency": "usd",
        "cancel_at_period_end": False,
        "canceled_at": None,
        "ended_at": None,
        "customer": {"id": f"cus_fake{index:05d}", "object": "customer", "email": f"fake{index}@example.org", "metadata": {}},
        "items": {
            "object": "list",
            "has_more": False,
            "data": [
                {
                    "id": f"si_fake{index:05d}",
                    "object": "subscription_item",
                    "quantity": 1,
                    "current_period_end": PERIOD_END,
                    "price": {
                        "id": "price_fake_basic",
                        "object": "price",
                        "nickname": "basic",
                        "product": "prod_fake",
                        "currency": "usd",
                        "unit_amount": 1000,
                        "unit_amount_decimal": "1000",
                        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
                    },
                }
            ],
        },
    }


class FakeStripe:
    """`with FakeStripe(n_subscriptions=150) as fake: fake.api_base ...`; set `fail_after_pages` to break it."""

    def __init__(self, n_subscriptions: int = 150):
        self.subscriptions = [canned_subscription(i) for i in range(n_subscriptions)]
        self.fail_after_pages: int | None = None
        self.requests: Counter[str] = Counter()
        self.authorization_headers: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                fake.authorization_headers.append(self.headers.get("Authorization", ""))
                page_key = f"{url.path}?starting_after={query.get('starting_after', '')}"
                fake.requests[page_key] += 1
                if url.path == "/v1/products":
                    return self._json(200, {"object": "list", "url": url.path, "has_more": False, "data": []})
                if url.path != "/v1/subscriptions":
                    return self._json(404, {"error": {"type": "invalid_request_error", "message": "Unrecognized request URL"}})
                limit = int(query.get("limit", 10))
                start = 0
                if query.get("starting_after"):
                    start = next(i for i, s in enumerate(fake.subscriptions) if s["id"] == query["starting_after"]) + 1
                page_number = start // limit + 1
                if fake.fail_after_pages is not None and page_number > fake.fail_after_pages:
                    return self._json(500, {"error": {"type": "api_error", "message": "Something went wrong on Stripe's end."}})
                data = fake.subscriptions[start : start + limit]
                self._json(
                    200, {"object": "list", "url": url.path, "has_more": start + limit < len(fake.subscriptions), "data": data}
                )

            def _json(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Request-Id", "req_fake")
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeStripe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
