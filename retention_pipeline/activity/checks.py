"""Data-quality checks of the daily activity snapshots, run in the materializing transaction.

They cost next to nothing next to the snapshot itself (benchmarks/: a 90-day backfill must stay within
1.2x of a bare INSERT ... SELECT): the figures come from the summary the asset computes anyway, the
orphan count from two index range counts, and uniqueness from the primary key that enforces it.
"""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue
from sqlalchemy import text
from sqlalchemy.engine import Connection

from retention_pipeline.activity.trigger import trigger_state
from retention_pipeline.resources import AppDatabase

# Anonymous or foreign-key-less events are normal in small numbers (pre-login page views); a
# larger share means the events table and the users table have drifted apart.
ORPHAN_EVENT_SHARE_LIMIT = 0.05

# A valid, immediate unique index on exactly (activity_date, user_id) (the primary key) makes a
# duplicate impossible, so counting them would be a sort of the whole window for a known zero.
_UNIQUE_KEY_ENFORCED_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    WHERE i.indrelid = CAST(:table AS regclass) AND i.indisunique AND i.indisvalid AND i.indimmediate
      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 2
      AND (SELECT array_agg(a.attname::text ORDER BY a.attname)
           FROM pg_attribute a
           WHERE a.attrelid = i.indrelid AND a.attnum IN (i.indkey[0], i.indkey[1])) = ARRAY['activity_date', 'user_id']
)
"""

# Without that guarantee (someone dropped the key), count them.
_DUPLICATES_SQL = """
SELECT count(*) - count(DISTINCT (activity_date, user_id)) AS duplicate_keys
FROM {rs}.daily_activity WHERE activity_date >= :start_date AND activity_date < :end_date
"""

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
       (SELECT COALESCE(sum(q.events), 0) FROM {rs}.activity_queue q
        WHERE q.user_id IS NULL AND q.first_at >= :start_ts AND q.first_at < :end_ts) AS trigger_queued
"""


_TRIGGER_REMEDY = ("user_activity misses events: the trigger on events is missing or disabled, or was. "
                   "Run `retention-pipeline trigger install` as the retention role (recomputes user_activity).")


def activity_check_results(conn: Connection, db: AppDatabase, params: dict, summary) -> list[AssetCheckResult]:
    """`summary`: the window's rows of SUMMARY_SQL (per day: users, active_users, events, sessions, negative_rows)."""
    table = db.render("{rs}.daily_activity")
    if conn.execute(text(_UNIQUE_KEY_ENFORCED_SQL), {"table": table}).scalar():
        duplicate_keys, enforced_by = 0, "primary key (activity_date, user_id)"
    else:
        duplicate_keys, enforced_by = conn.execute(text(db.render(_DUPLICATES_SQL)), params).scalar(), "counted"
    counts = conn.execute(text(db.render(_EVENT_COUNTS_SQL)), params).mappings().one()
    counted = sum(int(row["events"] or 0) for row in summary)
    negative_rows = sum(int(row["negative_rows"]) for row in summary)
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
    return [
        AssetCheckResult(
            check_name="unique_user_days",
            passed=duplicate_keys == 0,
            metadata={"duplicate_keys": MetadataValue.int(duplicate_keys), "enforced_by": MetadataValue.text(enforced_by)},
        ),
        AssetCheckResult(
            check_name="non_negative_figures",
            passed=negative_rows == 0,
            metadata={"negative_rows": MetadataValue.int(negative_rows)},
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
