"""Settings of the daily activity snapshot; defaults from the thresholds file (retention.yaml)."""

from __future__ import annotations

from dagster import Config
from pydantic import Field, model_validator

from retention_pipeline.thresholds import check_section, file_default, reject_clearly


class SnapshotConfig(Config):
    """How far back each run recomputes, and when the day's event volume looks broken."""

    trailing_days: int = Field(
        default=file_default("daily_activity_snapshots", "trailing_days"),
        ge=1,
        le=14,
        description="A one-partition run (the daily run) recomputes this many days ending on its partition, so events arriving up to N-1 days late are counted; a range run (backfill) recomputes exactly its range.",
    )
    min_events_share_of_median: float = Field(
        default=file_default("daily_activity_snapshots", "min_events_share_of_median"),
        ge=0.0,
        le=1.0,
        description="Check events_vs_trailing_median: the last day's events must reach this share of the median of the 7 days before.",
    )

    # Declared last, so it wraps the field checks above.
    _clear_errors = model_validator(mode="wrap")(classmethod(reject_clearly))


check_section(SnapshotConfig, "daily_activity_snapshots")
