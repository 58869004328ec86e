"""The SMTP sender against a real SMTP server (aiosmtpd on 127.0.0.1): headers, auth, TLS, retries, the ledger."""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections import Counter
from datetime import timedelta
from email import message_from_bytes
from email import policy as email_policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from retention_pipeline import clock
from retention_pipeline.definitions import email_sender
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.senders import OutgoingEmail, ResendSender, SenderConfigurationError, TransientSendError
from retention_pipeline.outreach.senders.smtp import SmtpSender, smtp_message_id
from retention_pipeline_tests.scenario import live_campaign
from retention_pipeline_tests.test_emails import AS_OF, MORNING_AFTER, build_world, expected_recipients, sends

USER, PASSWORD = "relay-user", "relay-Password-9f3a"
UNSUBSCRIBE = "https://app.example.com/retention/unsubscribe?token=v2.kid.ref.20260520.sig"


class Mailbox:
    """An aiosmtpd handler: records what it accepts; replies can be scripted per recipient or per DATA."""

    def __init__(self) -> None:
        self.messages: list = []
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.data_commands = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.data_commands += 1
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append(message_from_bytes(envelope.content, policy=email_policy.default))
        return "250 2.0.0 Message accepted for delivery"

    def recipients(self) -> list[str]:
        return [m["To"] for m in self.messages]


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    good = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (USER.encode(), PASSWORD.encode())
    return AuthResult(success=good, handled=False)  # False: the server itself answers 535 to a refused login


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server():
    """A server that requires a login (over plain SMTP here; TLS has its own tests)."""
    mailbox = Mailbox()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=_free_port(), authenticator=_authenticate, auth_required=True, auth_require_tls=False
    )
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()


def _sender(port: int, **options) -> SmtpSender:
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": USER,
        "password": PASSWORD,
        "backoff_base_seconds": 0.01,
        "timeout_seconds": 5,
    } | options
    return SmtpSender(**settings)


def _email(to: str = "jane@example.com") -> OutgoingEmail:
    return OutgoingEmail(
        to=to,
        from_address="Acme <hello@acme.example>",
        subject="Pick up where you left off in Acme",
        html="<p>Hi Jane,</p>",
        text="Hi Jane,",
        headers={"List-Unsubscribe": f"<{UNSUBSCRIBE}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        tags={"campaign": "winback", "step": "1", "variant": "recap"},
    )


def test_smtp_delivers_with_unsubscribe_headers_and_a_message_id_from_the_key(smtp_server):
    mailbox, port = smtp_server
    sender = _sender(port)
    outcome = sender.send_batch([_email()], idempotency_key="winback-2026-05-20-s1-17")
    expected_id = "<winback-2026-05-20-s1-17.0@acme.example>"
    assert outcome.error is None and outcome.provider_ids == [expected_id] and outcome.attempts == 1
    [message] = mailbox.messages
    assert message["Message-ID"] == expected_id == smtp_message_id("winback-2026-05-20-s1-17", 0, "hello@acme.example")
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["To"] == "jane@example.com" and message["From"] == "Acme <hello@acme.example>"
    assert message["X-Tags"] == "campaign=winback; step=1; variant=recap"
    assert message.get_body(("plain",)).get_content().strip() == "Hi Jane,"
    assert message.get_body(("html",)).get_content().strip() == "<p>Hi Jane,</p>"
    # The connection is reused for the next message; each message keeps its own id.
    assert sender.send_batch([_email("joe@example.com")], "winback-2026-05-20-s1-18").provider_ids == [
        "<winback-2026-05-20-s1-18.0@acme.example>"
    ]
    assert mailbox.recipients() == ["jane@example.com", "joe@example.com"]
    assert PASSWORD not in repr(sender) and PASSWORD not in str(sender)


def test_smtp_auth_a_wrong_password_or_no_login_is_a_configuration_error(smtp_server):
    mailbox, port = smtp_server
    with pytest.raises(SenderConfigurationError, match="refused the login") as info:
        _sender(port, password="wrong-password").send_batch([_email()], "k1")
    assert "wrong-password" not in str(info.value)
    with pytest.raises(SenderConfigurationError):
        _sender(port, username="", password="").send_batch([_email()], "k2")  # 530 authentication required
    assert mailbox.messages == []


def test_smtp_4xx_is_retried_with_the_same_message_id_and_5xx_fails_the_message(smtp_server):
    mailbox, port = smtp_server
    mailbox.data_replies = ["451 4.3.0 Try again later", "421 4.7.0 Too many connections"]
    outcome = _sender(port).send_batch([_email()], "winback-k1")
    assert outcome.error is None and outcome.attempts == 3 and mailbox.data_commands == 3
    assert [m["Message-ID"] for m in mailbox.messages] == ["<winback-k1.0@acme.example>"]

    mailbox.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    refused = _sender(port).send_batch([_email("gone@example.com")], "winback-k2")
    assert refused.provider_ids is None and refused.attempts == 1
    assert "550 5.1.1 No such user" in refused.error

    mailbox.data_replies = ["452 4.2.2 Mailbox full"] * 3
    with pytest.raises(TransientSendError, match="3 attempt"):
        _sender(port, max_attempts=3).send_batch([_email()], "winback-k3")
    assert len(mailbox.messages) == 1


def test_smtp_connection_refused_is_transient():
    sender = _sender(_free_port(), max_attempts=2)
    with pytest.raises(TransientSendError, match="2 attempt"):
        sender.send_batch([_email()], "k")


def test_smtp_batches_hold_one_message():
    with pytest.raises(ValueError):
        SmtpSender(host="127.0.0.1", max_batch_size=2)
    with pytest.raises(ValueError, match="at most 1"):
        SmtpSender(host="127.0.0.1").send_batch([_email(), _email()], "k")


@pytest.fixture
def tls_files(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, str(cert)


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_smtp_tls_starttls_and_implicit_with_a_private_ca(tls_files, security):
    context, ca_file = tls_files
    mailbox = Mailbox()
    # aiosmtpd counts only STARTTLS as TLS for AUTH; with implicit TLS the whole connection is encrypted anyway.
    tls = (
        {"tls_context": context, "require_starttls": True}
        if security == "starttls"
        else {"ssl_context": context, "auth_require_tls": False}
    )
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=_free_port(), authenticator=_authenticate, auth_required=True, **tls
    )
    controller.start()
    try:
        assert _sender(controller.port, security=security, tls_ca_file=ca_file).send_batch([_email()], "k").error is None
        assert mailbox.recipients() == ["jane@example.com"]
        with pytest.raises(SenderConfigurationError, match="not trusted"):
            _sender(controller.port, security=security).send_batch([_email()], "k2")  # the system CAs do not know it
        if security == "starttls":
            with pytest.raises(SenderConfigurationError):
                _sender(controller.port, security="none").send_batch([_email()], "k3")  # server demands STARTTLS
        assert len(mailbox.messages) == 1
    finally:
        controller.stop()


def test_smtp_host_selects_the_smtp_sender_and_a_resend_key_wins(monkeypatch):
    monkeypatch.delenv("RESEND_API_KEY", raising=False)
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    monkeypatch.setenv("SMTP_PORT", "465")
    monkeypatch.setenv("SMTP_SECURITY", "ssl")
    monkeypatch.setenv("SMTP_USERNAME", USER)
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    sender = email_sender()
    assert isinstance(sender, SmtpSender) and (sender.port, sender.security) == (465, "ssl")
    assert PASSWORD not in repr(sender)
    monkeypatch.setenv("RESEND_API_KEY", "re_x")
    assert isinstance(email_sender(), ResendSender)


def test_daily_job_with_the_smtp_sender_delivers_each_email_once(app_db_env, instance, smtp_server):
    mailbox, port = smtp_server
    db = app_db_env
    kinds = build_world(db)
    mailbox.rcpt_replies["user10@example.com"] = "550 5.1.1 No such user"
    mailbox.data_replies = ["451 4.3.0 Try again later"]  # the first message needs a retry
    sender = _sender(port)
    with clock.frozen_at(MORNING_AFTER):
        result = run_job(
            instance,
            "daily_retention_job",
            (AS_OF - timedelta(days=40)).isoformat(),
            AS_OF.isoformat(),
            resources={"email_sender": sender},
            run_config=live_campaign(),
            quiet=True,
        )
        assert result.success
        # A re-run finds nothing pending and sends nothing again.
        assert run_job(
            instance,
            "daily_retention_job",
            AS_OF.isoformat(),
            resources={"email_sender": sender},
            assets=["reengagement_emails"],
            run_config=live_campaign(),
            quiet=True,
        ).success
    delivered = mailbox.recipients()
    assert Counter(delivered).most_common(1)[0][1] == 1, "an email arrived twice"
    assert set(delivered) == expected_recipients(kinds) - {"user10@example.com"}
    rows = {r["email"]: r for r in sends(db) if r["status"] != "holdout"}
    assert rows["user10@example.com"]["status"] == "failed"
    sent = {email: row for email, row in rows.items() if row["status"] == "sent"}
    assert set(sent) == set(delivered)
    by_recipient = {m["To"]: m for m in mailbox.messages}
    for email, row in sent.items():
        message = by_recipient[email]
        assert message["Message-ID"] == row["provider_message_id"]
        assert message["List-Unsubscribe"] == row["payload"]["headers"]["List-Unsubscribe"]
        assert email not in message["List-Unsubscribe"]
