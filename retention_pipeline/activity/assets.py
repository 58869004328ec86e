"""Daily per-user activity snapshots, computed in PostgreSQL from the app's events and sessions."""

import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetMaterialization,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    TimeWindow,
    asset,
)
from sqlalchemy import text

from retention_pipeline.activity.checks import activity_check_results
from retention_pipeline.activity.config import SnapshotConfig
from retention_pipeline.activity.trigger import drain_activity_queue
from retention_pipeline.partitions import daily_partitions
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import clear_database_errors, database_retry_policy, serialize_replacement
from retention_pipeline.schema import require_current_schema
from retention_pipeline.settings import PROJECT_TIMEZONE
from retention_pipeline.sql_time import partition_days, window_chunks, window_params
from retention_pipeline.thresholds import thresholds_metadata

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
# (days without activity, events counted) come from this one pass, not scans of their own.
SUMMARY_SQL = """
SELECT activity_date, count(*) AS users, count(*) FILTER (WHERE event_count > 0) AS active_users,
       sum(event_count) AS events, sum(sessions_started) AS sessions
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
        # ERROR but not blocking: the day's analytics still go on; dormant_users' blocking
        # activity_ingested check is what keeps the emails from going out on such a day.
        AssetCheckSpec(
            "events_vs_trailing_median",
            asset="daily_activity_snapshots",
            description="The run's last day has events, at least min_events_share_of_median of the median "
            "of the 7 days before (fails on an ingestion break).",
        ),
        AssetCheckSpec(
            "orphan_events",
            asset="daily_activity_snapshots",
            description="Events in the window whose user_id is NULL or unknown: counted, not dropped silently (warns).",
        ),
        AssetCheckSpec(
            "trigger_health",
            asset="daily_activity_snapshots",
            description="The events trigger is installed and enabled, and every event of the window "
            "with a user id reached user_activity through it (fails otherwise).",
        ),
        AssetCheckSpec(
            "not_empty",
            asset="daily_activity_snapshots",
            description="Every day of the window has at least one active user (warns on an empty day).",
        ),
    ],
)
def daily_activity_snapshots(context: AssetExecutionContext, config: SnapshotConfig, app_db: AppDatabase) -> MaterializeResult:
    """One row per user and day with any event or auth session: counts, event types, session minutes.

    Written to `retention.daily_activity`. A run replaces its partitions and the trailing_days - 1 days
    before them in one transaction, so events that arrived late since are counted."""
    require_current_schema(app_db)
    drained = drain_activity_queue(app_db)
    run_days = partition_days(context)
    # The daily run (one partition) also recomputes the days before it, for late events; a range run (a
    # backfill) recomputes exactly the range it was asked for, so the UI's backfill counts stay true.
    trailing_days = config.trailing_days if len(run_days) == 1 else 1
    window = _with_trailing_days(context.partition_time_window, trailing_days)
    params = window_params(window)
    started = time.perf_counter()
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        serialize_replacement(conn, f"{app_db.retention_schema}.daily_activity")
        conn.execute(text(app_db.render(DELETE_SQL)), params)
        for chunk in window_chunks(window, DAYS_PER_STATEMENT):
            conn.execute(text(app_db.render(SNAPSHOT_SQL)), chunk)
        summary = conn.execute(text(app_db.render(SUMMARY_SQL)), params).mappings().all()
        checks = activity_check_results(conn, app_db, params, summary, config.min_events_share_of_median)
    sql_seconds = time.perf_counter() - started  # the whole transaction, commit included (benchmarks/ compare it)
    thresholds = thresholds_metadata(config, "daily_activity_snapshots")
    _record_day_figures(context, summary, run_days, params, thresholds)
    # The run's own timing, on its last partition only: on every partition it would plot as a daily figure.
    context.add_asset_metadata(
        {"sql_seconds": MetadataValue.float(round(sql_seconds, 3))}, partition_key=run_days[-1].isoformat()
    )
    return MaterializeResult(
        metadata={
            "trigger_events_drained": MetadataValue.int(drained),
            "window": MetadataValue.text(f"{params['start_date']} .. {params['end_date']} (end exclusive, {params['tz']})"),
            "preview": MetadataValue.md(_summary_markdown(summary)),
            **thresholds,
        },
        check_results=checks,
    )


def _with_trailing_days(window: TimeWindow, trailing_days: int) -> TimeWindow:
    """The run's window, started trailing_days - 1 days earlier (never before the first partition)."""
    zone = ZoneInfo(PROJECT_TIMEZONE)
    first_day = window_params(window)["start_date"] - timedelta(days=trailing_days - 1)
    first_partition = date.fromisoformat(daily_partitions.get_first_partition_key())
    start = datetime.combine(max(first_day, first_partition), datetime.min.time(), zone)
    return TimeWindow(min(start, window.start), window.end)


def _record_day_figures(context: AssetExecutionContext, summary, run_days: list[date], params: dict, thresholds: dict) -> None:
    """Each recomputed day's own figures on its own partition. Days of the trailing window outside the
    run get a materialization of their own: they were rewritten, and the UI should say so."""
    by_day = {row["activity_date"]: row for row in summary}
    day = params["start_date"]
    while day < params["end_date"]:
        row = by_day.get(day, {})
        figures = {
            "rows": MetadataValue.int(int(row.get("users", 0))),
            "active_users": MetadataValue.int(int(row.get("active_users", 0))),
            "events": MetadataValue.int(int(row.get("events") or 0)),
            "sessions": MetadataValue.int(int(row.get("sessions") or 0)),
        }
        if day in run_days:
            context.add_asset_metadata(figures, partition_key=day.isoformat())
        else:
            context.log_event(
                AssetMaterialization(
                    asset_key=context.asset_key,
                    partition=day.isoformat(),
                    description=f"Recomputed by the run of {run_days[-1]} (trailing window): late events counted.",
                    metadata=figures | thresholds | {"recomputed_by_partition": MetadataValue.text(run_days[-1].isoformat())},
                )
            )
        day += timedelta(days=1)


def _summary_markdown(summary) -> str:
    lines = ["| day | users | active | events | sessions |", "|---|---:|---:|---:|---:|"]
    shown = list(summary)[-14:]
    lines += [f"| {r['activity_date']} | {r['users']} | {r['active_users']} | {r['events']} | {r['sessions']} |" for r in shown]
    if len(summary) > len(shown):
        lines.append(f"\n_last {len(shown)} of {len(summary)} days shown_")
    return "\n".join(lines)
