"""Data-quality checks of the daily activity snapshots, run in the materializing transaction.

They cost next to nothing next to the snapshot itself (benchmarks/: a 90-day backfill must stay within
1.2x of a bare INSERT ... SELECT): the figures come from the summary the asset computes anyway, the
orphan count from two index range counts, the trailing median from eight days of the snapshot table.
Uniqueness and non-negative figures are not checked: the primary key and CHECK constraints enforce them.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue
from sqlalchemy import text
from sqlalchemy.engine import Connection

from retention_pipeline.activity.trigger import QUEUED_COUNT_ROW, trigger_state
from retention_pipeline.resources import AppDatabase

# Anonymous or foreign-key-less events are normal in small numbers (pre-login page views); a
# larger share means the events table and the users table have drifted apart.
ORPHAN_EVENT_SHARE_LIMIT = 0.05

# The day's events against the median of the 7 days before it. A day without snapshot rows counts as 0
# events, so without history the median is 0 and there is nothing to compare with.
_TRAILING_EVENTS_SQL = """
WITH before AS (
    SELECT d::date AS day FROM generate_series(CAST(:day AS date) - 7, CAST(:day AS date) - 1, interval '1 day') AS d
), per_day AS (
    SELECT b.day, COALESCE(sum(a.event_count), 0) AS events
    FROM before b LEFT JOIN {rs}.daily_activity a ON a.activity_date = b.day GROUP BY b.day
)
SELECT (SELECT COALESCE(sum(event_count), 0) FROM {rs}.daily_activity WHERE activity_date = :day) AS events,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY events) FROM per_day) AS median
"""


def trailing_events(conn: Connection, db: AppDatabase, day) -> tuple[int, float]:
    """(events on `day`, median events per day over the 7 days before it), from the snapshot table."""
    row = conn.execute(text(db.render(_TRAILING_EVENTS_SQL)), {"day": day}).one()
    return int(row.events), float(row.median)


def events_look_ingested(events: int, median: float, min_share: float) -> bool:
    """No baseline (median 0) cannot be judged; otherwise the day needs min_share of the median (so 0 fails)."""
    return median == 0 or (events > 0 and events >= min_share * median)


# One statement, so one snapshot: an event the app commits meanwhile is in both the events and the queue,
# or in neither (the trigger's row is part of the app's transaction).
# Events in the window, those without a user, and those before their user's sign-up: range counts on
# the events indexes. Events of unknown users are the rest minus those the snapshot counted (it counts
# exactly the known users'). Only users who signed up after the window started can have an event in it
# before signing up, so those few are looked up one by one through (user_id, occurred_at).
_EVENT_COUNTS_SQL = """
SELECT (SELECT count(*) FROM {rs}.source_events e
        WHERE e.occurred_at >= :start_ts AND e.occurred_at < :end_ts) AS events,
       (SELECT count(*) FROM {rs}.source_events e
        WHERE e.user_id IS NULL AND e.occurred_at >= :start_ts AND e.occurred_at < :end_ts) AS null_user,
       (SELECT COALESCE(sum(early.events), 0)
        FROM {rs}.source_users u
        CROSS JOIN LATERAL (
            SELECT count(*) AS events FROM {rs}.source_events e
            WHERE e.user_id = u.id AND e.occurred_at >= :start_ts AND e.occurred_at < LEAST(:end_ts, u.created_at)
        ) early
        WHERE u.created_at > :start_ts) AS before_signup,
       (SELECT COALESCE(sum(c.events), 0) FROM {rs}.trigger_event_counts c
        WHERE c.bucket_start >= :start_ts AND c.bucket_start < :end_ts) AS trigger_drained,
       (SELECT COALESCE(sum(events), 0) FROM {rs}.activity_queue
        WHERE QUEUED_COUNT_ROW AND first_at >= :start_ts AND first_at < :end_ts) AS trigger_queued
""".replace("QUEUED_COUNT_ROW", QUEUED_COUNT_ROW)


_TRIGGER_REMEDY = (
    "user_activity misses events: the trigger on events is missing or disabled, or was. "
    "Run `retention-pipeline trigger install` as the retention role (recomputes user_activity)."
)


def activity_check_results(
    conn: Connection, db: AppDatabase, params: dict, summary, min_events_share: float
) -> list[AssetCheckResult]:
    """`summary`: the window's rows of SUMMARY_SQL (per day: users, active_users, events, sessions)."""
    counts = conn.execute(text(db.render(_EVENT_COUNTS_SQL)), params).mappings().one()
    counted = sum(int(row["events"] or 0) for row in summary)
    days_with_activity = sum(1 for row in summary if row["active_users"] > 0)
    days = (params["end_date"] - params["start_date"]).days
    null_user = counts["null_user"]
    state = trigger_state(db)
    with_user = counts["events"] - null_user
    recorded = int(counts["trigger_drained"]) + int(counts["trigger_queued"])
    not_recorded = max(with_user - recorded, 0)
    unknown_user = counts["events"] - null_user - counted
    orphan_count = null_user + unknown_user
    orphan_share = orphan_count / counts["events"] if counts["events"] else 0.0
    last_day = params["end_date"] - timedelta(days=1)
    events, median = trailing_events(conn, db, last_day)
    ingested = events_look_ingested(events, median, min_events_share)
    return [
        AssetCheckResult(
            check_name="events_vs_trailing_median",
            passed=ingested,
            description=None
            if ingested
            else (f"{last_day}: {events} events, below {min_events_share:.0%} of the trailing 7-day median {median:g}"),
            metadata={
                "day": MetadataValue.text(str(last_day)),
                "events": MetadataValue.int(events),
                "trailing_median_events": MetadataValue.float(median),
                "min_share": MetadataValue.float(min_events_share),
            },
        ),
        AssetCheckResult(
            check_name="orphan_events",
            passed=orphan_share <= ORPHAN_EVENT_SHARE_LIMIT,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "events_null_user": MetadataValue.int(null_user),
                "events_unknown_user": MetadataValue.int(unknown_user),
                # Kept (activity is activity) but shown: many of them mean clock skew or reused user ids.
                "events_before_signup": MetadataValue.int(int(counts["before_signup"])),
                "orphan_share": MetadataValue.float(round(orphan_share, 4)),
                "share_limit": MetadataValue.float(ORPHAN_EVENT_SHARE_LIMIT),
            },
        ),
        AssetCheckResult(
            check_name="trigger_health",
            passed=state == "enabled" and not_recorded == 0,
            description=None if state == "enabled" and not_recorded == 0 else _TRIGGER_REMEDY,
            metadata={
                "trigger": MetadataValue.text(state),
                "events_with_user": MetadataValue.int(with_user),
                "events_recorded_by_trigger": MetadataValue.int(recorded),
                "events_not_recorded": MetadataValue.int(not_recorded),
            },
        ),
        AssetCheckResult(
            check_name="not_empty",
            passed=days_with_activity == days,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "days": MetadataValue.int(days),
                "days_with_activity": MetadataValue.int(days_with_activity),
            },
        ),
    ]
