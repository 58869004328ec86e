"""Daily per-user activity snapshots, computed in PostgreSQL from the app's events and sessions."""

import time

from sqlalchemy import text
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from retention_pipeline.activity.checks import activity_check_results
from retention_pipeline.activity.trigger import drain_activity_queue
from retention_pipeline.partitions import daily_partitions
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import clear_database_errors, database_retry_policy, serialize_replacement
from retention_pipeline.schema import install_schema
from retention_pipeline.sql_time import window_chunks, window_params

# A long window is written a week per statement, all in one transaction: each statement's hash
# aggregation stays within work_mem and under the statement timeout however long the backfill (at
# 1,000,000 users one 90-day statement ran past the default 600 s; benchmarks/results/).
DAYS_PER_STATEMENT = 7

# Days are local days in the project timezone, so a DST day has 23 or 25 hours.
DELETE_SQL = "DELETE FROM {rs}.daily_activity WHERE activity_date >= :start_date AND activity_date < :end_date"
SNAPSHOT_SQL = """
INSERT INTO {rs}.daily_activity (activity_date, user_id, event_count, distinct_event_types,
    sessions_started, session_minutes, first_event_at, last_event_at, top_event_type)
WITH events_by_day AS (
    SELECT (e.occurred_at AT TIME ZONE :tz)::date AS activity_date, e.user_id,
           count(*) AS event_count,
           count(DISTINCT e.event_type) AS distinct_event_types,
           min(e.occurred_at) AS first_event_at,
           max(e.occurred_at) AS last_event_at,
           mode() WITHIN GROUP (ORDER BY e.event_type) AS top_event_type
    FROM {rs}.source_events e
    JOIN {rs}.source_users u ON u.id = e.user_id
    WHERE e.occurred_at >= :start_ts AND e.occurred_at < :end_ts
    GROUP BY 1, 2
), sessions_by_day AS (
    SELECT (s.started_at AT TIME ZONE :tz)::date AS activity_date, s.user_id,
           count(*) AS sessions_started,
           sum(GREATEST(extract(epoch FROM (COALESCE(s.last_seen_at, s.started_at) - s.started_at)), 0)) / 60.0
               AS session_minutes
    FROM {rs}.source_auth_sessions s
    JOIN {rs}.source_users u ON u.id = s.user_id
    WHERE s.started_at >= :start_ts AND s.started_at < :end_ts
    GROUP BY 1, 2
)
SELECT activity_date, user_id,
       COALESCE(e.event_count, 0), COALESCE(e.distinct_event_types, 0),
       COALESCE(s.sessions_started, 0), round(COALESCE(s.session_minutes, 0), 2),
       e.first_event_at, e.last_event_at, e.top_event_type
FROM events_by_day e
FULL JOIN sessions_by_day s USING (activity_date, user_id);
"""

# The window's figures per day, read back in the same transaction: the metadata and the checks
# (negative figures, days without activity, events counted) come from this one pass, not scans of their own.
SUMMARY_SQL = """
SELECT activity_date, count(*) AS users, count(*) FILTER (WHERE event_count > 0) AS active_users,
       sum(event_count) AS events, sum(sessions_started) AS sessions,
       count(*) FILTER (WHERE event_count < 0 OR sessions_started < 0 OR session_minutes < 0
                          OR distinct_event_types < 0) AS negative_rows
FROM {rs}.daily_activity
WHERE activity_date >= :start_date AND activity_date < :end_date
GROUP BY activity_date ORDER BY activity_date
"""


@asset(
    group_name="activity",
    kinds={"postgres", "sql"},
    owners=["team:data"],
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=database_retry_policy,
    check_specs=[
        AssetCheckSpec("unique_user_days", asset="daily_activity_snapshots",
                       description="At most one row per (day, user) in the materialized window."),
        AssetCheckSpec("non_negative_figures", asset="daily_activity_snapshots",
                       description="Event counts, sessions and session minutes are never negative."),
        AssetCheckSpec("orphan_events", asset="daily_activity_snapshots",
                       description="Events in the window whose user_id is NULL or unknown: counted, not dropped silently (warns)."),
        AssetCheckSpec("trigger_health", asset="daily_activity_snapshots",
                       description="The events trigger is installed and enabled, and every event of the window "
                                   "with a user id reached user_activity through it (fails otherwise)."),
        AssetCheckSpec("not_empty", asset="daily_activity_snapshots",
                       description="Every day of the window has at least one active user (warns on an empty day)."),
    ],
)
def daily_activity_snapshots(context: AssetExecutionContext, app_db: AppDatabase) -> MaterializeResult:
    """One row per user and day with any event or auth session: counts, event types, session minutes.

    Written to `retention.daily_activity`; a partition or range is replaced in one transaction."""
    install_schema(app_db)
    drained = drain_activity_queue(app_db)
    params = window_params(context.partition_time_window)
    started = time.perf_counter()
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        serialize_replacement(conn, f"{app_db.retention_schema}.daily_activity")
        conn.execute(text(app_db.render(DELETE_SQL)), params)
        rows_written = sum(conn.execute(text(app_db.render(SNAPSHOT_SQL)), chunk).rowcount
                           for chunk in window_chunks(context.partition_time_window, DAYS_PER_STATEMENT))
        summary = conn.execute(text(app_db.render(SUMMARY_SQL)), params).mappings().all()
        checks = activity_check_results(conn, app_db, params, summary)
    sql_seconds = time.perf_counter() - started  # the whole transaction, commit included (benchmarks/ compare it)
    days = (params["end_date"] - params["start_date"]).days
    total_active = sum(row["active_users"] for row in summary)
    return MaterializeResult(
        metadata={
            "rows": MetadataValue.int(rows_written),
            "days": MetadataValue.int(days),
            "active_users_per_day": MetadataValue.float(total_active / days if days else 0.0),
            "events": MetadataValue.int(int(sum(row["events"] for row in summary))),
            "sql_seconds": MetadataValue.float(round(sql_seconds, 3)),
            "trigger_events_drained": MetadataValue.int(drained),
            "window": MetadataValue.text(f"{params['start_date']} .. {params['end_date']} (end exclusive, {params['tz']})"),
            "preview": MetadataValue.md(_summary_markdown(summary)),
        },
        check_results=checks,
    )


def _summary_markdown(summary) -> str:
    lines = ["| day | users | active | events | sessions |", "|---|---:|---:|---:|---:|"]
    shown = list(summary)[-14:]
    lines += [
        f"| {r['activity_date']} | {r['users']} | {r['active_users']} | {r['events']} | {r['sessions']} |" for r in shown
    ]
    if len(summary) > len(shown):
        lines.append(f"\n_last {len(shown)} of {len(summary)} days shown_")
    return "\n".join(lines)
