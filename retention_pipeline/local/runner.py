"""Launching the loop's jobs as real Dagster runs on an instance (the CLI's demo, the simulator, tests)."""

from __future__ import annotations

from datetime import date, timedelta

from dagster import AssetKey, DagsterInstance, ExecuteInProcessResult, materialize

from retention_pipeline.definitions import defs
from retention_pipeline.partitions import weekly_partitions

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def run_job(
    instance: DagsterInstance,
    job_name: str,
    first_key: str | None = None,
    last_key: str | None = None,
    run_config: dict | None = None,
    tags: dict | None = None,
    quiet: bool = False,
    resources: dict | None = None,
    assets: list[str] | None = None,
) -> ExecuteInProcessResult:
    """One run: unpartitioned (no key), one partition, or the inclusive range first_key..last_key (a single-run backfill)."""
    job = defs.resolve_job_def(job_name)
    all_tags = dict(tags or {})
    if quiet:
        run_config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    selection = [AssetKey(name) for name in assets] if assets else None
    single = last_key is None or last_key == first_key
    if not single:
        all_tags |= {RANGE_START_TAG: first_key, RANGE_END_TAG: last_key}
    if resources:
        # A job's resources are bound; swapping one (e.g. a sender aimed at a test server) means
        # materializing the same assets with the merged resources instead.
        return materialize(
            list(defs.assets),
            resources={**defs.resources, **resources},
            instance=instance,
            run_config=run_config,
            selection=selection or list(job.asset_layer.selected_asset_keys),
            partition_key=first_key if single else None,
            tags=all_tags,
        )
    return job.execute_in_process(
        instance=instance,
        run_config=run_config,
        asset_selection=selection,
        partition_key=first_key if single else None,
        tags=all_tags,
    )


def day_key(day: date) -> str:
    return day.isoformat()


def complete_week_keys(first_day: date, last_day: date) -> list[str]:
    """Weekly partition keys of the weeks that lie completely within first_day..last_day."""
    first_partition = date.fromisoformat(weekly_partitions.get_first_partition_key())
    monday = max(first_day, first_partition)
    monday += timedelta(days=(7 - monday.weekday()) % 7)
    keys = []
    while monday + timedelta(days=6) <= last_day:
        keys.append(monday.isoformat())
        monday += timedelta(days=7)
    return keys
