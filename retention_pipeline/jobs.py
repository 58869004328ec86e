"""The two jobs of the loop and the schedules that run them every morning."""

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    TimeWindowPartitionsDefinition,
    define_asset_job,
    partition_loading_context,
    schedule,
)

from retention_pipeline.partitions import daily_partitions, weekly_partitions
from retention_pipeline.settings import PROJECT_TIMEZONE, cron_from_env
from retention_pipeline.thresholds import run_config

MORNING_CRON = cron_from_env("RETENTION_MORNING_CRON")

# Half an hour before the default morning run, so dormant_users reads a fresh subscription snapshot.
BILLING_CRON = cron_from_env("RETENTION_BILLING_CRON")

# An hour after the default morning run, so Sunday's snapshot exists when Monday computes the week.
WEEKLY_CRON = cron_from_env("RETENTION_WEEKLY_CRON")

DAILY_ASSETS = AssetSelection.assets(
    "daily_activity_snapshots", "dormant_users", "reengagement_emails", "reengagement_outcomes", "campaign_performance"
)

daily_retention_job = define_asset_job(
    name="daily_retention_job",
    description="Yesterday's activity snapshot (and the days before it, for late events), dormant users and "
    "everything downstream of them; dormant_users' blocking checks gate the emails.",
    selection=DAILY_ASSETS,
    partitions_def=daily_partitions,
)

# Unpartitioned and kept out of the daily job, so a backfill of past days never calls Stripe.
billing_snapshot_job = define_asset_job(
    name="billing_snapshot_job",
    description="A fresh snapshot of every Stripe subscription.",
    selection=AssetSelection.assets("stripe_subscriptions"),
)

weekly_segments_job = define_asset_job(
    name="weekly_segments_job",
    description="The engagement segments of the last complete week.",
    selection=AssetSelection.assets("weekly_engagement_segments"),
    partitions_def=weekly_partitions,
)


def _latest_complete_partition_request(
    context: ScheduleEvaluationContext, partitions: TimeWindowPartitionsDefinition, thresholds: dict
):
    """Request the latest partition that has ended by the tick (yesterday at 09:00, last week on Monday),
    with the thresholds file as its run config, so the run's config page shows what it used."""
    # The tick's time, not the wall clock: a caught-up or late tick still asks for its own partition.
    with partition_loading_context(effective_dt=context.scheduled_execution_time):
        partition_key = partitions.get_last_partition_key()
    if partition_key is None:
        return SkipReason("No partition has ended yet.")
    return RunRequest(run_key=partition_key, partition_key=partition_key, run_config=thresholds)


# Missed ticks (daemon down over a morning) are caught up: dagster.yaml sets schedules.max_catchup_runs.
@schedule(
    name="daily_morning_schedule",
    job=daily_retention_job,
    cron_schedule=MORNING_CRON,
    execution_timezone=PROJECT_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every morning: yesterday's snapshot, dormant users and everything downstream.",
)
def daily_morning_schedule(context: ScheduleEvaluationContext):
    return _latest_complete_partition_request(
        context, daily_partitions, run_config("daily_activity_snapshots", "dormant_users", "plan_reengagement_sends")
    )


@schedule(
    name="weekly_segments_schedule",
    job=weekly_segments_job,
    cron_schedule=WEEKLY_CRON,
    execution_timezone=PROJECT_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Once a week is complete: its engagement segments.",
)
def weekly_segments_schedule(context: ScheduleEvaluationContext):
    return _latest_complete_partition_request(context, weekly_partitions, run_config("weekly_engagement_segments"))


billing_snapshot_schedule = ScheduleDefinition(
    name="billing_snapshot_schedule",
    job=billing_snapshot_job,
    cron_schedule=BILLING_CRON,
    execution_timezone=PROJECT_TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING,
    description="Every morning before the daily run: the Stripe subscription snapshot.",
)
