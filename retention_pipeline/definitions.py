"""The code location: every asset, check, job, schedule and resource of the retention loop."""

from __future__ import annotations

from dagster import Definitions, EnvVar

from retention_pipeline.activity.assets import daily_activity_snapshots
from retention_pipeline.jobs import daily_morning_schedule, daily_retention_job, weekly_segments_job, weekly_segments_schedule
from retention_pipeline.resources import AppDatabase
from retention_pipeline.segments.assets import dormant_users, weekly_engagement_segments

defs = Definitions(
    assets=[daily_activity_snapshots, weekly_engagement_segments, dormant_users],
    jobs=[daily_retention_job, weekly_segments_job],
    schedules=[daily_morning_schedule, weekly_segments_schedule],
    resources={"app_db": AppDatabase(url=EnvVar("RETENTION_DATABASE_URL"))},
)
