"""Fault injection for the reliability suite (issue 8): worlds built once and copied per trial, a
Resend-like server whose requests can be held at chosen points, send runs in killable child processes,
the exactly-once checker, and the JSON summary the suite writes (rendered into docs/reliability.md).

    python -m retention_pipeline_tests.faults render   # test-artifacts/reliability.json -> docs/reliability.md

Child processes are forked from a forkserver that has already imported Dagster and the project
(importing them takes several seconds on a small machine; forking takes milliseconds), so 20 trials
that each kill a run cost seconds, not minutes. Each child is its own process with its own Dagster
instance and database connections, and SIGKILL ends it as abruptly as the OOM killer would.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from psycopg2 import sql

from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.fake_resend_api import Reply
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline_tests.scenario import live_campaign

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUMMARY_PATH = Path(os.environ.get("RELIABILITY_SUMMARY", PROJECT_ROOT / "test-artifacts" / "reliability.json"))
REPORT_PATH = Path(os.environ.get("RELIABILITY_REPORT", PROJECT_ROOT / "docs" / "reliability.md"))

AS_OF = date(2026, 5, 20)  # the partition day of the sends; the run happens the next morning
MORNING_AFTER = datetime(2026, 5, 21, 9, 0, tzinfo=UTC)
CAMPAIGN = "winback"
HOLDOUT_SHARE = 0.1  # the campaign default
EPISODE_START = AS_OF - timedelta(days=11)  # a dormant world's users enter dormant_users (declining) that day
API_KEY = "re_reliability_test_key"
UNSUBSCRIBE_SECRET = "reliability-unsubscribe-secret"

# Set to run the suite against a deliberately broken pipeline (see docs/reliability.md); empty = intact.
BREAK = os.environ.get("RELIABILITY_BREAK", "")


# -- worlds ----------------------------------------------------------------------------------------


def users_for_eligible(eligible: int) -> int:
    """The number of users 1..n such that exactly `eligible` of them are outside the holdout."""
    from retention_pipeline.outreach.allocation import in_holdout

    n = count = 0
    while count < eligible:
        n += 1
        count += not in_holdout(CAMPAIGN, 1, n, EPISODE_START, HOLDOUT_SHARE)
    return n


def expected_recipients(n_users: int, excluded: set[int] = frozenset()) -> set[str]:
    from retention_pipeline.outreach.allocation import in_holdout

    return {
        f"user{u}@example.com"
        for u in range(1, n_users + 1)
        if u not in excluded and not in_holdout(CAMPAIGN, 1, u, EPISODE_START, HOLDOUT_SHARE)
    }


def create_database(server, name: str, template: str | None = None) -> str:
    conn = server.connect()
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if template:
                cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
            else:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return name


def build_dormant_world(server, name: str, n_users: int, instance=None, extra: Callable | None = None):
    """Users 1..n, all active from 30 to 15 days before AS_OF and dormant since, with snapshots and
    dormant_users materialized for AS_OF-40 .. AS_OF. Returns the AppDatabase (engine disposed)."""
    from dagster import DagsterInstance

    from retention_pipeline import clock
    from retention_pipeline.activity.trigger import install_trigger
    from retention_pipeline.local import demo_data
    from retention_pipeline.local.runner import run_job
    from retention_pipeline.resources import AppDatabase
    from retention_pipeline.schema import install_schema

    create_database(server, name)
    conn = server.connect(name)
    demo_data.create_app_tables(conn)
    conn.commit()
    conn.close()
    db = AppDatabase(url=server.url(name))
    install_schema(db)
    install_trigger(db)
    noon = datetime(AS_OF.year, AS_OF.month, AS_OF.day, 12, tzinfo=UTC)
    db.execute(
        "INSERT INTO users (id, email, name, created_at) "
        "SELECT g, 'user' || g || '@example.com', 'User ' || g, CAST(:created AS timestamptz) FROM generate_series(1, :n) g",
        {"n": n_users, "created": noon - timedelta(days=60)},
    )
    db.execute(
        "INSERT INTO events (id, user_id, event_type, occurred_at, properties) "
        "SELECT row_number() OVER (ORDER BY u, d), u, "
        "       CASE WHEN d % 2 = 0 THEN 'create_project' ELSE 'comment' END, "
        "       CAST(:noon AS timestamptz) - make_interval(days => d), "
        "       jsonb_build_object('project_name', 'Plan ' || u) "
        "FROM generate_series(1, :n) u, generate_series(15, 30) d",
        {"n": n_users, "noon": noon},
    )
    if extra is not None:
        extra(db)
    own_instance = instance is None
    instance = instance or DagsterInstance.ephemeral()
    try:
        with clock.frozen_at(MORNING_AFTER):
            result = run_job(
                instance,
                "daily_retention_job",
                (AS_OF - timedelta(days=40)).isoformat(),
                AS_OF.isoformat(),
                resources={"app_db": db},
                assets=["daily_activity_snapshots", "dormant_users"],
                quiet=True,
            )
        assert result.success
    finally:
        if own_instance:
            instance.dispose()
    db.engine().dispose()
    return db


def backends(server, database: str, exclude_self: bool = True) -> list[dict]:
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid, application_name, state, wait_event_type, wait_event, left(query, 200) "
                "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            return [
                dict(zip(("pid", "application_name", "state", "wait_event_type", "wait_event", "query"), row, strict=False))
                for row in cur.fetchall()
            ]
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_no_backends(server, database: str, timeout: float = 15.0) -> None:
    """After a SIGKILL: wait until the dead client's sessions (and their advisory locks) are gone."""
    try:
        wait_until(lambda: not backends(server, database), timeout, f"the sessions on {database} to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {backends(server, database)}") from None


# -- a Resend-like server whose requests can be held -----------------------------------------------


class GatedResend(FakeResend):
    """FakeResend that can hold the n-th request (1-based) before it is decided (`hold_before`: nothing
    accepted yet) or after it was accepted (`hold_after`: accepted, the answer not yet sent).
    `drop_held()` lets held requests go: before-held ones are dropped without being accepted (the
    connection died with the client), after-held ones get their (now unread) answer."""

    def __init__(self, *, hold_before: set[int] = frozenset(), hold_after: set[int] = frozenset(), **kwargs):
        kwargs.setdefault("hang_seconds", 1.5)
        super().__init__(**kwargs)
        self.hold_before, self.hold_after = set(hold_before), set(hold_after)
        self._gate_lock = threading.Lock()
        self._arrivals = 0
        self.arrived: dict[int, float] = {}  # request number -> monotonic arrival time
        self.decided: dict[int, float] = {}  # request number -> when its answer was decided
        self.held: set[int] = set()
        self._release = threading.Event()
        self._dropping = False

    def decide(self, method, target, headers, raw, now):
        with self._gate_lock:
            self._arrivals += 1
            number = self._arrivals
            self.arrived[number] = time.monotonic()
        if number in self.hold_before:
            with self._gate_lock:
                self.held.add(number)
            self._release.wait(120)
            if self._dropping:
                return Reply(hang=True)
        reply = super().decide(method, target, headers, raw, now)
        self.decided[number] = time.monotonic()
        if number in self.hold_after:
            with self._gate_lock:
                self.held.add(number)
            self._release.wait(120)
        return reply

    def drop_held(self) -> None:
        self._dropping = True
        self._release.set()

    def open_gates(self) -> None:
        """No more holds for later requests (the re-run)."""
        self.hold_before, self.hold_after = set(), set()
        self.latency_seconds = 0.0


def recipients(server: FakeResend) -> list[str]:
    out = []
    for accepted in server.accepted:
        to = accepted.email["to"]
        out.append(to[0] if isinstance(to, list) else to)
    return out


# -- child processes -------------------------------------------------------------------------------

_context = None


def forkserver():
    """A forkserver context whose server has imported Dagster and the project once."""
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["retention_pipeline.local.runner", "retention_pipeline_tests.faults"])
    return _context


def apply_break(mode: str, set_attribute: Callable = setattr) -> None:
    """Deliberately broken variants (RELIABILITY_BREAK=...), to show that the tests fail when a
    guarantee is broken. `set_attribute` is pytest's monkeypatch.setattr in-process."""
    if mode:
        original = set_attribute

        def set_attribute(target, name, value):  # noqa: F811 (a break that changes nothing would prove nothing)
            assert getattr(target, name) != value, f"RELIABILITY_BREAK={mode} no longer applies to {name}"
            original(target, name, value)

    if mode == "no_unique_guard":
        from retention_pipeline.outreach import assets

        set_attribute(assets, "INSERT_LEDGER_SQL", assets.INSERT_LEDGER_SQL.split("ON CONFLICT")[0] + " RETURNING id, status")
    elif mode == "no_reconcile":
        from retention_pipeline.outreach import assets

        # Pending batches that the crashed run planned (at MORNING_AFTER) are not picked up by the re-run.
        set_attribute(
            assets,
            "PENDING_BATCHES_SQL",
            assets.PENDING_BATCHES_SQL.replace(
                "WHERE status = 'pending'",
                f"WHERE status = 'pending' AND created_at > CAST('{MORNING_AFTER.isoformat()}' AS timestamptz)",
            ),
        )
    elif mode == "no_replace_lock":
        # Overlapping backfills of a table no longer wait for each other.
        from retention_pipeline.activity import assets

        set_attribute(assets, "serialize_replacement", lambda conn, table: None)
    elif mode == "leak_resend_key":
        # The sender no longer redacts the key from the provider's error messages.
        set_attribute(ResendSender, "_redact", lambda self, text: str(text))
    elif mode == "non_atomic_snapshot":
        from retention_pipeline.activity import assets

        # Commit the DELETE before the INSERT: a crash in between leaves the range empty.
        set_attribute(assets, "SNAPSHOT_SQL", assets.SNAPSHOT_SQL.replace("\nINSERT INTO", "\nCOMMIT;\nINSERT INTO", 1))


def drop_unique_guard(db) -> None:
    """The database side of the no_unique_guard break: the ledger's unique constraint goes."""
    name = db.scalar(
        "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) AND contype = 'u'",
        {"t": f"{db.retention_schema}.email_sends"},
    )
    db.execute(f'ALTER TABLE {{rs}}.email_sends DROP CONSTRAINT "{name}"')


def send_resources(db_url: str, api_url: str, api_key: str = API_KEY, rekey: bool = False, **sender_options) -> dict:
    from retention_pipeline.outreach.links import UnsubscribeLinks
    from retention_pipeline.resources import AppDatabase

    options = {"requests_per_second": 50, "timeout_seconds": 10, "backoff_base_seconds": 0.05} | sender_options
    sender_class = RekeyingSender if rekey else ResendSender
    return {
        "app_db": AppDatabase(url=db_url),
        "email_sender": sender_class(api_key=api_key, api_url=api_url, **options),
        "unsubscribe_links": UnsubscribeLinks(secret=UNSUBSCRIBE_SECRET),
    }


def run_send(instance, db_url: str, api_url: str, as_of: date = AS_OF, **options):
    """One in-process run of the reengagement_emails asset for `as_of`."""
    from retention_pipeline.local.runner import run_job

    return run_job(
        instance,
        "daily_retention_job",
        as_of.isoformat(),
        resources=send_resources(db_url, api_url, **options),
        assets=["reengagement_emails"],
        run_config=live_campaign(),
        quiet=True,
    )


def child_send_run(db_url: str, api_url: str, now_iso: str, start=None, results=None, break_mode: str = "") -> None:
    """Target of a child process: one send run, like a run worker of the daily job."""
    os.environ["RETENTION_NOW"] = now_iso
    os.environ["RETENTION_UNSUBSCRIBE_SECRET"] = UNSUBSCRIBE_SECRET
    os.environ["RETENTION_DATABASE_URL"] = db_url
    apply_break(break_mode)
    from dagster import DagsterInstance

    if start is not None:
        start.wait(30)
    with DagsterInstance.ephemeral() as instance:
        result = run_send(instance, db_url, api_url)
        if results is not None:
            results.put(_send_summary(result))
    sys.exit(0 if result.success else 1)


def _send_summary(result) -> dict:
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        if materialization.asset_key.path[-1] == "reengagement_emails":
            metadata = {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
            return {
                "success": result.success,
                "sent": metadata["emails_sent"],
                "pending": metadata["pending"],
                "send_results_this_run": metadata["send_results_this_run"],
                "skipped_by_reason": metadata["skipped_by_reason"],
            }
    return {"success": result.success}


def child_snapshot_run(db_url: str, first: str, last: str, results=None, break_mode: str = "") -> None:
    """Target of a child process: one backfill run of daily_activity_snapshots over first..last."""
    os.environ["RETENTION_DATABASE_URL"] = db_url
    apply_break(break_mode)
    from dagster import DagsterInstance

    from retention_pipeline.local.runner import run_job
    from retention_pipeline.resources import AppDatabase

    with DagsterInstance.ephemeral() as instance:
        result = run_job(
            instance,
            "daily_retention_job",
            first,
            last,
            resources={"app_db": AppDatabase(url=db_url)},
            assets=["daily_activity_snapshots"],
            quiet=True,
        )
        retries = sum(1 for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY")
        if results is not None:
            results.put({"success": result.success, "retries": retries})
    sys.exit(0 if result.success else 1)


class RekeyingSender(ResendSender):
    """A broken sender: every call uses a fresh idempotency key instead of the batch's own."""

    def send_batch(self, emails, idempotency_key):
        return super().send_batch(emails, f"{idempotency_key}-{uuid.uuid4().hex[:8]}")


# -- what the checks compare -----------------------------------------------------------------------


def ledger(db) -> list[dict]:
    with db.engine().connect() as conn:
        import sqlalchemy as sa

        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT id, user_id, step, status, email, batch_key, provider_message_id FROM {rs}.email_sends ORDER BY id"
                    )
                )
            ).mappings()
        ]


def exactly_once_violations(server: FakeResend, db, expected: set[str]) -> list[str]:
    """Everything that breaks "every eligible user emailed exactly once, and the ledger agrees"."""
    problems = []
    delivered = recipients(server)
    twice = sorted(address for address, n in Counter(delivered).items() if n > 1)
    if twice:
        problems.append(f"duplicates: {len(twice)} recipients got more than one email, e.g. {twice[:3]}")
    missing = sorted(expected - set(delivered))
    if missing:
        problems.append(f"lost: {len(missing)} eligible users got no email, e.g. {missing[:3]}")
    unexpected = sorted(set(delivered) - expected)
    if unexpected:
        problems.append(f"unexpected: {len(unexpected)} emails to users who are not eligible, e.g. {unexpected[:3]}")
    server_ids = {}
    for accepted in server.accepted:
        to = accepted.email["to"]
        server_ids.setdefault(to[0] if isinstance(to, list) else to, set()).add(accepted.id)
    rows = ledger(db)
    statuses = Counter(r["status"] for r in rows)
    if statuses.keys() - {"sent", "holdout"}:
        problems.append(f"ledger rows not sent/holdout: {dict(statuses)}")
    per_user = Counter((r["user_id"], r["step"]) for r in rows)
    if any(n > 1 for n in per_user.values()):
        problems.append("the ledger holds two rows for one user and step")
    mismatched = [r for r in rows if r["status"] == "sent" and {r["provider_message_id"]} != server_ids.get(r["email"])]
    if mismatched:
        problems.append(f"ledger disagrees with the server for {len(mismatched)} sent rows")
    sent = {r["email"] for r in rows if r["status"] == "sent"}
    if sent != set(delivered):
        problems.append(f"ledger sent {len(sent)} addresses, the server accepted {len(set(delivered))}")
    return problems


def server_fault_counts(server: FakeResend) -> dict[str, int]:
    return dict(Counter(r.outcome for r in server.requests))


# -- the summary -----------------------------------------------------------------------------------


_sections_written: set[str] = set()


def record(section: str, key: str | None, data: dict) -> None:
    """Merge one result into test-artifacts/reliability.json (safe across processes). The first write
    of a section by this test session replaces what an earlier session left in that section."""
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(SUMMARY_PATH.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            summary = json.loads(SUMMARY_PATH.read_text()) if SUMMARY_PATH.exists() else {}
        except ValueError:
            summary = {}
        entry = dict(data, recorded_at=datetime.now(UTC).isoformat(timespec="seconds"), broken_variant=BREAK or None)
        if section not in _sections_written:
            summary.pop(section, None)
            _sections_written.add(section)
        if key is None:
            summary[section] = entry
        else:
            summary.setdefault(section, {})[key] = entry
        temporary = SUMMARY_PATH.with_suffix(".tmp")
        temporary.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        os.replace(temporary, SUMMARY_PATH)


def figures(summary: dict) -> dict:
    """The headline figures of a summary."""
    crash = list(summary.get("crash_trials", {}).values())
    flaky = list(summary.get("flaky_provider", {}).values())
    concurrent = list(summary.get("concurrent_sends", {}).values())
    db = summary.get("database_faults", {})
    backfills = list(summary.get("concurrent_backfills", {}).values())
    secrets = summary.get("secrets", {})
    bad = summary.get("bad_input", {})
    broken = summary.get("broken_variants", {})
    kills = Counter(t["kill_point"] for t in crash)
    provider_faults = Counter()
    for t in flaky:
        provider_faults.update(t["faults"])
    return {
        "crash_trials": len(crash),
        "kill_points": dict(kills),
        "crash_emails_sent": sum(t["emails_sent"] for t in crash),
        "crash_duplicates": sum(t["duplicates"] for t in crash),
        "crash_lost": sum(t["lost"] for t in crash),
        "crash_pending_left": sum(t["pending_left"] for t in crash),
        "crash_replayed_batches": sum(t["replayed_batches"] for t in crash),
        "flaky_runs": len(flaky),
        "flaky_calls": sum(t["calls"] for t in flaky),
        "flaky_faults": sum(t["faults_injected"] for t in flaky),
        "flaky_fault_kinds": dict(provider_faults),
        "flaky_emails_sent": sum(t["emails_sent"] for t in flaky),
        "flaky_duplicates": sum(t["duplicates"] for t in flaky),
        "flaky_lost": sum(t["lost"] for t in flaky),
        "concurrent_send_rounds": len(concurrent),
        "concurrent_emails_sent": sum(t["emails_sent"] for t in concurrent),
        "concurrent_duplicates": sum(t["duplicates"] for t in concurrent),
        "concurrent_backfill_rounds": len(backfills),
        "concurrent_backfill_rows_lost": sum(t["rows_lost"] for t in backfills),
        "concurrent_backfill_rows_differing": sum(t["rows_differing"] for t in backfills),
        "db_faults": db,
        "secrets": secrets,
        "bad_input": bad,
        "broken_variants": broken,
    }


_START, _END = "<!-- reliability-figures:start -->", "<!-- reliability-figures:end -->"


_INJECTED = ("fault_429", "fault_500", "hang", "accepted_then_500")


def render_figures(summary: dict) -> str:
    f = figures(summary)
    crash = list(summary.get("crash_trials", {}).values())
    lines = ["| guarantee | trials / runs | faults injected | checked | duplicates | lost |", "|---|---:|---|---:|---:|---:|"]
    kills = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(f["kill_points"].items()))
    lines.append(
        f"| exactly once across a SIGKILL mid-send | {f['crash_trials']} trials | {f['crash_trials']} SIGKILLs ({kills}) "
        f"| {f['crash_emails_sent']} emails | {f['crash_duplicates']} | {f['crash_lost']} |"
    )
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(f["flaky_fault_kinds"].items()) if kind in _INJECTED)
    lines.append(
        f"| exactly once against a 20 % flaky provider | {f['flaky_runs']} runs, {f['flaky_calls']} calls "
        f"| {f['flaky_faults']} ({kinds}) | {f['flaky_emails_sent']} emails | {f['flaky_duplicates']} | {f['flaky_lost']} |"
    )
    lines.append(
        f"| exactly once with two send runs at once | {f['concurrent_send_rounds']} rounds x 2 runs | 2 racing runs per round "
        f"| {f['concurrent_emails_sent']} emails | {f['concurrent_duplicates']} | 0 |"
    )
    db_rows_lost = 0
    for name, entry in sorted(f["db_faults"].items()):
        db_rows_lost += entry.get("rows_lost", 0)
        attempts = entry.get("attempts", "?")
        lines.append(
            f"| snapshot range atomic: {name} | 1 run, {attempts} attempt{'' if attempts == 1 else 's'} "
            f"| {entry.get('faults', '?')} | {entry.get('rows_checked', 0)} rows over {entry.get('days', '?')} days; "
            f"after the fault: {entry.get('after_crash', entry.get('after_failure', '?'))} rows | - | {entry.get('rows_lost', 0)} |"
        )
    lines.append(
        f"| overlapping backfills equal one clean run | {f['concurrent_backfill_rounds']} rounds x 2 runs | 2 racing runs per round "
        f"| rows differing from a clean run: {f['concurrent_backfill_rows_differing']} | - "
        f"| {f['concurrent_backfill_rows_lost']} |"
    )
    out = ["\n".join(lines), ""]
    emails = f["crash_emails_sent"] + f["flaky_emails_sent"] + f["concurrent_emails_sent"]
    duplicates = f["crash_duplicates"] + f["flaky_duplicates"] + f["concurrent_duplicates"]
    faults_total = (
        f["crash_trials"] + f["flaky_faults"] + sum(int(str(e.get("faults", "0")).split()[0]) for e in f["db_faults"].values())
    )
    out.append(
        f"**Totals:** {faults_total} faults injected (SIGKILLs, provider faults, database restarts and terminations), "
        f"{emails} emails counted at the provider, **{duplicates} duplicates, {f['crash_lost'] + f['flaky_lost']} emails lost, "
        f"{db_rows_lost + f['concurrent_backfill_rows_lost']} rows lost**, "
        f"{f['crash_pending_left']} ledger rows left pending."
    )
    if crash:
        during_plan = sum(1 for t in crash if t["kill_point"] == "before_first_request" and not t["planned_before_kill"])
        planned = sum(1 for t in crash if t["kill_point"] == "before_first_request" and t["planned_before_kill"])
        in_flight = Counter(t["batch"] for t in crash if t["kill_point"] == "in_flight_after_accept")
        between = Counter(t["batch"] for t in crash if t["kill_point"] == "between_batches")
        unrecorded = sum(1 for t in crash if t["replayed_batches"] > 0)
        out.append("")
        out.append(
            f"Crash trials: before any request {during_plan + planned} ({during_plan} while planning, {planned} with the "
            f"plan committed and request 1 unanswered); in flight after acceptance of batch "
            + ", ".join(f"{b}: {n}" for b, n in sorted(in_flight.items()))
            + "; between batches after batch "
            + ", ".join(f"{b}: {n}" for b, n in sorted(between.items()))
            + f". In {unrecorded} trials the provider had accepted a batch the ledger did not yet record; "
            f"the re-run got the provider's replay of it ({f['crash_replayed_batches']} replayed batches), not a second send."
        )
    if f["secrets"]:
        s = f["secrets"]
        out.append("")
        out.append(
            f"Secrets: {s.get('secrets', '?')} secret values searched in {s.get('places', '?')} places "
            f"({s.get('log_events', '?')} event-log entries of {s.get('runs', '?')} runs, {s.get('failed_runs_searched', '?')} "
            f"of them failed runs): {s.get('leaks', '?')} leaks."
        )
    embedded = summary.get("embedded_server")
    if embedded:
        out.append(
            f"Embedded PostgreSQL: {embedded['tcp_listeners']} TCP listeners among its {embedded['processes_checked']} processes."
        )
    if f["bad_input"]:
        out.append("")
        out.append("Bad input: " + "; ".join(f"{k}: {v.get('value')}" for k, v in sorted(f["bad_input"].items())) + ".")
    if f["broken_variants"]:
        out.append("")
        out.append("| deliberately broken variant (in the suite) | what the suite saw |")
        out.append("|---|---|")
        for name, entry in sorted(f["broken_variants"].items()):
            out.append(f"| {name} | {entry.get('detected', '?')} |")
    stamps = sorted(
        v.get("recorded_at", "")
        for section in summary.values()
        if isinstance(section, dict)
        for v in (section.values() if all(isinstance(x, dict) for x in section.values()) else [section])
        if isinstance(v, dict)
    )
    if stamps:
        out.append("")
        out.append(f"_Rendered from `test-artifacts/reliability.json`, recorded {stamps[0]} .. {stamps[-1]}._")
    return "\n".join(out).rstrip() + "\n"


def render_report(summary_path: Path = SUMMARY_PATH, report_path: Path = REPORT_PATH) -> str:
    summary = json.loads(summary_path.read_text())
    text = report_path.read_text()
    start, end = text.index(_START) + len(_START), text.index(_END)
    block = "\n" + render_figures(summary) + "\n"
    report_path.write_text(text[:start] + block + text[end:])
    return block


if __name__ == "__main__":
    if sys.argv[1:] == ["render"]:
        print(render_report())
    else:
        print(__doc__)
        sys.exit(2)
