"""Did the emails bring people back who would not have come back anyway? Outcomes against the holdout."""

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from dagster import (
    AssetExecutionContext,
    BackfillPolicy,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field
from sqlalchemy import text

from retention_pipeline.outcomes.comparisons import INTERVAL_TEXT, performance_rows, revenue_rows, sums_by_group
from retention_pipeline.outcomes.format import lift_text, percent
from retention_pipeline.outcomes.sql import (
    EVALUATE_OUTCOMES_SQL,
    INSERT_PERFORMANCE_SQL,
    INSERT_REVENUE_SQL,
    OUTCOME_SUMMARY_SQL,
    PERFORMANCE_COUNTS_SQL,
    REPLACE_PERFORMANCE_SQL,
    REPLACE_REVENUE_SQL,
    REVENUE_KEPT_SQL,
    USER_SUMS_SQL,
)
from retention_pipeline.partitions import daily_partitions
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import clear_database_errors, database_retry_policy
from retention_pipeline.schema import require_current_schema
from retention_pipeline.settings import PROJECT_TIMEZONE
from retention_pipeline.sql_time import partition_days


class OutcomeConfig(Config):
    """Attribution windows of re-engagement outcomes."""

    windows: list[int] = Field(default=[1, 7, 14], min_length=1, description="Days after the send in which a return counts.")


class PerformanceConfig(Config):
    """What campaign performance reports besides return rates."""

    revenue_horizons: list[int] = Field(
        default=[30, 60],
        min_length=1,
        description="Days after assignment at which a paying user's subscription must still run to count as revenue kept.",
    )


def _end_of(day) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(), ZoneInfo(PROJECT_TIMEZONE))


@asset(
    group_name="outcomes",
    kinds={"postgres", "sql"},
    owners=["team:growth"],
    partitions_def=daily_partitions,
    # A range is evaluated day by day, oldest first, each day with its own figures on its own partition.
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=database_retry_policy,
    deps=["reengagement_emails"],
)
def reengagement_outcomes(context: AssetExecutionContext, config: OutcomeConfig, app_db: AppDatabase) -> MaterializeResult:
    """Per sent email and holdout member and attribution window: did the user come back, when, how much;
    final once the window has closed (as of the partition day), re-evaluated daily until then."""
    require_current_schema(app_db)
    for as_of in partition_days(context):
        context.add_asset_metadata(_outcomes_as_of(app_db, config, as_of), partition_key=as_of.isoformat())
    return MaterializeResult()


def _outcomes_as_of(app_db: AppDatabase, config: OutcomeConfig, as_of) -> dict:
    """Evaluate every ledger entry as of the end of `as_of`, in one transaction; that day's figures."""
    params = {"as_of": as_of, "end_ts": _end_of(as_of), "windows": sorted(set(config.windows)), "tz": PROJECT_TIMEZONE}
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        evaluated = conn.execute(text(app_db.render(EVALUATE_OUTCOMES_SQL)), params).rowcount
        summary = pd.DataFrame(
            conn.execute(text(app_db.render(OUTCOME_SUMMARY_SQL)), params).mappings().all(),
            columns=["window_days", "final_rows", "open_rows", "treated", "treated_returned", "holdout", "holdout_returned"],
        )
    metadata = {
        "as_of": MetadataValue.text(as_of.isoformat()),
        "rows_evaluated": MetadataValue.int(evaluated),
        "final_rows": MetadataValue.int(int(summary["final_rows"].sum())),
        "open_rows": MetadataValue.int(int(summary["open_rows"].sum())),
        "windows": MetadataValue.json(params["windows"]),
        "summary": MetadataValue.md(summary.to_markdown(index=False) if not summary.empty else "_no sends yet_"),
    }
    for row in summary.itertuples():
        if row.treated:
            rate = row.treated_returned / row.treated
            metadata[f"return_rate_treated_{row.window_days}d"] = MetadataValue.float(rate)
            metadata[f"return_rate_treated_{row.window_days}d_text"] = MetadataValue.text(percent(rate))
        if row.holdout:
            rate = row.holdout_returned / row.holdout
            metadata[f"return_rate_holdout_{row.window_days}d"] = MetadataValue.float(rate)
            metadata[f"return_rate_holdout_{row.window_days}d_text"] = MetadataValue.text(percent(rate))
    return metadata


@asset(
    group_name="outcomes",
    kinds={"postgres", "python"},
    owners=["team:growth"],
    partitions_def=daily_partitions,
    backfill_policy=BackfillPolicy.single_run(),
    retry_policy=database_retry_policy,
    deps=["reengagement_outcomes"],
)
def campaign_performance(context: AssetExecutionContext, config: PerformanceConfig, app_db: AppDatabase) -> MaterializeResult:
    """Per campaign, step, variant, segment and window: treated vs holdout return rates as assigned (failed
    sends stay treated), lift with a 95% interval and p-value clustered by user, recovered MRR, and the
    per-protocol lift (delivered only) as a secondary figure; closed windows only, as of the partition day.
    Per campaign and step: revenue kept against the holdout (`retention.campaign_revenue`)."""
    require_current_schema(app_db)
    for as_of in partition_days(context):
        context.add_asset_metadata(_performance_as_of(app_db, config, as_of), partition_key=as_of.isoformat())
    return MaterializeResult()


def _performance_as_of(app_db: AppDatabase, config: PerformanceConfig, as_of) -> dict:
    """Replace one as-of day's rows of campaign_performance, in one transaction; that day's figures."""
    with clear_database_errors(app_db.statement_timeout_seconds), app_db.begin() as conn:
        counts = pd.DataFrame(
            conn.execute(text(app_db.render(PERFORMANCE_COUNTS_SQL)), {"end_ts": _end_of(as_of), "tz": PROJECT_TIMEZONE})
            .mappings()
            .all(),
            columns=[
                "campaign",
                "step",
                "variant",
                "segment",
                "window_days",
                "treated",
                "day",
                "users",
                "returned",
                "recovered_mrr_cents",
                "delivered_users",
                "delivered_returned",
            ],
        )
        user_sums = conn.execute(text(app_db.render(USER_SUMS_SQL)), {"end_ts": _end_of(as_of)}).mappings().all()
        rows = performance_rows(counts, as_of, sums_by_group(user_sums))
        conn.execute(text(app_db.render(REPLACE_PERFORMANCE_SQL)), {"as_of": as_of})
        if rows:
            conn.execute(text(app_db.render(INSERT_PERFORMANCE_SQL)), rows)
        kept = pd.DataFrame(
            conn.execute(
                text(app_db.render(REVENUE_KEPT_SQL)),
                {"as_of": as_of, "horizons": sorted(set(config.revenue_horizons)), "tz": PROJECT_TIMEZONE},
            )
            .mappings()
            .all(),
            columns=[
                "campaign",
                "step",
                "horizon_days",
                "treated",
                "users",
                "kept",
                "mrr_cents",
                "awaiting",
                "clusters",
                "rows_squared",
                "kept_squared",
                "kept_times_rows",
            ],
        )
        revenue = revenue_rows(kept, as_of)
        conn.execute(text(app_db.render(REPLACE_REVENUE_SQL)), {"as_of": as_of})
        if revenue:
            conn.execute(text(app_db.render(INSERT_REVENUE_SQL)), revenue)
    table = pd.DataFrame(rows)
    metadata = {
        "as_of": MetadataValue.text(as_of.isoformat()),
        "rows": MetadataValue.int(len(rows)),
        "interval": MetadataValue.text(INTERVAL_TEXT),
    }
    metadata |= _revenue_metadata(revenue)
    if not table.empty:
        headline = table[(table["variant"] == "all") & (table["segment"] == "all")].sort_values(
            ["campaign", "step", "window_days"]
        )
        for r in headline.itertuples():
            key = f"{r.campaign}_step{r.step}_{r.window_days}d"
            if r.lift is not None and pd.notna(r.lift):
                metadata[f"lift_{key}"] = MetadataValue.float(float(r.lift))
                metadata[f"lift_{key}_text"] = MetadataValue.text(lift_text(r.lift, r.lift_ci_low, r.lift_ci_high))
                metadata[f"design_effect_{key}"] = MetadataValue.json(
                    {"treated": round(r.design_effect_treated, 4), "holdout": round(r.design_effect_holdout, 4)}
                )
            if r.treated_rate is not None and pd.notna(r.treated_rate):
                metadata[f"return_rate_{key}"] = MetadataValue.float(float(r.treated_rate))
                metadata[f"return_rate_{key}_text"] = MetadataValue.text(percent(r.treated_rate))
            if r.per_protocol_lift is not None and pd.notna(r.per_protocol_lift):
                metadata[f"per_protocol_lift_{key}"] = MetadataValue.float(float(r.per_protocol_lift))
        metadata["latest"] = MetadataValue.md(_performance_markdown(table))
    return metadata


def _revenue_metadata(revenue: list[dict]) -> dict:
    if not revenue:
        return {}
    metadata = {}
    lines = [
        "| campaign | step | horizon | treated kept | holdout kept | MRR at risk | incremental MRR (95% CI) | awaiting |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in revenue:
        treated = f"{r['treated_kept']}/{r['treated']}"
        holdout = f"{r['holdout_kept']}/{r['holdout']}"
        if r["incremental_mrr_cents"] is None:
            kept = "n/a (no holdout or no treated to compare)"
        else:
            metadata[f"incremental_mrr_{r['campaign']}_step{r['step']}_{r['horizon_days']}d"] = MetadataValue.float(
                r["incremental_mrr_cents"] / 100
            )
            kept = (
                f"${r['incremental_mrr_cents'] / 100:,.2f} (${r['incremental_mrr_ci_low_cents'] / 100:,.2f} .. "
                f"${r['incremental_mrr_ci_high_cents'] / 100:,.2f})"
            )
        lines.append(
            f"| {r['campaign']} | {r['step']} | {r['horizon_days']}d | {treated} | {holdout} | "
            f"${r['mrr_at_risk_cents'] / 100:,.2f} | {kept} | {r['awaiting']} |"
        )
    metadata["revenue_kept"] = MetadataValue.md("\n".join(lines))
    return metadata


def _lift_cell(value, low, high) -> str:
    # A lift without variance (every day's rates at 0% or 100%) has a value but no interval.
    if value is None or pd.isna(value):
        return "n/a"
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{value:+.1%} (no interval)"
    return f"{value:+.1%} ({low:+.1%} .. {high:+.1%})"


def _performance_markdown(table: pd.DataFrame) -> str:
    shown = table[table["segment"] == "all"].sort_values(["campaign", "step", "variant", "window_days"])
    lines = [
        "| campaign | step | variant | window | treated | holdout | treated rate | holdout rate | lift (95% CI) | p "
        "| lift within days (95% CI) | recovered MRR | per-protocol lift (delivered only) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for r in shown.itertuples():
        interval = f"{r.lift:+.1%} ({r.lift_ci_low:+.1%} .. {r.lift_ci_high:+.1%})" if pd.notna(r.lift) else "n/a"
        adjusted = _lift_cell(r.adjusted_lift, r.adjusted_ci_low, r.adjusted_ci_high)
        holdout_rate = f"{r.holdout_rate:.1%}" if pd.notna(r.holdout_rate) else "n/a"
        p_value = f"{r.p_value:.3f}" if pd.notna(r.p_value) else "n/a"
        per_protocol = f"{r.per_protocol_lift:+.1%}" if pd.notna(r.per_protocol_lift) else "n/a"
        lines.append(
            f"| {r.campaign} | {r.step} | {r.variant} | {r.window_days}d | {r.treated} | {r.holdout} | "
            f"{r.treated_rate:.1%} | {holdout_rate} | {interval} | {p_value} | {adjusted} | ${r.recovered_mrr_cents / 100:,.2f} "
            f"| {per_protocol} |"
        )
    return "\n".join(lines)
