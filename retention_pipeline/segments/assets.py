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
from retention_pipeline.schema import install_schema
from retention_pipeline.segments.checks import dormant_check_results, dormant_check_specs, segment_check_results, segment_check_specs
from retention_pipeline.segments.config import DormancyThresholds, SegmentThresholds
from retention_pipeline.segments.sql import (
    DORMANT_PREVIEW_SQL,
    DORMANT_SUMMARY_SQL,
    DORMANT_USERS_SQL,
    MRR_AT_RISK_SQL,
    SEGMENT_DISTRIBUTION_SQL,
    WEEKLY_SEGMENTS_SQL,
)
from retention_pipeline.sql_time import partition_days, window_params

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
            # start_offset counts weeks: the default 4-week dormancy lookback, plus one week more
            # because each row also carries the previous week's segment. end_offset 0: the week itself.
            partition_mapping=TimeWindowPartitionMapping(start_offset=-5, end_offset=0),
        )
    ],
    check_specs=segment_check_specs("weekly_engagement_segments"),
)
def weekly_engagement_segments(
    context: AssetExecutionContext, config: SegmentThresholds, app_db: AppDatabase
) -> MaterializeResult:
    """Exactly one lifecycle segment per user and week (new, resurrected, declining, power, active,
    casual, dormant, churned), with the figures behind it and the previous week's segment."""
    install_schema(app_db)
    params = window_params(context.partition_time_window) | config.model_dump()
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        serialize_replacement(conn, f"{app_db.retention_schema}.weekly_segments")
        rows = conn.execute(text(app_db.render(WEEKLY_SEGMENTS_SQL)), params).rowcount
        distribution = pd.DataFrame(
            conn.execute(text(app_db.render(SEGMENT_DISTRIBUTION_SQL)), params).mappings().all(),
            columns=["week_start", "segment", "users"],
        )
        checks = segment_check_results(conn, app_db, params)
    latest_week = distribution["week_start"].max() if not distribution.empty else None
    latest = Counter(dict(distribution[distribution["week_start"] == latest_week][["segment", "users"]].values))
    total = sum(latest.values())
    metadata = {
        "rows": MetadataValue.int(rows),
        "weeks": MetadataValue.int(int(distribution["week_start"].nunique())),
        # A range run stamps one set of metadata on every week it covers: say which week it describes.
        "figures_for_week": MetadataValue.text(str(latest_week)),
        "thresholds": MetadataValue.json(config.model_dump()),
        "segment_distribution": MetadataValue.md(_distribution_markdown(latest, total, latest_week)),
        **{f"share_{name}": MetadataValue.float(round(latest[name] / total, 4) if total else 0.0) for name in SEGMENTS},
        **{f"users_{name}": MetadataValue.int(int(latest[name])) for name in SEGMENTS},
    }
    return MaterializeResult(metadata=metadata, check_results=checks)


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
            # start_offset counts days: the as-of day and the 90 days before it (lost_after_days'
            # default), the furthest back a user's last activity is looked for. end_offset 0: the as-of day.
            partition_mapping=TimeWindowPartitionMapping(start_offset=-90, end_offset=0),
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
    install_schema(app_db)
    days = partition_days(context)
    window = window_params(context.partition_time_window)
    thresholds = config.model_dump()
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        serialize_replacement(conn, f"{app_db.retention_schema}.dormant_users")
        for as_of in days:
            conn.execute(text(app_db.render(DORMANT_USERS_SQL)), _as_of_params(as_of, window["tz"], thresholds))
        summary = conn.execute(text(app_db.render(DORMANT_SUMMARY_SQL)), window).mappings().all()
        preview = conn.execute(text(app_db.render(DORMANT_PREVIEW_SQL)), {"as_of": days[-1]}).mappings().all()
        at_risk = conn.execute(text(app_db.render(MRR_AT_RISK_SQL)), {"as_of": days[-1]}).mappings().all()
        checks = dormant_check_results(conn, app_db, window)
    latest = Counter({row["reason"]: row["users"] for row in summary if row["as_of_date"] == days[-1]})
    return MaterializeResult(
        metadata={
            "as_of": MetadataValue.text(str(days[-1])),
            "days": MetadataValue.int(len(days)),
            "rows": MetadataValue.int(sum(row["users"] for row in summary)),
            "dormant_users": MetadataValue.int(sum(latest.values())),
            "dormant_inactive": MetadataValue.int(latest["inactive"]),
            "dormant_declining": MetadataValue.int(latest["declining"]),
            "targeted": MetadataValue.int(sum(row["targeted"] for row in at_risk)),
            "mrr_at_risk": MetadataValue.float(sum(row["mrr_cents"] for row in at_risk) / 100),
            **{f"mrr_at_risk_{row['subscription_status']}": MetadataValue.float(row["mrr_cents"] / 100) for row in at_risk},
            "mrr_at_risk_by_status": MetadataValue.md(_at_risk_markdown(at_risk)),
            "thresholds": MetadataValue.json(thresholds),
            "preview": MetadataValue.md(pd.DataFrame(preview).to_markdown(index=False) if preview else "_no dormant users_"),
        },
        check_results=checks,
    )


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
