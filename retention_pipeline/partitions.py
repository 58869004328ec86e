"""All partitions definitions, in the one project timezone."""

from __future__ import annotations

from dagster import DailyPartitionsDefinition, WeeklyPartitionsDefinition

from retention_pipeline.settings import PARTITIONS_START_DATE, PROJECT_TIMEZONE

daily_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START_DATE, timezone=PROJECT_TIMEZONE)

# day_offset=1: weeks start on Monday (Dagster's default is Sunday), like ISO weeks and most product teams.
weekly_partitions = WeeklyPartitionsDefinition(start_date=PARTITIONS_START_DATE, day_offset=1, timezone=PROJECT_TIMEZONE)
