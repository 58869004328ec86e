"""Data-quality checks of segments and dormant users, run in the materializing transaction."""

from __future__ import annotations

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue
from sqlalchemy import text
from sqlalchemy.engine import Connection

from retention_pipeline.activity.checks import events_look_ingested, trailing_events
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

# The as-of day's dormant list against those of the 7 days before it, compared only over days that have
# one (a fresh install has no baseline; see MIN_BASELINE_DAYS).
_DORMANT_FIGURES_SQL = """
WITH dormant AS (
    SELECT as_of_date, count(*) AS users FROM {rs}.dormant_users
    WHERE as_of_date >= CAST(:as_of AS date) - 7 AND as_of_date < :as_of GROUP BY as_of_date
)
SELECT (SELECT count(*) FROM {rs}.dormant_users WHERE as_of_date = :as_of) AS dormant,
       (SELECT count(*) FILTER (WHERE targeted) FROM {rs}.dormant_users WHERE as_of_date = :as_of) AS targeted,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY users) FROM dormant) AS dormant_median,
       (SELECT count(*) FROM dormant) AS baseline_days
"""

# Fewer days with a dormant list than this in the week before: no baseline to judge a jump against.
MIN_BASELINE_DAYS = 4


def segment_check_specs(asset_name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            "one_segment_per_user",
            asset=asset_name,
            description="Every user who exists by the end of the week has exactly one segment row.",
        ),
        AssetCheckSpec(
            "segment_shares_present",
            asset=asset_name,
            description="Only known segments, and no single segment holds more than 95% of users (warns).",
        ),
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


# Blocking: a failure stops everything downstream of dormant_users in the run (the emails, and the
# outcomes that follow them); the snapshots and the dormant list itself are still materialized.
def dormant_check_specs(asset_name: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            "activity_ingested",
            asset=asset_name,
            blocking=True,
            description="The as-of day's events reach min_events_share_for_sends of the median of the 7 days "
            "before: a broken ingestion would make everyone look dormant. Failing stops the emails.",
        ),
        AssetCheckSpec(
            "dormant_vs_trailing_median",
            asset=asset_name,
            blocking=True,
            description="Dormant users exceed the median of the 7 days before by at most max_dormant_jump "
            "(and max_dormant_jump_min_users). Failing stops the emails.",
        ),
        AssetCheckSpec(
            "planned_sends_within_ceiling",
            asset=asset_name,
            blocking=True,
            description="Targeted dormant users (the most the dormancy campaigns can email in a day) stay within "
            "max_planned_sends. Failing stops the emails.",
        ),
    ]


def dormant_check_results(conn: Connection, db: AppDatabase, as_of, thresholds: dict) -> list[AssetCheckResult]:
    """Checks of the run's last as-of day (the day the emails go out for), against the week before it."""
    f = conn.execute(text(db.render(_DORMANT_FIGURES_SQL)), {"as_of": as_of}).mappings().one()
    events, events_median = trailing_events(conn, db, as_of)
    min_share = thresholds["min_events_share_for_sends"]
    dormant_median = float(f["dormant_median"] or 0)
    dormant_limit = max(
        dormant_median * (1 + thresholds["max_dormant_jump"]), dormant_median + thresholds["max_dormant_jump_min_users"]
    )
    ceiling = thresholds["max_planned_sends"]
    return [
        _gate(
            "activity_ingested",
            events_look_ingested(events, events_median, min_share),
            f"{as_of}: {events} events, below {min_share * events_median:g} ({min_share:.0%} of the trailing "
            f"median {events_median:g}): ingestion looks broken",
            {
                "as_of": str(as_of),
                "events": events,
                "trailing_median_events": events_median,
                "min_events": min_share * events_median,
            },
        ),
        _gate(
            "dormant_vs_trailing_median",
            f["baseline_days"] < MIN_BASELINE_DAYS or f["dormant"] <= dormant_limit,
            f"{as_of}: {f['dormant']} dormant users, above {dormant_limit:g} (trailing median {dormant_median:g})",
            {
                "as_of": str(as_of),
                "dormant_users": f["dormant"],
                "trailing_median_dormant_users": dormant_median,
                "baseline_days": f["baseline_days"],
                "max_dormant_users": dormant_limit,
            },
        ),
        _gate(
            "planned_sends_within_ceiling",
            f["targeted"] <= ceiling,
            f"{as_of}: {f['targeted']} targeted users, above max_planned_sends={ceiling}",
            {"as_of": str(as_of), "targeted": f["targeted"], "max_planned_sends": ceiling},
        ),
    ]


def _gate(name: str, passed: bool, why: str, figures: dict) -> AssetCheckResult:
    """A blocking check's result; when it fails, its description (shown in the UI) says why and what it stopped."""
    return AssetCheckResult(
        check_name=name, passed=passed, description=None if passed else f"{why}: no email is sent", metadata=figures
    )
