"""Who a campaign is for: the `audience` of campaign.yaml, its load-time checks, and its SQL.

An audience starts from one of two bases (`from`):
- `dormant_users` (the default): the users of `retention.dormant_users` on the as-of day; an episode is a run of
  consecutive days in that list.
- `subscriptions`: the users mapped to a subscription in the as-of day's Stripe snapshot (the day's rows of
  `retention.stripe_subscription_history`) that matches the campaign's lifecycle condition, dormant or not; an
  episode is a run of consecutive snapshots on which the user matched it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DORMANCY_CONDITIONS = ("dormancy_reasons", "min_days_inactive", "max_days_inactive")
# What makes a subscriptions audience a lifecycle trigger rather than "every subscriber".
LIFECYCLE_TRIGGERS = ("subscription_statuses", "cancel_at_period_end", "trial_ends_within_days")


class Audience(BaseModel):
    """Who the campaign is for, on the as-of day. Every condition given must hold; an empty audience is every
    targeted dormant user."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Literal["dormant_users", "subscriptions"] = Field(default="dormant_users", alias="from")
    dormancy_reasons: list[Literal["inactive", "declining"]] | None = None
    min_days_inactive: int | None = Field(default=None, ge=0)
    max_days_inactive: int | None = Field(default=None, ge=0)
    # The user's segment in the latest week that ended before the as-of day.
    weekly_segments: (
        list[Literal["new", "resurrected", "declining", "power", "active", "casual", "dormant", "churned"]] | None
    ) = None
    subscription_statuses: (
        list[
            Literal["active", "past_due", "trialing", "unpaid", "incomplete", "incomplete_expired", "canceled", "paused", "none"]
        ]
        | None
    ) = None
    plans: list[str] | None = None
    min_mrr_cents: int | None = Field(default=None, ge=0)
    max_mrr_cents: int | None = Field(default=None, ge=0)
    cancel_at_period_end: bool | None = None
    # A trialing subscription whose trial ends within this many days after the as-of day (from: subscriptions).
    trial_ends_within_days: int | None = Field(default=None, ge=1, le=90)

    @model_validator(mode="after")
    def _ranges(self) -> Audience:
        for low, high in (("min_days_inactive", "max_days_inactive"), ("min_mrr_cents", "max_mrr_cents")):
            if getattr(self, low) is not None and getattr(self, high) is not None and getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} {getattr(self, low)} is above {high} {getattr(self, high)}: nobody matches")
        for name in ("dormancy_reasons", "weekly_segments", "subscription_statuses", "plans"):
            if getattr(self, name) == []:
                raise ValueError(f"{name} is an empty list: nobody matches (leave it out to allow any)")
        return self

    @property
    def lifecycle(self) -> bool:
        return self.from_ == "subscriptions"


def audience_problems(audience: Audience) -> list[str]:
    """What does not fit the audience's base, one line each (the caller prefixes the file)."""
    if not audience.lifecycle:
        return (
            ["trial_ends_within_days needs `from: subscriptions` (it reads the as-of day's Stripe snapshot)"]
            if audience.trial_ends_within_days is not None
            else []
        )
    problems = [
        f"{name} is a dormancy condition; `from: subscriptions` reaches users whether or not they are dormant "
        "(use `from: dormant_users`)"
        for name in DORMANCY_CONDITIONS
        if getattr(audience, name) is not None
    ]
    if audience.subscription_statuses is None and not audience.cancel_at_period_end and audience.trial_ends_within_days is None:
        problems.append(
            "`from: subscriptions` needs a lifecycle condition (subscription_statuses, cancel_at_period_end: true or "
            "trial_ends_within_days); without one every subscriber is in it"
        )
    if audience.subscription_statuses is not None and "none" in audience.subscription_statuses:
        problems.append("subscription_statuses 'none' matches no subscription: `from: subscriptions` starts from subscriptions")
    statuses = audience.subscription_statuses
    if audience.trial_ends_within_days is not None and statuses is not None and "trialing" not in statuses:
        problems.append(
            f"trial_ends_within_days matches trialing subscriptions only, and subscription_statuses {statuses} "
            "leaves trialing out: nobody matches"
        )
    return problems


@dataclass(frozen=True)
class AudienceSql:
    """The audience as SQL conditions: `on_user` on the base's row `t` of the as-of day; `on_subscription`
    (subscriptions audiences) on a snapshot row `h` of `stripe_subscription_history`: what an episode is made of."""

    on_user: str
    on_subscription: str
    params: dict


def audience_sql(audience: Audience) -> AudienceSql:
    """A dormant_users audience is all on `t`; a subscriptions audience matches one subscription `h` on every condition
    of the subscription (status, plan, MRR, cancelling, trial), judged against its own snapshot's day."""
    problems = audience_problems(audience)
    if problems:  # campaign files are checked when they load; this catches an audience built in code
        raise ValueError("; ".join(problems))
    on_user: list[str] = []
    on_subscription: list[str] = []
    params: dict = {}
    subscription = on_subscription if audience.lifecycle else on_user
    row = "h" if audience.lifecycle else "t"
    if audience.dormancy_reasons is not None:
        on_user.append("t.reason = ANY(:aud_reasons)")
        params["aud_reasons"] = list(audience.dormancy_reasons)
    if audience.min_days_inactive is not None:
        on_user.append("t.days_inactive >= :aud_min_days")
        params["aud_min_days"] = audience.min_days_inactive
    if audience.max_days_inactive is not None:
        on_user.append("t.days_inactive <= :aud_max_days")
        params["aud_max_days"] = audience.max_days_inactive
    if audience.weekly_segments is not None:
        on_user.append("""(SELECT ws.segment FROM {rs}.weekly_segments ws
                           WHERE ws.user_id = t.user_id AND ws.week_start <= CAST(:as_of AS date) - 6
                           ORDER BY ws.week_start DESC LIMIT 1) = ANY(:aud_segments)""")
        params["aud_segments"] = list(audience.weekly_segments)
    if audience.subscription_statuses is not None:
        subscription.append(f"{row}.{'status' if audience.lifecycle else 'subscription_status'} = ANY(:aud_statuses)")
        params["aud_statuses"] = list(audience.subscription_statuses)
    if audience.plans is not None:
        # The product's name, as dormant_users names the plan (the plan's nickname when there is no product name).
        subscription.append(
            "COALESCE(h.product_name, h.plan_name) = ANY(:aud_plans)" if audience.lifecycle else "t.plan_name = ANY(:aud_plans)"
        )
        params["aud_plans"] = list(audience.plans)
    if audience.min_mrr_cents is not None:
        subscription.append(f"{row}.mrr_cents >= :aud_min_mrr")
        params["aud_min_mrr"] = audience.min_mrr_cents
    if audience.max_mrr_cents is not None:
        subscription.append(f"{row}.mrr_cents <= :aud_max_mrr")
        params["aud_max_mrr"] = audience.max_mrr_cents
    if audience.cancel_at_period_end is not None:
        subscription.append(f"{row}.cancel_at_period_end = :aud_cancel")
        params["aud_cancel"] = audience.cancel_at_period_end
    if audience.trial_ends_within_days is not None:
        # The snapshot dated D + 1 stands for as-of day D, so the as-of day's end is the start of the snapshot's
        # date (project timezone): each day of an episode is judged against its own day, never the wall clock.
        on_subscription.append("""h.status = 'trialing'
            AND h.trial_end >= (h.snapshot_date::timestamp AT TIME ZONE :tz)
            AND h.trial_end < ((h.snapshot_date + :aud_trial_days)::timestamp AT TIME ZONE :tz)""")
        params["aud_trial_days"] = audience.trial_ends_within_days
    return AudienceSql(" AND ".join(on_user) or "TRUE", " AND ".join(on_subscription) or "TRUE", params)


def describe_audience(audience: Audience) -> str:
    """One line: the audience's conditions as they read in campaign.yaml."""
    given = audience.model_dump(exclude_none=True, by_alias=True)
    if not audience.lifecycle and len(given) == 1:
        return "from=dormant_users (every targeted dormant user)"
    return ", ".join(f"{key}={value}" for key, value in given.items())
