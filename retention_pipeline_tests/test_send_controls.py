"""Operator controls of the sends (issue 15): the kill switch, backfills that never send (leftovers
included) and the dry run, each driven through Dagster with the run config the launchpad sends.

One world (150 eligible dormant users: batches of 100 and 50) is built once and copied per test. A
"killed run" is a real send run in a child process, SIGKILLed while its second batch is on the wire
(before the provider accepted it): batch 1 is sent, batch 2 stays `pending` in the ledger.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline import clock
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.assets import LEFT_BY_EARLIER_RUN, THIS_RUNS_PLAN
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema
from retention_pipeline_tests import faults
from retention_pipeline_tests.faults import (
    API_KEY,
    AS_OF,
    MORNING_AFTER,
    GatedResend,
    child_send_run,
    create_database,
    exactly_once_violations,
    expected_recipients,
    forkserver,
    ledger,
    recipients,
    send_resources,
    wait_for_no_backends,
    wait_until,
)
from retention_pipeline_tests.scenario import live_campaign, materialization_metadata

ELIGIBLE = 150
LATER_THAT_MORNING = MORNING_AFTER + timedelta(hours=1)


@pytest.fixture(scope="module")
def world(dormant_world):
    n_users = faults.users_for_eligible(ELIGIBLE)
    return {"name": dormant_world(n_users), "expected": expected_recipients(n_users)}


@pytest.fixture
def copy_world(pg_server, world):
    made = []

    def copy() -> AppDatabase:
        name = create_database(pg_server, f"controls_{os.getpid()}_{uuid.uuid4().hex[:8]}", template=world["name"])
        made.append((name, AppDatabase(url=pg_server.url(name))))
        return made[-1][1]

    yield copy
    for name, db in made:
        db.engine().dispose()
        pg_server.drop_database(name)


def campaign_config(**fields) -> dict:
    """The run config the launchpad sends for the campaign's fields."""
    return {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": fields}}}}}


def send_run(instance, db: AppDatabase, server: FakeResend, partition=AS_OF, last=None, **campaign):
    result = run_job(
        instance,
        "daily_retention_job",
        partition.isoformat(),
        last.isoformat() if last else None,
        resources=send_resources(db.url, server.url),
        assets=["reengagement_emails"],
        run_config=live_campaign(campaign_config(**campaign)),
        quiet=True,
    )
    assert result.success
    return materialization_metadata(result, "reengagement_emails")


def kill_a_run_mid_send(pg_server, db: AppDatabase) -> GatedResend:
    """A send run killed while its second batch is on the wire; returns the (running) server."""
    server = GatedResend(api_key=API_KEY, rate=50, hold_before={2}).start()
    child = forkserver().Process(target=child_send_run, args=(db.url, server.url, MORNING_AFTER.isoformat()))
    child.start()
    wait_until(lambda: server.held or not child.is_alive(), 120, "the second batch to reach the provider")
    assert child.is_alive(), f"the run ended (exit code {child.exitcode}) before the kill point"
    child.kill()
    child.join(10)
    server.drop_held()
    db.engine().dispose()
    wait_for_no_backends(pg_server, sa.engine.make_url(db.url).database)
    server.open_gates()
    assert len(server.accepted) == 100
    assert Counter(r["status"] for r in ledger(db))["pending"] == ELIGIBLE - 100
    return server


def pending_keys(db: AppDatabase) -> set[str]:
    return {r["batch_key"] for r in ledger(db) if r["status"] == "pending"}


@pytest.fixture
def killed_run(pg_server, copy_world):
    db = copy_world()
    server = kill_a_run_mid_send(pg_server, db)
    yield db, server
    server.stop()


# -- kill switch -------------------------------------------------------------------------------------------


def test_kill_switch_holds_the_pending_batches_of_a_killed_run(killed_run, instance):
    db, server = killed_run
    leftovers = pending_keys(db)
    requests_before = len(server.requests)
    clock.set_now(LATER_THAT_MORNING)
    metadata = send_run(instance, db, server, paused=True)
    assert len(server.requests) == requests_before, "a paused run called the provider"
    assert pending_keys(db) == leftovers
    assert metadata["send_decision"].startswith("nothing sent: campaign paused (kill switch)")
    assert metadata["batches_sent"] == []
    assert [(b["batch_key"], b["why"], b["result"]) for b in metadata["batches_not_sent"]] == [
        (key, LEFT_BY_EARLIER_RUN, "held") for key in sorted(leftovers)
    ]


def test_kill_switch_resumed_sends_the_held_batches_exactly_once(killed_run, instance, world):
    db, server = killed_run
    leftovers = pending_keys(db)
    clock.set_now(LATER_THAT_MORNING)
    send_run(instance, db, server, paused=True)
    send_run(instance, db, server, paused=True)
    clock.set_now(LATER_THAT_MORNING + timedelta(minutes=30))
    metadata = send_run(instance, db, server, paused=False)
    assert exactly_once_violations(server, db, world["expected"]) == []
    assert [(b["batch_key"], b["why"]) for b in metadata["batches_sent"]] == [(k, LEFT_BY_EARLIER_RUN) for k in leftovers]
    accepted = len(server.accepted)
    assert send_run(instance, db, server)["batches_sent"] == []
    assert len(server.accepted) == accepted == ELIGIBLE


def test_kill_switch_resumed_past_the_idempotency_horizon_marks_held_batches_unknown(killed_run, instance):
    """Resend may have forgotten the key after 24 h: re-sending could duplicate, so the batch is not sent."""
    db, server = killed_run
    leftovers = pending_keys(db)
    clock.set_now(LATER_THAT_MORNING)
    send_run(instance, db, server, paused=True)
    clock.set_now(MORNING_AFTER + timedelta(days=1))  # the next morning's run, of the next day
    requests_before = len(server.requests)
    metadata = send_run(instance, db, server, partition=AS_OF + timedelta(days=1))
    assert len(server.requests) == requests_before
    assert [(b["batch_key"], b["result"]) for b in metadata["batches_not_sent"]] == [(k, "unknown") for k in leftovers]
    assert {r["status"] for r in ledger(db) if r["batch_key"] in leftovers} == {"unknown"}


# -- backfills never send, leftovers included ---------------------------------------------------------------


def test_backfill_of_an_old_day_after_a_killed_run_sends_no_leftovers(killed_run, instance, world):
    db, server = killed_run
    leftovers = pending_keys(db)
    requests_before = len(server.requests)
    clock.set_now(LATER_THAT_MORNING)
    old_day = AS_OF - timedelta(days=5)
    for metadata in (
        send_run(instance, db, server, partition=old_day),
        send_run(instance, db, server, partition=AS_OF - timedelta(days=20), last=old_day),
    ):
        assert len(server.requests) == requests_before, "a backfill called the provider"
        assert metadata["send_decision"].startswith("nothing sent: backfill")
        assert metadata["batches_sent"] == [] and metadata["send_results_this_run"] == {}
        assert {(b["batch_key"], b["why"], b["result"]) for b in metadata["batches_not_sent"]} == {
            (key, LEFT_BY_EARLIER_RUN, "held") for key in leftovers
        }
    assert pending_keys(db) == leftovers

    metadata = send_run(instance, db, server)  # the current day's run reconciles them
    assert [b["batch_key"] for b in metadata["batches_sent"]] == sorted(leftovers)
    assert {b["why"] for b in metadata["batches_sent"]} == {LEFT_BY_EARLIER_RUN}
    assert exactly_once_violations(server, db, world["expected"]) == []
    assert len(server.accepted) == ELIGIBLE


def test_backfill_metadata_names_this_runs_batches_apart_from_leftovers(copy_world, instance):
    """A current-day run that plans its own batches says which batches are its own."""
    db = copy_world()
    with FakeResend(api_key=API_KEY, rate=50) as server:
        clock.set_now(MORNING_AFTER)
        metadata = send_run(instance, db, server)
        assert len(metadata["batches_sent"]) == 2 and {b["why"] for b in metadata["batches_sent"]} == {THIS_RUNS_PLAN}
        assert sum(b["emails"] for b in metadata["batches_sent"]) == ELIGIBLE == len(server.accepted)


# -- dry run ----------------------------------------------------------------------------------------------


def ledger_rows(db: AppDatabase) -> list[tuple]:
    with db.engine().connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT campaign, step, user_id, episode_start, as_of_date, variant, status, email, subject "
                        "FROM {rs}.email_sends ORDER BY campaign, step, user_id"
                    )
                )
            )
        ]


def dry_run_rows(db: AppDatabase) -> list[dict]:
    with db.engine().connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    db.render(
                        "SELECT user_id, step, status, variant, email, subject, payload FROM {rs}.email_dry_runs ORDER BY user_id"
                    )
                )
            ).mappings()
        ]


def test_dry_run_then_live_run_sends_exactly_what_a_live_only_run_sends(copy_world, instance, world):
    dry_then_live, live_only = copy_world(), copy_world()
    clock.set_now(MORNING_AFTER)
    with FakeResend(api_key=API_KEY, rate=50) as server:
        dry = send_run(instance, dry_then_live, server, dry_run=True)
        assert server.requests == [] and ledger_rows(dry_then_live) == []
        assert dry["dry_run_would_send"] == ELIGIBLE and dry["send_decision"].startswith("nothing sent: dry run")
        clock.set_now(LATER_THAT_MORNING)
        after_dry = send_run(instance, dry_then_live, server)
        first = recipients(server)
    with FakeResend(api_key=API_KEY, rate=50) as server:
        live = send_run(instance, live_only, server)
        second = recipients(server)
    assert sorted(first) == sorted(second) == sorted(world["expected"])
    assert after_dry["emails_sent"] == live["emails_sent"] == ELIGIBLE
    assert after_dry["already_recorded"] == live["already_recorded"] == 0
    assert ledger_rows(dry_then_live) == ledger_rows(live_only)
    # The preview is what went out: same users, variants and subjects.
    sent = {row[2]: (row[5], row[8]) for row in ledger_rows(live_only) if row[6] == "sent"}
    preview = {r["user_id"]: (r["variant"], r["subject"]) for r in dry_run_rows(dry_then_live) if r["status"] == "would_send"}
    assert preview == sent


def test_dry_run_writes_no_ledger_or_holdout_rows_and_nothing_enters_outcomes(copy_world, instance):
    db = copy_world()
    clock.set_now(MORNING_AFTER)
    with FakeResend(api_key=API_KEY, rate=50) as server:
        first = send_run(instance, db, server, dry_run=True)
        again = send_run(instance, db, server, dry_run=True)  # a second dry run replaces the preview
        assert server.requests == []
    assert ledger_rows(db) == []
    rows = dry_run_rows(db)
    statuses = Counter(r["status"] for r in rows)
    assert statuses["would_send"] == ELIGIBLE and statuses["would_hold_out"] > 0
    assert first["dry_run_would_send"] == again["dry_run_would_send"] == ELIGIBLE
    assert first["dry_run_would_hold_out"] == again["dry_run_would_hold_out"] == statuses["would_hold_out"]
    assert first["holdout"] == 0 and first["pending"] == 0
    payload = next(r["payload"] for r in rows if r["status"] == "would_send")
    assert "List-Unsubscribe" in payload["headers"] and payload["html"] and payload["subject"]

    clock.set_now(MORNING_AFTER + timedelta(days=8))
    result = run_job(
        instance,
        "daily_retention_job",
        (AS_OF + timedelta(days=7)).isoformat(),
        resources={"app_db": db},
        assets=["reengagement_outcomes", "campaign_performance"],
        quiet=True,
    )
    assert result.success
    assert db.scalar("SELECT count(*) FROM {rs}.reengagement_outcomes") == 0
    assert db.scalar("SELECT count(*) FROM {rs}.campaign_performance") == 0


def test_dry_run_rows_of_an_older_install_move_out_of_the_ledger(copy_world):
    """Before the preview table, dry runs wrote `dry_run` rows and real `holdout` rows into the ledger.
    Installing this version moves both (recognised by campaign, step, day and created_at) and leaves
    live rows alone."""
    db = copy_world()
    dry_at, live_at = MORNING_AFTER, MORNING_AFTER - timedelta(days=3)
    insert = sa.text(
        db.render(
            "INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email, "
            "created_at) VALUES ('winback', 1, :user_id, :day, :day, :variant, :status, 'u@example.com', :at)"
        )
    )
    with db.begin() as conn:
        conn.execute(
            insert,
            [
                {"user_id": 1, "day": AS_OF, "variant": "recap", "status": "dry_run", "at": dry_at},
                {"user_id": 2, "day": AS_OF, "variant": "holdout", "status": "holdout", "at": dry_at},
                {"user_id": 3, "day": AS_OF - timedelta(days=3), "variant": "holdout", "status": "holdout", "at": live_at},
            ],
        )
        conn.execute(sa.text(db.render("DROP TABLE {rs}.email_dry_runs")))
        # An install from before schema versions (1999d15 and earlier): `db upgrade` takes it from revision 0001.
        # Its assignments view had no `suppressed` column yet (a view cannot lose a column on replace).
        conn.execute(sa.text(db.render("DROP TABLE {rs}.alembic_version")))
        conn.execute(sa.text(db.render("DROP VIEW {rs}.assignments")))
    install_schema(db)
    assert [(r["user_id"], r["status"]) for r in ledger(db)] == [(3, "holdout")]
    assert [(r["user_id"], r["status"]) for r in dry_run_rows(db)] == [(1, "would_send"), (2, "would_hold_out")]
