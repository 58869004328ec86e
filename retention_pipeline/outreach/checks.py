"""Content checks of outreach: what the emails would say about actions the phrase map does not know."""

from collections.abc import Mapping

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from retention_pipeline.outreach.campaigns import file_campaigns
from retention_pipeline.outreach.render import ACTION_PHRASES, humanize
from retention_pipeline.resources import AppDatabase
from retention_pipeline.sql_time import window_params

# Event types the emails may mention: the last actions kept on the dormant rows of the window.
_EVENT_TYPES_SQL = """
SELECT a->>'event_type' AS event_type, count(*) AS actions
FROM {rs}.dormant_users du, jsonb_array_elements(du.last_actions) a
WHERE du.as_of_date >= :start_date AND du.as_of_date < :end_date AND a->>'event_type' IS NOT NULL
GROUP BY 1 ORDER BY 2 DESC, 1
"""


def unmapped_event_types(app_db: AppDatabase, window: dict, phrases: Mapping[str, tuple[str, str]]) -> dict[str, int]:
    """Event types seen in the window's dormant rows that no phrase maps, with how often each occurs."""
    rows = app_db.fetch_all(_EVENT_TYPES_SQL, window)
    return {row.event_type: int(row.actions) for row in rows if row.event_type not in phrases}


def phrases_of_every_campaign() -> Mapping[str, tuple[str, str]]:
    """The event types every campaign has a phrase for (each campaign's phrases.yaml over the built-in map): one
    that some campaign would humanize counts as unmapped."""
    maps = [campaign.renderer.phrases for campaign in file_campaigns()] or [ACTION_PHRASES]
    known = set.intersection(*(set(m) for m in maps))
    return {event_type: maps[0][event_type] for event_type in known}


@asset_check(
    asset="dormant_users",
    description="Event types in the emails' last actions that the phrase map does not know "
    '(they read as a humanized name, e.g. "you used team workload"): add a phrase for each.',
)
def unmapped_event_types_check(context: AssetCheckExecutionContext, app_db: AppDatabase) -> AssetCheckResult:
    window = window_params(context.op_execution_context.partition_time_window)
    unmapped = unmapped_event_types(app_db, window, phrases_of_every_campaign())
    return AssetCheckResult(
        passed=not unmapped,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "unmapped_event_types": MetadataValue.json(unmapped),
            "unmapped_count": MetadataValue.int(len(unmapped)),
            "reads_as": MetadataValue.json({event_type: f"you used {humanize(event_type)}" for event_type in unmapped}),
        },
    )
