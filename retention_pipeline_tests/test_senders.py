"""Email senders against real protocols: the official Resend SDK over real HTTP to `FakeResend`, and the
local outbox in a real PostgreSQL. No mocks.

The invariant throughout: every email goes out exactly once, whatever the server does (429, 500,
500 after accepting, hangs, a killed client), because every attempt of a batch carries the same
Idempotency-Key; and the API key shows up nowhere.
"""

from __future__ import annotations

import email
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email import policy
from pathlib import Path

import pytest

from retention_pipeline.local.fake_resend import FakeResend, ScriptedResponse
from retention_pipeline.outreach.senders import (
    BatchOutcome,
    OutboxSender,
    OutgoingEmail,
    ResendSender,
    SenderConfigurationError,
    TransientSendError,
    outbox_message_id,
    to_resend_params,
)
from retention_pipeline.schema import install_schema

KEY = "re_Sup3rSecret_test_key_4b1d"


def make_email(n: int, batch: str = "b") -> OutgoingEmail:
    return OutgoingEmail(
        to=f"user{n}.{batch}@example.com",
        from_address="Acme <hello@acme.example>",
        subject=f"We miss you, user {n}",
        html=f"<p>Hello user {n}</p>",
        text=f"Hello user {n}",
        headers={
            "List-Unsubscribe": f"<https://acme.example/unsubscribe/{n}>, <mailto:unsubscribe@acme.example>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        tags={"campaign": "win back: 2025", "step": "1", "variant": "b"},
    )


def make_batch(size: int, batch: str) -> list[OutgoingEmail]:
    return [make_email(n, batch) for n in range(size)]


def fast_sender(fake: FakeResend, **overrides) -> ResendSender:
    settings = dict(
        api_key=KEY,
        api_url=fake.url,
        requests_per_second=1000.0,
        timeout_seconds=1.0,
        backoff_base_seconds=0.02,
        backoff_max_seconds=0.2,
    )
    settings.update(overrides)
    return ResendSender(**settings)


def assert_each_accepted_once(fake: FakeResend, sent: dict[str, tuple[list[OutgoingEmail], BatchOutcome]]) -> None:
    accepted = fake.accepted
    recipients = Counter(a.email["to"][0] for a in accepted)
    expected = {e.to for emails, _ in sent.values() for e in emails}
    assert set(recipients) == expected
    assert max(recipients.values()) == 1, [to for to, n in recipients.items() if n > 1][:5]
    by_key: dict[str, list[str]] = {}
    for a in sorted(accepted, key=lambda a: a.position):
        by_key.setdefault(a.idempotency_key, []).append(a.id)
    for key, (_emails, outcome) in sent.items():
        assert outcome.error is None
        assert outcome.provider_ids == by_key[key], key  # the ids the client got are the ones that went out


@contextmanager
def standalone_resend(log_file: Path, *args: str) -> Iterator[str]:
    """The fake as its own process (no GIL shared with the client: steadier timing); yields its URL."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retention_pipeline.local.fake_resend",
            "--port",
            "0",
            "--log",
            str(log_file),
            "--api-key",
            KEY,
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = server.stdout.readline()
        assert banner.startswith("FakeResend listening on http://127.0.0.1:"), banner
        yield banner.split()[-1]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0


def logged(log_file: Path) -> list[dict]:
    return [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []


@pytest.fixture
def fake() -> FakeResend:
    with FakeResend(api_key=KEY, rate=0, hang_seconds=1.5) as server:
        yield server


# -- the happy path and the payload --------------------------------------------------------------------


def test_many_batches_every_email_accepted_exactly_once(fake: FakeResend):
    sender = fast_sender(fake)
    sent = {}
    for b in range(20):
        key = f"run1-batch-{b}"
        emails = make_batch(50, str(b))
        sent[key] = (emails, sender.send_batch(emails, key))
    assert_each_accepted_once(fake, sent)
    assert all(o.attempts == 1 for _, o in sent.values())
    requests = fake.requests
    assert [r.idempotency_key for r in requests] == list(sent)
    assert {r.status for r in requests} == {200}
    assert all(r.headers["Authorization"] == "Bearer [redacted]" for r in requests)

    first = fake.accepted[0].email
    assert first["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert first["tags"] == [
        {"name": "campaign", "value": "win_back__2025"},
        {"name": "step", "value": "1"},
        {"name": "variant", "value": "b"},
    ]
    assert first["text"] and first["html"] and first["from"] == "Acme <hello@acme.example>"


def test_to_resend_params_shape():
    params = to_resend_params(make_email(7))
    assert params == {
        "from": "Acme <hello@acme.example>",
        "to": ["user7.b@example.com"],
        "subject": "We miss you, user 7",
        "html": "<p>Hello user 7</p>",
        "text": "Hello user 7",
        "headers": make_email(7).headers,
        "tags": [
            {"name": "campaign", "value": "win_back__2025"},
            {"name": "step", "value": "1"},
            {"name": "variant", "value": "b"},
        ],
    }
    bare = OutgoingEmail("a@b.example", "c@d.example", "s", "<p>h</p>", "h", {}, {"é x": ""})
    assert to_resend_params(bare)["tags"] == [{"name": "__x", "value": "_"}]
    assert "headers" not in to_resend_params(bare)


# -- retries --------------------------------------------------------------------------------------------


def test_429_waits_for_retry_after(fake: FakeResend):
    fake.retry_after = 1
    fake.script("429")
    sender = fast_sender(fake)
    outcome = sender.send_batch(make_batch(3, "r"), "k-429")
    assert outcome.attempts == 2 and outcome.error is None
    first, second = fake.requests
    assert (first.status, second.status) == (429, 200)
    assert first.idempotency_key == second.idempotency_key == "k-429"
    waited = second.time - first.time
    assert 1.0 <= waited < 1.5, waited  # retry-after: 1, not the 0.02 s backoff
    assert len(fake.accepted) == 3


def test_429_without_retry_after_backs_off(fake: FakeResend):
    fake.script(ScriptedResponse(429, {"statusCode": 429, "name": "rate_limit_exceeded", "message": "slow down"}))
    outcome = fast_sender(fake).send_batch(make_batch(2, "n"), "k-429-bare")
    assert (outcome.attempts, outcome.error) == (2, None)
    assert len(fake.accepted) == 2


def test_500_after_accepting_then_hang_are_retried_with_the_same_key_without_duplicates(fake: FakeResend):
    fake.script("500_after_accept", "hang", "500")
    sender = fast_sender(fake, timeout_seconds=0.5)  # the hang lasts 1.5 s
    started = time.monotonic()
    outcome = sender.send_batch(make_batch(5, "x"), "k-dangerous")
    elapsed = time.monotonic() - started
    assert outcome.attempts == 4 and outcome.error is None
    requests = fake.requests
    assert [r.outcome for r in requests] == ["accepted_then_500", "hang", "fault_500", "replayed"]
    assert {r.idempotency_key for r in requests} == {"k-dangerous"}
    accepted = fake.accepted
    assert len(accepted) == 5  # accepted on the first attempt only
    assert outcome.provider_ids == [a.id for a in accepted]  # the replay returned the original ids
    assert 0.5 <= elapsed < 1.4, elapsed  # one client timeout, not the whole hang


def test_transient_errors_exhaust_into_transient_send_error(fake: FakeResend):
    fake.script(*["500"] * 3)
    with pytest.raises(TransientSendError, match="3 attempt") as raised:
        fast_sender(fake, max_attempts=3).send_batch(make_batch(2, "t"), "k-exhaust")
    assert "same idempotency key" in str(raised.value)
    assert fake.accepted == []
    # The op's RetryPolicy re-runs later with the same key: it goes out once.
    outcome = fast_sender(fake).send_batch(make_batch(2, "t"), "k-exhaust")
    assert outcome.provider_ids == [a.id for a in fake.accepted] and len(fake.accepted) == 2


def test_long_retry_after_or_an_exhausted_quota_fail_fast(fake: FakeResend):
    fake.script(
        ScriptedResponse(429, {"statusCode": 429, "name": "rate_limit_exceeded", "message": "later"}, {"retry-after": "3600"}),
        ScriptedResponse(429, {"statusCode": 429, "name": "daily_quota_exceeded", "message": "quota"}),
    )
    with pytest.raises(TransientSendError, match="1 attempt.*3600 s"):
        fast_sender(fake).send_batch(make_batch(1, "q"), "k-long-wait")
    with pytest.raises(TransientSendError, match="1 attempt.*quota"):
        fast_sender(fake).send_batch(make_batch(1, "q"), "k-quota")
    assert len(fake.requests) == 2 and fake.accepted == []


def test_wrong_api_url_is_a_configuration_error(fake: FakeResend):
    with pytest.raises(SenderConfigurationError, match="api_url"):
        fast_sender(fake, api_url=fake.url + "/v9").send_batch(make_batch(1, "w"), "k-url")


def test_unreachable_server_is_transient():
    with FakeResend(api_key=KEY) as gone:
        url = gone.url
    sender = ResendSender(api_key=KEY, api_url=url, max_attempts=2, backoff_base_seconds=0.01, timeout_seconds=0.5)
    with pytest.raises(TransientSendError, match="transport error"):
        sender.send_batch(make_batch(1, "u"), "k-unreachable")


# -- permanent failures ---------------------------------------------------------------------------------


def test_422_fails_that_batch_and_the_next_batch_still_goes(fake: FakeResend):
    sender = fast_sender(fake)
    bad = make_batch(3, "bad")
    bad[1] = OutgoingEmail("not-an-address", bad[1].from_address, "s", "<p>h</p>", "h", {}, {})
    rejected = sender.send_batch(bad, "k-bad")
    assert rejected.provider_ids is None and rejected.attempts == 1
    assert "422" in rejected.error and "`to`" in rejected.error
    good = sender.send_batch(make_batch(3, "good"), "k-good")
    assert good.error is None and len(good.provider_ids) == 3
    assert {a.idempotency_key for a in fake.accepted} == {"k-good"}


def test_409_same_key_with_a_different_payload_is_permanent(fake: FakeResend):
    sender = fast_sender(fake)
    assert sender.send_batch(make_batch(2, "p"), "k-reused").error is None
    conflict = sender.send_batch(make_batch(2, "other"), "k-reused")
    assert conflict.provider_ids is None and "409" in conflict.error and conflict.attempts == 1
    assert len(fake.accepted) == 2


def test_bad_keys_raise_configuration_errors_that_never_show_the_key(fake: FakeResend):
    wrong = "re_Wr0ng_key_never_to_be_shown"
    with pytest.raises(SenderConfigurationError) as forbidden:
        fast_sender(fake, api_key=wrong).send_batch(make_batch(1, "c"), "k-403")
    assert "RESEND_API_KEY" in str(forbidden.value) and "403" in str(forbidden.value)

    fake.script(
        ScriptedResponse(
            401, {"statusCode": 401, "name": "missing_api_key", "message": "Missing API key in the authorization header."}
        )
    )
    with pytest.raises(SenderConfigurationError) as unauthorized:
        fast_sender(fake).send_batch(make_batch(1, "c"), "k-401")
    assert "401" in str(unauthorized.value)

    with pytest.raises(SenderConfigurationError, match="empty"):
        fast_sender(fake, api_key=" ").send_batch(make_batch(1, "c"), "k-empty")

    for raised in (forbidden.value, unauthorized.value):
        assert wrong not in str(raised) and KEY not in str(raised) and KEY not in repr(raised)
        assert raised.__cause__ is None and raised.__suppress_context__
    assert fake.accepted == []


def test_the_key_appears_in_no_repr_message_or_log(fake: FakeResend, caplog):
    sender = fast_sender(fake, max_attempts=2)
    for text in (repr(sender), str(sender), f"{sender}", repr([sender])):
        assert KEY not in text and "[redacted]" in text

    # A server that echoes the key back in its error messages.
    echo = {"statusCode": 500, "name": "application_error", "message": f"Upstream failure for Bearer {KEY}"}
    fake.script(
        ScriptedResponse(500, echo),
        ScriptedResponse(500, echo),
        ScriptedResponse(403, {"statusCode": 403, "name": "validation_error", "message": f"{KEY} may not send"}),
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TransientSendError) as exhausted:
        sender.send_batch(make_batch(1, "e"), "k-echo")
    with pytest.raises(SenderConfigurationError) as refused:
        sender.send_batch(make_batch(1, "e"), "k-echo-2")
    assert "domain" in str(refused.value)
    for raised in (exhausted.value, refused.value):
        assert KEY not in str(raised) and KEY not in repr(raised) and raised.__cause__ is None
    assert "attempt 1/2" in caplog.text and KEY not in caplog.text


# -- pacing and throughput ------------------------------------------------------------------------------


def test_pacing_10_batches_at_10_per_second_never_trips_the_limit(tmp_path: Path):
    log_file = tmp_path / "sent.jsonl"
    with standalone_resend(log_file, "--rate", "10") as url:
        sender = ResendSender(api_key=KEY, api_url=url, requests_per_second=10.0)
        started = time.monotonic()
        outcomes = [sender.send_batch(make_batch(10, str(b)), f"pace-{b}") for b in range(10)]
        elapsed = time.monotonic() - started
    assert [o.attempts for o in outcomes] == [1] * 10  # no 429 (nor anything else) was retried
    assert len(logged(log_file)) == 100
    assert elapsed >= 0.9, f"{elapsed:.2f} s: calls were not paced"  # floor: 9 x 1.02 / 10 s


def test_10000_emails_at_20_per_second_are_paced_and_never_rate_limited(tmp_path: Path):
    """100 batches of 100 against a server allowing 20 req/s: the 2 req/s target scaled by 10.

    What is asserted is behaviour: every email arrives once, nothing is rate-limited, and pacing keeps
    the calls at least 1/rps apart (the floor, 99 x 1.02 / 20 = 5.05 s). How long it takes on top of
    that depends on the machine; the benchmark's 10,000-email phase reports it against the target.
    """
    log_file = tmp_path / "sent.jsonl"
    with standalone_resend(log_file, "--rate", "20") as url:
        sender = ResendSender(api_key=KEY, api_url=url, requests_per_second=20.0)
        started = time.monotonic()
        outcomes = [sender.send_batch(make_batch(100, str(b)), f"scaled-{b}") for b in range(100)]
        elapsed = time.monotonic() - started
    assert [o.attempts for o in outcomes] == [1] * 100  # never rate-limited
    records = logged(log_file)
    assert len(records) == 10_000 and len({r["email"]["to"][0] for r in records}) == 10_000
    assert [o.provider_ids for o in outcomes] == [[r["id"] for r in records[b * 100 : (b + 1) * 100]] for b in range(100)]
    assert elapsed >= 4.95, f"{elapsed:.2f} s: calls were not paced"


@pytest.mark.skipif(not os.environ.get("RETENTION_FULL_SCALE_SEND"), reason="50 s; set RETENTION_FULL_SCALE_SEND=1")
def test_10000_emails_at_2_per_second_are_paced_and_never_rate_limited(tmp_path: Path):
    log_file = tmp_path / "sent.jsonl"
    with standalone_resend(log_file, "--rate", "2") as url:
        sender = ResendSender(api_key=KEY, api_url=url)  # the defaults: 2 req/s
        started = time.monotonic()
        outcomes = [sender.send_batch(make_batch(100, str(b)), f"full-{b}") for b in range(100)]
        elapsed = time.monotonic() - started
    assert [o.attempts for o in outcomes] == [1] * 100
    assert len(logged(log_file)) == 10_000
    assert elapsed >= 50.4, f"{elapsed:.2f} s: calls were not paced"  # floor: 99 x 1.02 / 2 s; the benchmark reports the rest


def test_a_request_that_arrives_late_does_not_trip_the_window_of_the_requests_after_it():
    """The 2nd request reaches the API 60 ms late (beyond the 2 % slack: 20 ms per window). The 12th request
    starts one window (10 paced calls) after the 2nd and would land 40 ms inside it: a 429 and a 1 s wait."""
    with FakeResend(api_key=KEY, rate=10) as fake:
        sender = fast_sender(fake, requests_per_second=10.0)
        fake.delay_arrivals(0.0, 0.06)
        outcomes = [sender.send_batch(make_batch(10, str(b)), f"late-{b}") for b in range(13)]
        statuses = [r.status for r in fake.requests]
    assert statuses == [200] * 13, statuses
    assert [o.attempts for o in outcomes] == [1] * 13


def test_threads_hide_latency_while_pacing_holds_the_rate():
    """A slow API (250 ms per answer) at 10 req/s: sequential calls would take 2.5 s; three threads
    sharing one sender keep the pace (no 429) and finish in ~1.2 s."""
    with FakeResend(api_key=KEY, rate=10, latency_seconds=0.25) as slow:
        sender = fast_sender(slow, requests_per_second=10.0)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=3) as pool:
            outcomes = list(pool.map(lambda b: sender.send_batch(make_batch(10, str(b)), f"thr-{b}"), range(10)))
        elapsed = time.monotonic() - started
        requests = sorted(slow.requests, key=lambda r: r.time)
        assert len(slow.accepted) == 100
    assert all(o.attempts == 1 and len(o.provider_ids) == 10 for o in outcomes)
    assert [r.status for r in requests] == [200] * 10
    assert 1.1 <= elapsed < 1.7, elapsed


def test_senders_with_different_keys_in_concurrent_threads_each_use_their_own():
    """The SDK's key and URL are module globals: concurrent senders with other settings must not mix."""
    other_key = "re_Other_account_key_77"
    with FakeResend(api_key=KEY, rate=0) as first, FakeResend(api_key=other_key, rate=0) as second:
        senders = [fast_sender(first), fast_sender(second, api_key=other_key)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(lambda i: senders[i % 2].send_batch(make_batch(5, f"mix{i}"), f"mix-{i}"), range(20)))
        assert all(o.error is None and o.attempts == 1 for o in outcomes)
        assert len(first.accepted) == len(second.accepted) == 50
        assert {r.status for r in first.requests + second.requests} == {200}


def test_flaky_server_with_20_percent_faults_sends_every_email_once():
    kinds = ("429", "500", "hang", "500_after_accept")
    with FakeResend(api_key=KEY, rate=0, fault_rate=0.2, fault_kinds=kinds, seed=1, hang_seconds=0.6) as flaky:
        sender = fast_sender(flaky, timeout_seconds=0.3, requests_per_second=50.0)
        sent = {}
        for b in range(30):
            emails = make_batch(20, str(b))
            sent[f"flaky-{b}"] = (emails, sender.send_batch(emails, f"flaky-{b}"))
        assert_each_accepted_once(flaky, sent)
        outcomes = Counter(r.outcome for r in flaky.requests)
    assert sum(o.attempts for _, o in sent.values()) == sum(outcomes.values())
    faults = outcomes["fault_429"] + outcomes["fault_500"] + outcomes["hang"] + outcomes["accepted_then_500"]
    assert faults >= 4, outcomes
    assert outcomes["accepted_then_500"] >= 1 and outcomes["replayed"] >= outcomes["accepted_then_500"], outcomes


# -- the standalone server and a killed client ----------------------------------------------------------

CLIENT = """
import sys
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline_tests.test_senders import KEY, make_batch
sender = ResendSender(api_key=KEY, api_url=sys.argv[1], requests_per_second=5.0)
for b in range(10):
    sender.send_batch(make_batch(10, str(b)), f"killed-{b}")
    print("sent", b, flush=True)
"""


def test_standalone_server_counts_what_went_out_across_a_killed_client(tmp_path: Path):
    log_file = tmp_path / "sent.jsonl"
    with standalone_resend(log_file, "--rate", "0") as url:
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, url], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent
        )
        try:
            lines = [client.stdout.readline() for _ in range(3)]
            assert lines == ["sent 0\n", "sent 1\n", "sent 2\n"], lines
        finally:
            client.send_signal(signal.SIGKILL)  # mid-send: batch 3 may be in flight or accepted unanswered
            client.wait(timeout=10)
        before = log_file.read_text().splitlines()
        assert 30 <= len(before) < 100

        # The op's retry re-sends every batch with the same keys: nothing goes out twice.
        sender = ResendSender(api_key=KEY, api_url=url, requests_per_second=1000.0)
        for b in range(10):
            assert sender.send_batch(make_batch(10, str(b)), f"killed-{b}").error is None
    records = logged(log_file)
    assert len(records) == 100
    assert len({r["email"]["to"][0] for r in records}) == 100
    assert Counter(r["idempotency_key"] for r in records) == {f"killed-{b}": 10 for b in range(10)}


# -- the local outbox -----------------------------------------------------------------------------------


def test_outbox_writes_rows_and_eml_files_idempotently(app_db, tmp_path: Path):
    install_schema(app_db)
    outbox = tmp_path / "outbox"
    sender = OutboxSender(app_db=app_db, outbox_dir=str(outbox))
    assert sender.name == "outbox" and ResendSender(api_key=KEY).name == "resend"
    assert "outbox" in repr(sender) and "postgres@" in repr(sender)
    emails = make_batch(3, "o")

    outcome = sender.send_batch(emails, "outbox-key-1")
    assert outcome.error is None and outcome.attempts == 1
    assert outcome.provider_ids == [outbox_message_id("outbox-key-1", p) for p in range(3)]
    rows = app_db.fetch_all("SELECT * FROM {rs}.email_outbox ORDER BY position")
    assert [(r.idempotency_key, r.position, r.message_id, r.to_address) for r in rows] == [
        ("outbox-key-1", p, outcome.provider_ids[p], emails[p].to) for p in range(3)
    ]
    assert rows[0].headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert rows[0].subject == emails[0].subject and rows[0].html == emails[0].html and rows[0].text_body == emails[0].text

    files = sorted(outbox.glob("*.eml"))
    assert [f.name for f in files] == sorted(f"{i}.eml" for i in outcome.provider_ids)
    assert [r.eml_path for r in rows] == [str(outbox.resolve() / f"{i}.eml") for i in outcome.provider_ids]
    for row, sent in zip(rows, emails, strict=False):
        message = email.message_from_bytes(Path(row.eml_path).read_bytes(), policy=policy.default)
        assert message["To"] == sent.to and message["From"] == sent.from_address
        assert message["Subject"] == sent.subject
        assert message["List-Unsubscribe"] == sent.headers["List-Unsubscribe"]
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Message-ID"].startswith(f"<{row.message_id}@") and message["Date"]
        assert message.get_content_type() == "multipart/alternative"
        assert message.get_body(("plain",)).get_content().strip() == sent.text
        assert message.get_body(("html",)).get_content().strip() == sent.html
        assert "campaign=win_back__2025" in message["X-Tags"]

    # The same key again (a retried op): same ids, nothing new; a lost file is written again.
    files[0].unlink()
    again = sender.send_batch(emails, "outbox-key-1")
    assert again.provider_ids == outcome.provider_ids and again.error is None
    assert app_db.scalar("SELECT count(*) FROM {rs}.email_outbox") == 3
    assert len(list(outbox.glob("*.eml"))) == 3

    # The same key with another payload is refused like Resend's 409; a new key adds its rows.
    assert "different payload" in sender.send_batch(make_batch(3, "other"), "outbox-key-1").error
    umlaut = OutgoingEmail(
        "jürgen@example.com",
        "Acme <hello@acme.example>",
        "Wir vermissen dich, Jürgen ☕",
        "<p>Grüße</p>",
        "Grüße",
        make_email(9).headers,
        {"campaign": "é"},
    )
    second = sender.send_batch([make_email(8, "n"), umlaut], "outbox-key-2")
    assert len(second.provider_ids) == 2
    assert app_db.scalar("SELECT count(*) FROM {rs}.email_outbox") == 5
    assert len(list(outbox.glob("*.eml"))) == 5
    parsed = email.message_from_bytes((outbox / f"{second.provider_ids[1]}.eml").read_bytes(), policy=policy.default)
    assert parsed["Subject"] == umlaut.subject and parsed["To"] == umlaut.to
    assert parsed.get_body(("plain",)).get_content().strip() == "Grüße"
    assert parsed.get_body(("html",)).get_content().strip() == "<p>Grüße</p>"
