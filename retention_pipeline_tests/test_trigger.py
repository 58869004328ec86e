"""The statement-level trigger on `events` and the drain that maintain `retention.user_activity`.

The invariant under test: after any mix of inserts and a drain, user_activity equals a recomputation
from the events table, with the last event ordered by (occurred_at DESC, id DESC); and nothing the
pipeline's tables go through makes the app's INSERT fail.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline.activity.trigger import (
    QUEUED_COUNT_ROW,
    TRIGGER_NAME,
    drain_activity_queue,
    install_trigger,
    trigger_state,
    uninstall_trigger,
)
from retention_pipeline_tests.scenario import Scenario, utc

RECOMPUTED = """
SELECT user_id, min(occurred_at) AS first_activity_at, max(occurred_at) AS last_activity_at,
       (array_agg(id ORDER BY occurred_at DESC, id DESC))[1] AS last_event_id,
       (array_agg(event_type ORDER BY occurred_at DESC, id DESC))[1] AS last_event_type,
       count(*) AS event_count
FROM public.events WHERE user_id IS NOT NULL GROUP BY user_id ORDER BY user_id
"""

TRACKED = """
SELECT user_id, first_activity_at, last_activity_at, last_event_id, last_event_type, event_count
FROM {rs}.user_activity ORDER BY user_id
"""

T0 = utc(2025, 3, 1, 8)


def assert_matches_recomputation(s: Scenario) -> list[dict]:
    drain_activity_queue(s.db)
    tracked = s.rows(TRACKED)
    assert tracked == s.rows(RECOMPUTED)
    assert s.db.scalar("SELECT count(*) FROM {rs}.activity_queue") == 0
    return tracked


def queued_events(s: Scenario) -> int:
    return s.db.scalar(f"SELECT COALESCE(sum(events), 0) FROM {{rs}}.activity_queue WHERE {QUEUED_COUNT_ROW}")


def recorded_events(s: Scenario) -> int:
    return s.db.scalar("SELECT COALESCE(sum(events), 0) FROM {rs}.trigger_event_counts")


@pytest.fixture
def s(app_db) -> Scenario:
    return Scenario(app_db)


def test_backfills_existing_events_at_install(s: Scenario):
    s.events([(1, T0, "a"), (1, T0 + timedelta(hours=2), "b"), (2, T0, "c"), (None, T0, "anon")])
    assert install_trigger(s.db) == 2
    tracked = assert_matches_recomputation(s)
    assert [(r["user_id"], r["last_event_type"], r["event_count"]) for r in tracked] == [(1, "b", 2), (2, "c", 1)]
    assert trigger_state(s.db) == "enabled"


def test_bulk_insert_select_of_many_rows(s: Scenario):
    install_trigger(s.db)
    # One INSERT ... SELECT: 3,000 rows over 50 users, many sharing a timestamp (ties broken by id),
    # plus anonymous rows.
    s.db.execute("""
        INSERT INTO events (id, user_id, event_type, occurred_at)
        SELECT g, CASE WHEN g % 17 = 0 THEN NULL ELSE g % 50 + 1 END, 'type_' || (g % 7),
               TIMESTAMPTZ '2025-03-01 00:00+00' + ((g * 7919) % 500) * interval '1 minute'
        FROM generate_series(1, 3000) AS g
    """)
    tracked = assert_matches_recomputation(s)
    assert len(tracked) == 50
    # A second bulk statement on top of existing rows, including ties with what is already tracked.
    s.db.execute("""
        INSERT INTO events (id, user_id, event_type, occurred_at)
        SELECT 10000 + g, g % 60 + 1, 'later_' || (g % 3),
               TIMESTAMPTZ '2025-03-01 00:00+00' + ((g * 31) % 700) * interval '1 minute'
        FROM generate_series(1, 1000) AS g
    """)
    assert len(assert_matches_recomputation(s)) == 60
    assert recorded_events(s) == s.db.scalar("SELECT count(*) FROM events WHERE user_id IS NOT NULL")


def test_single_inserts_and_late_events(s: Scenario):
    install_trigger(s.db)
    s.event(1, T0, "first", event_id=10)
    s.event(1, T0 + timedelta(hours=1), "second", event_id=11)
    assert assert_matches_recomputation(s)[0]["last_event_type"] == "second"
    # A late event, older than what is tracked, must not move last_activity_at backwards...
    s.event(1, T0 - timedelta(days=3), "late", event_id=12)
    row = assert_matches_recomputation(s)[0]
    assert row["last_activity_at"] == T0 + timedelta(hours=1)
    assert row["first_activity_at"] == T0 - timedelta(days=3)
    assert (row["last_event_type"], row["event_count"]) == ("second", 3)
    # ...a tie on occurred_at is won by the higher id, even when it arrives in a later statement...
    s.event(1, T0 + timedelta(hours=1), "tie_higher_id", event_id=13)
    assert assert_matches_recomputation(s)[0]["last_event_type"] == "tie_higher_id"
    # ...and lost by a lower id.
    s.event(1, T0 + timedelta(hours=1), "tie_lower_id", event_id=5)
    assert assert_matches_recomputation(s)[0]["last_event_type"] == "tie_higher_id"


def test_late_event_in_a_mixed_batch(s: Scenario):
    install_trigger(s.db)
    s.event(1, T0, "now")
    s.events([(1, T0 - timedelta(days=1), "late"), (2, T0 - timedelta(days=1), "other"), (1, T0 - timedelta(hours=1), "late2")])
    row = assert_matches_recomputation(s)[0]
    assert (row["last_event_type"], row["event_count"]) == ("now", 3)


def test_null_user_ids_are_ignored(s: Scenario):
    install_trigger(s.db)
    s.event(None, T0)
    s.events([(None, T0), (None, T0 + timedelta(minutes=1))])
    assert assert_matches_recomputation(s) == []
    s.events([(None, T0), (3, T0, "x")])
    assert [r["user_id"] for r in assert_matches_recomputation(s)] == [3]
    assert recorded_events(s) == 1


def test_install_twice_is_idempotent(s: Scenario):
    s.events([(1, T0, "a"), (2, T0, "b")])
    install_trigger(s.db)
    s.event(1, T0 + timedelta(hours=1), "c")
    assert install_trigger(s.db) == 2
    s.event(2, T0 + timedelta(hours=1), "d")
    # One trigger only: a doubled trigger would count the last insert twice.
    tracked = assert_matches_recomputation(s)
    assert [r["event_count"] for r in tracked] == [2, 2]
    assert s.db.scalar("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.events'::regclass AND NOT tgisinternal") == 1


def test_uninstall_removes_trigger_and_function(s: Scenario):
    install_trigger(s.db)
    s.event(1, T0)
    uninstall_trigger(s.db)
    assert trigger_state(s.db) == "missing"
    assert s.db.scalar("SELECT count(*) FROM pg_proc WHERE proname = 'track_user_activity'") == 0
    s.event(1, T0 + timedelta(hours=1))
    tracked = s.rows(TRACKED)
    assert [(r["user_id"], r["event_count"], r["last_activity_at"]) for r in tracked] == [(1, 1, T0)]
    uninstall_trigger(s.db)  # a second uninstall is harmless


def test_events_wait_in_the_queue_until_drained(s: Scenario):
    install_trigger(s.db)
    s.events([(1, T0, "a"), (1, T0 + timedelta(hours=1), "b"), (None, T0, "anon")])
    assert queued_events(s) == 2
    assert s.rows(TRACKED) == []
    assert drain_activity_queue(s.db) == 2
    assert drain_activity_queue(s.db) == 0
    assert [(r["last_event_type"], r["event_count"]) for r in assert_matches_recomputation(s)] == [("b", 2)]


BUCKETS_RECOMPUTED = """
SELECT date_bin('15 minutes', occurred_at, TIMESTAMPTZ '2000-01-01 00:00+00') AS bucket_start, count(*) AS events
FROM public.events WHERE user_id IS NOT NULL GROUP BY 1 ORDER BY 1
"""
BUCKETS_RECORDED = "SELECT bucket_start, events FROM {rs}.trigger_event_counts ORDER BY bucket_start"
QUEUE_ROWS = "SELECT user_id, events, single_event FROM {rs}.activity_queue ORDER BY user_id NULLS LAST, first_at"


def test_a_single_row_insert_queues_one_row_that_counts_in_its_own_bucket(s: Scenario):
    """The app's hot path appends one row (half the trigger's cost of the earlier two); a multi-row insert
    still appends a row per user and one per bucket. Both drain into the same per-bucket counts as a count
    of the events themselves."""
    install_trigger(s.db)
    s.event(1, T0 + timedelta(minutes=14), "a")
    assert [tuple(r.values()) for r in s.rows(QUEUE_ROWS)] == [(1, 1, True)]
    s.events([(1, T0 + timedelta(minutes=16), "b"), (2, T0 + timedelta(minutes=16), "c"), (2, T0, "d")])
    assert [tuple(r.values()) for r in s.rows(QUEUE_ROWS)] == [
        (1, 1, True),
        (1, 1, False),
        (2, 2, False),
        (None, 1, False),  # T0's bucket: d
        (None, 2, False),  # the next one: b and c
    ]
    assert queued_events(s) == 4
    assert drain_activity_queue(s.db) == 4
    assert s.rows(BUCKETS_RECORDED) == s.rows(BUCKETS_RECOMPUTED)
    assert [r["events"] for r in s.rows(BUCKETS_RECORDED)] == [2, 2]
    assert_matches_recomputation(s)


def test_rows_queued_by_the_previous_trigger_function_drain_as_before(s: Scenario):
    """Revision 0005 leaves the running trigger function alone until `trigger install`: that function's two
    rows per single-row insert (the user's, unmarked, and its bucket's) still count each event once."""
    install_trigger(s.db)
    s.event(1, T0, "new_function")
    old_event_at = T0 + timedelta(minutes=20)
    old_event_id = s.event(2, old_event_at, "old_function")
    # What the previous function would have queued for that insert, in place of the row the current one did.
    s.db.execute("DELETE FROM {rs}.activity_queue WHERE user_id = 2")
    s.db.execute(
        "INSERT INTO {rs}.activity_queue (user_id, first_at, last_at, last_event_id, last_event_type, events) "
        "VALUES (2, :t, :t, :id, 'old_function', 1), (NULL, :bucket, :bucket, NULL, NULL, 1)",
        {"t": old_event_at, "id": old_event_id, "bucket": T0 + timedelta(minutes=15)},
    )
    assert drain_activity_queue(s.db) == 2
    assert s.rows(BUCKETS_RECORDED) == s.rows(BUCKETS_RECOMPUTED)
    assert_matches_recomputation(s)


@pytest.mark.parametrize(
    "breakage",
    [
        "ALTER TABLE {rs}.user_activity DROP COLUMN last_event_type",
        "ALTER TABLE {rs}.user_activity RENAME COLUMN event_count TO n_events",
        "ALTER TABLE {rs}.user_activity ADD CONSTRAINT no_rows CHECK (event_count < 0) NOT VALID",
        "ALTER TABLE {rs}.user_activity RENAME TO user_activity_old",
        "ALTER TABLE {rs}.user_activity ALTER COLUMN last_event_type TYPE varchar(3)",
        "DROP TABLE {rs}.user_activity; DROP TABLE {rs}.trigger_event_counts",
    ],
    ids=["dropped_column", "renamed_column", "check_violation", "renamed_table", "too_narrow", "dropped_tables"],
)
def test_a_broken_user_activity_never_touches_the_apps_insert(s: Scenario, breakage: str):
    """The trigger only appends to the queue: whatever happens to user_activity fails the pipeline's drain
    (loudly, in a run), never the app's insert; the events wait in the queue."""
    install_trigger(s.db)
    s.event(1, T0, "abc")
    s.db.execute(breakage)
    s.event(1, T0 + timedelta(hours=1), "a_long_event_type")
    s.events([(2, T0, "a_long_event_type"), (3, T0, "a_long_event_type")])
    assert s.db.scalar("SELECT count(*) FROM events") == 4
    assert queued_events(s) == 4
    with pytest.raises(sa.exc.DBAPIError):
        drain_activity_queue(s.db)
    assert queued_events(s) == 4


def test_the_apps_transaction_commits_with_user_activity_broken(s: Scenario):
    install_trigger(s.db)
    s.db.execute("ALTER TABLE {rs}.user_activity DROP COLUMN last_event_id")
    with s.db.begin() as conn:
        conn.execute(sa.text("INSERT INTO events (id, user_id, event_type, occurred_at) VALUES (1, 1, 'a', now())"))
        conn.execute(sa.text("INSERT INTO events (id, user_id, event_type, occurred_at) VALUES (2, 1, 'b', now())"))
        conn.execute(sa.text("INSERT INTO users (id, email, created_at) VALUES (1, 'a@example.com', now())"))
    assert s.db.scalar("SELECT count(*) FROM events") == 2
    assert s.db.scalar("SELECT count(*) FROM users") == 1


def test_recovers_after_repair(s: Scenario):
    """Queued events survive a broken user_activity: once it is repaired, the next drain folds them in."""
    install_trigger(s.db)
    s.event(1, T0)
    s.db.execute("ALTER TABLE {rs}.user_activity RENAME COLUMN event_count TO n_events")
    s.event(1, T0 + timedelta(hours=1), "missed")
    with pytest.raises(sa.exc.DBAPIError):
        drain_activity_queue(s.db)
    s.db.execute("ALTER TABLE {rs}.user_activity RENAME COLUMN n_events TO event_count")
    s.event(1, T0 + timedelta(hours=2), "after")
    assert assert_matches_recomputation(s)[0]["event_count"] == 3


def test_reinstall_recomputes_after_a_disabled_trigger(s: Scenario):
    """Events inserted while the trigger was disabled are missed until `trigger install` recomputes;
    the install re-enables the trigger (CREATE OR REPLACE TRIGGER) without the table owner."""
    install_trigger(s.db)
    s.event(1, T0)
    s.db.execute(f"ALTER TABLE events DISABLE TRIGGER {TRIGGER_NAME}")
    s.event(1, T0 + timedelta(hours=1), "missed")
    drain_activity_queue(s.db)
    assert s.rows(TRACKED)[0]["event_count"] == 1
    install_trigger(s.db)
    s.event(1, T0 + timedelta(hours=2), "after")
    assert assert_matches_recomputation(s)[0]["event_count"] == 3
    assert recorded_events(s) == 3
