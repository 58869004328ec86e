"""Thresholds of the engagement segments and of dormancy; every field shows in the launchpad.

Defaults come from the thresholds file (retention.yaml, `retention_pipeline.thresholds`), never from here."""

from __future__ import annotations

from dagster import Config
from pydantic import Field, model_validator

from retention_pipeline.thresholds import check_section, file_default, reject_clearly

SUBSCRIPTION_STATUSES = frozenset(
    {"active", "past_due", "trialing", "unpaid", "incomplete", "incomplete_expired", "canceled", "paused", "none"}
)


# The lookbacks the assets' partition mappings declare (segments/assets.py): the file's values. A run may
# look back less far than declared, never further, so Dagster's lineage never understates what is read.
DECLARED_LOOKBACK_WEEKS: int = file_default("weekly_engagement_segments", "dormant_lookback_weeks")
DECLARED_LOST_AFTER_DAYS: int = file_default("dormant_users", "lost_after_days")


class SegmentThresholds(Config):
    """Weekly lifecycle segments. The first matching rule wins (README: segment definitions)."""

    power_min_active_days: int = Field(
        default=file_default("weekly_engagement_segments", "power_min_active_days"),
        ge=1,
        le=7,
        description="`power`: active on at least this many days of the week.",
    )
    active_min_active_days: int = Field(
        default=file_default("weekly_engagement_segments", "active_min_active_days"),
        ge=1,
        le=7,
        description="`active`: active on at least this many days (and fewer than power).",
    )
    decline_ratio: float = Field(
        default=file_default("weekly_engagement_segments", "decline_ratio"),
        ge=0.0,
        le=1.0,
        description="`declining`: events fell by at least this share against the previous week (0..1).",
    )
    decline_min_events: int = Field(
        default=file_default("weekly_engagement_segments", "decline_min_events"),
        ge=1,
        description="`declining`: the previous week had at least this many events.",
    )
    dormant_lookback_weeks: int = Field(
        default=file_default("weekly_engagement_segments", "dormant_lookback_weeks"),
        ge=1,
        le=52,
        description="`dormant` vs `churned`: last activity within this many weeks before the week.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SegmentThresholds:
        if self.active_min_active_days > self.power_min_active_days:
            raise ValueError("active_min_active_days must not exceed power_min_active_days")
        if self.dormant_lookback_weeks > DECLARED_LOOKBACK_WEEKS:
            raise ValueError(
                f"dormant_lookback_weeks={self.dormant_lookback_weeks} reads further back than the {DECLARED_LOOKBACK_WEEKS} "
                "weeks the asset declares (its partition mapping follows retention.yaml): raise it there instead"
            )
        return self

    # Declared last, so it wraps every check above.
    _clear_errors = model_validator(mode="wrap")(classmethod(reject_clearly))


class DormancyThresholds(Config):
    """When a user counts as dormant on the as-of day (the partition day)."""

    dormant_after_days: int = Field(
        default=file_default("dormant_users", "dormant_after_days"),
        ge=1,
        description="Dormant when the last activity is at least this many days before the as-of day.",
    )
    lost_after_days: int = Field(
        default=file_default("dormant_users", "lost_after_days"),
        ge=14,
        description="Users inactive for longer than this are lost, not dormant, and are left alone.",
    )
    decline_ratio: float = Field(
        default=file_default("dormant_users", "decline_ratio"),
        ge=0.0,
        le=1.0,
        description="Also dormant when events of the last 7 days fell by this share (0..1) against the 7 days before.",
    )
    decline_min_events: int = Field(
        default=file_default("dormant_users", "decline_min_events"),
        ge=1,
        description="The decline rule needs at least this many events in the earlier 7 days.",
    )
    min_account_age_days: int = Field(
        default=file_default("dormant_users", "min_account_age_days"),
        ge=0,
        description="Accounts younger than this are never dormant (they are still onboarding).",
    )
    last_actions: int = Field(
        default=file_default("dormant_users", "last_actions"),
        ge=1,
        le=10,
        description="How many recent distinct actions to keep for the email's personalization.",
    )
    target_statuses: list[str] = Field(
        default_factory=lambda: list(file_default("dormant_users", "target_statuses")),
        description="Subscription statuses to target; 'none' = users without a subscription. Others are kept but not targeted.",
    )
    exclude_ended_after_days: int = Field(
        default=file_default("dormant_users", "exclude_ended_after_days"),
        ge=0,
        description="Never target users whose subscription ended more than this many days before the as-of day.",
    )

    min_events_share_for_sends: float = Field(
        default=file_default("dormant_users", "min_events_share_for_sends"),
        ge=0.0,
        le=1.0,
        description="Blocking check activity_ingested: the as-of day's events must reach this share of the median of the 7 days before, or no email is sent.",
    )
    max_dormant_jump: float = Field(
        default=file_default("dormant_users", "max_dormant_jump"),
        ge=0.0,
        description="Blocking check dormant_vs_trailing_median: dormant users may exceed the median of the 7 days before by at most this share (1.0 = double).",
    )
    max_dormant_jump_min_users: int = Field(
        default=file_default("dormant_users", "max_dormant_jump_min_users"),
        ge=0,
        description="Blocking check dormant_vs_trailing_median: a rise of fewer users than this never fails (small numbers swing).",
    )
    max_planned_sends: int = Field(
        default=file_default("dormant_users", "max_planned_sends"),
        ge=0,
        description="Blocking check planned_sends_within_ceiling: at most this many targeted dormant users on the as-of day.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> DormancyThresholds:
        if self.lost_after_days <= self.dormant_after_days:
            raise ValueError("lost_after_days must be greater than dormant_after_days")
        if self.lost_after_days > DECLARED_LOST_AFTER_DAYS:
            raise ValueError(
                f"lost_after_days={self.lost_after_days} reads further back than the {DECLARED_LOST_AFTER_DAYS} days "
                "the asset declares (its partition mapping follows retention.yaml): raise it there instead"
            )
        unknown = sorted(set(self.target_statuses) - SUBSCRIPTION_STATUSES)
        if unknown:
            raise ValueError(f"unknown target_statuses {unknown}; known: {sorted(SUBSCRIPTION_STATUSES)}")
        return self

    # Declared last, so it wraps every check above.
    _clear_errors = model_validator(mode="wrap")(classmethod(reject_clearly))


check_section(SegmentThresholds, "weekly_engagement_segments")
check_section(DormancyThresholds, "dormant_users")
