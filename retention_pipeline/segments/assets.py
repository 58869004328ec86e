"""Weekly engagement segments and the daily dormant-users list."""

from collections import Counter
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from dagster import (
    AssetDep,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)
from sqlalchemy import text

from retention_pipeline.partitions import daily_partitions, weekly_partitions
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import clear_database_errors, database_retry_policy, serialize_replacement
from retention_pipeline.schema import require_current_schema
from retention_pipeline.segments.checks import (
    dormant_check_results,
    dormant_check_specs,
    segment_check_results,
    segment_check_specs,
)
from retention_pipeline.segments.config import (
    DECLARED_LOOKBACK_WEEKS,
    DECLARED_LOST_AFTER_DAYS,
    DormancyThresholds,
    SegmentThresholds,
)
from retention_pipeline.segments.sql import (
    DORMANT_PREVIEW_SQL,
    DORMANT_SUMMARY_SQL,
    DORMANT_USERS_SQL,
    MRR_AT_RISK_SQL,
    SEGMENT_DISTRIBUTION_SQL,
    WEEKLY_SEGMENTS_SQL,
)
from retention_pipeline.sql_time import partition_days, window_params
from retention_pipeline.thresholds import thresholds_metadata

SEGMENTS = ("new", "resurrected", "declining", "power", "active", "casual", "dormant", "churned")


@asset(
    group_name="segments",
    kinds={"postgres", "sql"},
    owners=["team:data"],
    partitions_def=weekly_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=database_retry_policy,
    deps=[
        AssetDep(
            "daily_activity_snapshots",
            # start_offset counts weeks: the dormancy lookback of retention.yaml (the most a run may use,
            # SegmentThresholds caps it), plus one week because each row also carries the previous
            # week's segment. end_offset 0: the week itself.
            partition_mapping=TimeWindowPartitionMapping(start_offset=-(DECLARED_LOOKBACK_WEEKS + 1), end_offset=0),
        )
    ],
    check_specs=segment_check_specs("weekly_engagement_segments"),
)
def weekly_engagement_segments(
    context: AssetExecutionContext, config: SegmentThresholds, app_db: AppDatabase
) -> MaterializeResult:
    """Exactly one lifecycle segment per user and week (new, resurrected, declining, power, active,
    casual, dormant, churned), with the figures behind it and the previous week's segment."""
    require_current_schema(app_db)
    params = window_params(context.partition_time_window) | config.model_dump()
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        serialize_replacement(conn, f"{app_db.retention_schema}.weekly_segments")
        conn.execute(text(app_db.render(WEEKLY_SEGMENTS_SQL)), params)
        distribution = pd.DataFrame(
            conn.execute(text(app_db.render(SEGMENT_DISTRIBUTION_SQL)), params).mappings().all(),
            columns=["week_start", "segment", "users"],
        )
        checks = segment_check_results(conn, app_db, params)
    # One set of figures per week, on that week's partition: a range run never stamps one week's on all.
    for week, figures in distribution.groupby("week_start"):
        context.add_asset_metadata(
            _week_metadata(Counter(dict(figures[["segment", "users"]].values)), week), partition_key=week.isoformat()
        )
    return MaterializeResult(metadata=thresholds_metadata(config, "weekly_engagement_segments"), check_results=checks)


def _week_metadata(counts: Counter, week) -> dict:
    total = sum(counts.values())
    return {
        "rows": MetadataValue.int(total),
        "segment_distribution": MetadataValue.md(_distribution_markdown(counts, total, week)),
        **{f"share_{name}": MetadataValue.float(round(counts[name] / total, 4) if total else 0.0) for name in SEGMENTS},
        **{f"users_{name}": MetadataValue.int(int(counts[name])) for name in SEGMENTS},
    }


def _distribution_markdown(latest: Counter, total: int, week) -> str:
    lines = [f"Week starting {week}" if week is not None else "No weeks", "", "| segment | users | share |", "|---|---:|---:|"]
    for name in SEGMENTS:
        share = latest[name] / total if total else 0.0
        lines.append(f"| {name} | {latest[name]} | {share:.1%} |")
    return "\n".join(lines)


@asset(
    group_name="segments",
    kinds={"postgres", "sql"},
    owners=["team:data"],
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=database_retry_policy,
    deps=[
        AssetDep(
            "daily_activity_snapshots",
            # start_offset counts days: the as-of day and the lost_after_days of retention.yaml before it
            # (the most a run may use, DormancyThresholds caps it), the furthest back a user's last
            # activity is looked for. end_offset 0: the as-of day.
            partition_mapping=TimeWindowPartitionMapping(start_offset=-DECLARED_LOST_AFTER_DAYS, end_offset=0),
        ),
        # Unpartitioned: every as-of day reads the latest snapshot, so a backfill of a past day uses
        # today's subscriptions (Stripe keeps no history we could ask for that day).
        AssetDep("stripe_subscriptions"),
    ],
    check_specs=dormant_check_specs("dormant_users"),
)
def dormant_users(context: AssetExecutionContext, config: DormancyThresholds, app_db: AppDatabase) -> MaterializeResult:
    """Users drifting away on the as-of day (the partition day): inactive for N days, or activity
    falling week over week; with their subscription, MRR at risk and what a personal email needs."""
    require_current_schema(app_db)
    days = partition_days(context)
    window = window_params(context.partition_time_window)
    thresholds = config.model_dump()
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        serialize_replacement(conn, f"{app_db.retention_schema}.dormant_users")
        for as_of in days:
            conn.execute(text(app_db.render(DORMANT_USERS_SQL)), _as_of_params(as_of, window["tz"], thresholds))
        summary = conn.execute(text(app_db.render(DORMANT_SUMMARY_SQL)), window).mappings().all()
        # Each day's figures go on that day's partition: a range run never stamps one day's on all.
        for as_of in days:
            reasons = Counter({row["reason"]: row["users"] for row in summary if row["as_of_date"] == as_of})
            context.add_asset_metadata(_day_metadata(conn, app_db, as_of, reasons), partition_key=as_of.isoformat())
        checks = dormant_check_results(conn, app_db, days[-1], thresholds)
    return MaterializeResult(metadata=thresholds_metadata(config, "dormant_users"), check_results=checks)


def _day_metadata(conn, app_db: AppDatabase, as_of: date, reasons: Counter) -> dict:
    preview = conn.execute(text(app_db.render(DORMANT_PREVIEW_SQL)), {"as_of": as_of}).mappings().all()
    at_risk = conn.execute(text(app_db.render(MRR_AT_RISK_SQL)), {"as_of": as_of}).mappings().all()
    return {
        "as_of": MetadataValue.text(str(as_of)),
        "dormant_users": MetadataValue.int(sum(reasons.values())),
        "dormant_inactive": MetadataValue.int(reasons["inactive"]),
        "dormant_declining": MetadataValue.int(reasons["declining"]),
        "targeted": MetadataValue.int(sum(row["targeted"] for row in at_risk)),
        "mrr_at_risk": MetadataValue.float(sum(row["mrr_cents"] for row in at_risk) / 100),
        **{f"mrr_at_risk_{row['subscription_status']}": MetadataValue.float(row["mrr_cents"] / 100) for row in at_risk},
        "mrr_at_risk_by_status": MetadataValue.md(_at_risk_markdown(at_risk)),
        "preview": MetadataValue.md(pd.DataFrame(preview).to_markdown(index=False) if preview else "_no dormant users_"),
    }


def _at_risk_markdown(rows) -> str:
    lines = ["| subscription | dormant users | targeted | MRR at risk | cancel at period end |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['subscription_status']} | {r['users']} | {r['targeted']} | ${r['mrr_cents'] / 100:,.2f} | {r['cancel_at_period_end']} |"
        for r in rows
    ]
    return "\n".join(lines)


def _as_of_params(as_of: date, tz: str, thresholds: dict) -> dict:
    zone = ZoneInfo(tz)
    end_of_day = datetime.combine(as_of + timedelta(days=1), time(), zone)
    lookback_start = datetime.combine(as_of - timedelta(days=thresholds["lost_after_days"]), time(), zone)
    return {"as_of": as_of, "tz": tz, "end_ts": end_of_day, "lookback_ts": lookback_start, **thresholds}
