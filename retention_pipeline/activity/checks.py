"""Data-quality checks of the daily activity snapshots, run in the materializing transaction."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue
from sqlalchemy import text
from sqlalchemy.engine import Connection

from retention_pipeline.resources import AppDatabase

# Anonymous or foreign-key-less events are normal in small numbers (pre-login page views); a
# larger share means the events table and the users table have drifted apart.
ORPHAN_EVENT_SHARE_LIMIT = 0.05

_CHECKS_SQL = """
WITH window_rows AS (
    SELECT * FROM {rs}.daily_activity WHERE activity_date >= :start_date AND activity_date < :end_date
)
SELECT
    (SELECT count(*) - count(DISTINCT (activity_date, user_id)) FROM window_rows) AS duplicate_keys,
    (SELECT count(*) FROM window_rows
      WHERE event_count < 0 OR sessions_started < 0 OR session_minutes < 0 OR distinct_event_types < 0) AS negative_rows,
    (SELECT count(DISTINCT activity_date) FROM window_rows WHERE event_count > 0) AS days_with_activity
"""

_ORPHANS_SQL = """
SELECT count(*) AS events,
       count(*) FILTER (WHERE e.user_id IS NULL) AS null_user,
       count(*) FILTER (WHERE e.user_id IS NOT NULL AND u.id IS NULL) AS unknown_user
FROM {rs}.source_events e
LEFT JOIN {rs}.source_users u ON u.id = e.user_id
WHERE e.occurred_at >= :start_ts AND e.occurred_at < :end_ts
"""


def activity_check_results(conn: Connection, db: AppDatabase, params: dict) -> list[AssetCheckResult]:
    figures = conn.execute(text(db.render(_CHECKS_SQL)), params).mappings().one()
    orphans = conn.execute(text(db.render(_ORPHANS_SQL)), params).mappings().one()
    days = (params["end_date"] - params["start_date"]).days
    orphan_count = orphans["null_user"] + orphans["unknown_user"]
    orphan_share = orphan_count / orphans["events"] if orphans["events"] else 0.0
    return [
        AssetCheckResult(
            check_name="unique_user_days",
            passed=figures["duplicate_keys"] == 0,
            metadata={"duplicate_keys": MetadataValue.int(figures["duplicate_keys"])},
        ),
        AssetCheckResult(
            check_name="non_negative_figures",
            passed=figures["negative_rows"] == 0,
            metadata={"negative_rows": MetadataValue.int(figures["negative_rows"])},
        ),
        AssetCheckResult(
            check_name="orphan_events",
            passed=orphan_share <= ORPHAN_EVENT_SHARE_LIMIT,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "events_null_user": MetadataValue.int(orphans["null_user"]),
                "events_unknown_user": MetadataValue.int(orphans["unknown_user"]),
                "orphan_share": MetadataValue.float(round(orphan_share, 4)),
                "share_limit": MetadataValue.float(ORPHAN_EVENT_SHARE_LIMIT),
            },
        ),
        AssetCheckResult(
            check_name="not_empty",
            passed=figures["days_with_activity"] == days,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "days": MetadataValue.int(days),
                "days_with_activity": MetadataValue.int(figures["days_with_activity"]),
            },
        ),
    ]
