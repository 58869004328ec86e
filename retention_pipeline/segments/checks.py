"""Data-quality checks of segments and dormant users, run in the materializing transaction."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue
from sqlalchemy import text
from sqlalchemy.engine import Connection

from retention_pipeline.resources import AppDatabase

_SEGMENT_FIGURES_SQL = """
WITH window_rows AS (
    SELECT * FROM {rs}.weekly_segments WHERE week_start >= :start_date AND week_start < :end_date
), weeks AS (
    SELECT DISTINCT week_start FROM window_rows
), expected AS (
    SELECT w.week_start, count(u.id) AS users
    FROM weeks w JOIN {rs}.source_users u
      ON u.created_at < ((w.week_start + 7)::timestamp AT TIME ZONE :tz)
    GROUP BY w.week_start
)
SELECT
    (SELECT count(*) - count(DISTINCT (week_start, user_id)) FROM window_rows) AS duplicate_keys,
    (SELECT count(*) FROM window_rows) AS segment_rows,
    (SELECT COALESCE(sum(users), 0) FROM expected) AS expected_rows,
    (SELECT count(*) FROM window_rows WHERE segment NOT IN
        ('new', 'resurrected', 'declining', 'power', 'active', 'casual', 'dormant', 'churned')) AS unknown_segments,
    (SELECT COALESCE(max(share), 0) FROM (
        SELECT count(*)::float / sum(count(*)) OVER (PARTITION BY week_start) AS share
        FROM window_rows GROUP BY week_start, segment) s) AS largest_share
"""

# A segmentation where one segment holds (nearly) everyone says nothing; usually it means the
# activity data stopped flowing, or thresholds were set so that every rule matches the same users.
MAX_SINGLE_SEGMENT_SHARE = 0.95

_DORMANT_FIGURES_SQL = """
SELECT count(*) - count(DISTINCT (as_of_date, user_id)) AS duplicate_keys,
       count(*) FILTER (WHERE days_inactive < 0 OR recent_events < 0 OR previous_events < 0) AS negative_rows
FROM {rs}.dormant_users WHERE as_of_date >= :start_date AND as_of_date < :end_date
"""


def segment_check_specs(asset_name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("one_segment_per_user", asset=asset_name,
                       description="Every user who exists by the end of the week has exactly one segment row."),
        AssetCheckSpec("segment_shares_present", asset=asset_name,
                       description="Only known segments, and no single segment holds more than 95% of users (warns)."),
    ]


def segment_check_results(conn: Connection, db: AppDatabase, params: dict) -> list[AssetCheckResult]:
    f = conn.execute(text(db.render(_SEGMENT_FIGURES_SQL)), params).mappings().one()
    return [
        AssetCheckResult(
            check_name="one_segment_per_user",
            passed=f["duplicate_keys"] == 0 and f["segment_rows"] == f["expected_rows"],
            metadata={
                "duplicate_keys": MetadataValue.int(f["duplicate_keys"]),
                "segment_rows": MetadataValue.int(f["segment_rows"]),
                "expected_rows": MetadataValue.int(int(f["expected_rows"])),
            },
        ),
        AssetCheckResult(
            check_name="segment_shares_present",
            passed=f["unknown_segments"] == 0 and f["largest_share"] <= MAX_SINGLE_SEGMENT_SHARE,
            severity=AssetCheckSeverity.WARN,
            metadata={
                "unknown_segments": MetadataValue.int(f["unknown_segments"]),
                "largest_segment_share": MetadataValue.float(round(float(f["largest_share"]), 4)),
            },
        ),
    ]


def dormant_check_specs(asset_name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec("unique_dormant_users", asset=asset_name,
                       description="At most one row per (as-of day, user)."),
        AssetCheckSpec("non_negative_dormancy", asset=asset_name,
                       description="Days inactive and event counts are never negative."),
    ]


def dormant_check_results(conn: Connection, db: AppDatabase, params: dict) -> list[AssetCheckResult]:
    f = conn.execute(text(db.render(_DORMANT_FIGURES_SQL)), params).mappings().one()
    return [
        AssetCheckResult(check_name="unique_dormant_users", passed=f["duplicate_keys"] == 0,
                         metadata={"duplicate_keys": MetadataValue.int(f["duplicate_keys"])}),
        AssetCheckResult(check_name="non_negative_dormancy", passed=f["negative_rows"] == 0,
                         metadata={"negative_rows": MetadataValue.int(f["negative_rows"])}),
    ]
