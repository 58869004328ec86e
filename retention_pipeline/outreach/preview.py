"""What one campaign step would send one user on one day, rendered by the planner's own code and written nowhere:
the `preview` and `send-test` commands. Nothing here touches the ledger, the holdout or the outcomes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from dagster import Failure
from sqlalchemy import text

from retention_pipeline.outreach.allocation import stable_variant
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.campaigns import Campaign, Step, campaign_directories, campaigns_dir, load_campaigns
from retention_pipeline.outreach.planning import (
    assigned_variant,
    candidate_params,
    missing_snapshot,
    render_email,
    run_config_campaign,
)
from retention_pipeline.outreach.tokens import new_send_ref
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import require_current_schema

# The planner's own address check (outreach/sql.py), for --to.
ADDRESS = re.compile(r'^[^@\s<>",;]+@[^@\s<>",;]+\.[^@\s<>",;]+$')

_CANDIDATE_SQL = "SELECT * FROM plan_candidates WHERE user_id = :user_id"
# Users the step emails that day: still to plan first, then those the ledger already holds.
_RENDERABLE_SQL = """
SELECT * FROM plan_candidates WHERE (skip_reason IS NULL OR skip_reason = 'already_recorded') AND suppression IS NULL
ORDER BY skip_reason IS NOT NULL, user_id
"""
_DORMANT_DAY_SQL = "SELECT EXISTS (SELECT 1 FROM {rs}.dormant_users WHERE as_of_date = :as_of)"


class PreviewError(Exception):
    """Nothing to preview as asked; the message is one line that says why."""


@dataclass(frozen=True)
class Preview:
    campaign: str
    step: int
    variant: str
    user_id: int
    as_of: date
    holdout: bool
    payload: dict


def campaign_named(name: str, config: CampaignConfig) -> Campaign:
    """The campaign of that name (a disabled one too: its copy can be previewed before it is switched on)."""
    root = campaigns_dir()
    campaigns = (
        [run_config_campaign(config)]
        if root.is_dir() and not campaign_directories(root)
        else load_campaigns(root, include_disabled=True)
    )
    for campaign in campaigns:
        if campaign.name == name:
            return campaign
    raise PreviewError(f"no campaign {name!r} in {campaigns_dir()}; known: {', '.join(c.name for c in campaigns) or 'none'}")


def step_of(campaign: Campaign, number: int) -> Step:
    for step in campaign.steps:
        if step.step == number:
            return step
    raise PreviewError(f"campaign {campaign.name} has steps {[s.step for s in campaign.steps]}, not step {number}")


def identity(config: CampaignConfig, live_sender: bool) -> CampaignConfig:
    """The footer identity a send through this sender would carry, or the reason it could not be sent."""
    try:
        return config.with_footer_identity(live_sender)
    except Failure as failure:
        raise PreviewError(failure.description) from None


def preview(
    db: AppDatabase, config: CampaignConfig, campaign: Campaign, step: Step, as_of: date, links, user_id: int | None = None
) -> Preview:
    """Render what the planner sends this user (or, without one, the first user it emails) for this step on this
    day, with the planner's candidate query, assignment and renderer. A user the ledger already holds for the step
    is rendered as well (with the templates as they are now), so a day already run can be previewed."""
    require_current_schema(db)
    if campaign.audience.lifecycle:
        missing = missing_snapshot(db, campaign, as_of)
        if missing:
            raise PreviewError(f"{campaign.name}: {missing}; or pass --date with another day")
    elif not db.scalar(_DORMANT_DAY_SQL, {"as_of": as_of}):
        raise PreviewError(
            f"no dormant users computed for {as_of}: run the daily job for that day first "
            "(e.g. `retention-pipeline demo`), or pass --date with a computed day"
        )
    sql, params = candidate_params(config, campaign, step, as_of, render_recorded=True)
    with db.begin() as conn:  # a temporary table only, dropped at the end of this transaction
        conn.execute(text(db.render(sql)), params)
        if user_id is not None:
            row = conn.execute(text(_CANDIDATE_SQL), {"user_id": user_id}).mappings().first()
            if row is None:
                raise PreviewError(
                    f"user {user_id} is not a candidate of {campaign.name} step {step.step} on {as_of} "
                    f"({'no matching subscription that day' if campaign.audience.lifecycle else 'not dormant that day'}, "
                    "outside the campaign's audience, or the previous step is not due)"
                )
            if row["skip_reason"] not in (None, "already_recorded"):
                raise PreviewError(
                    f"user {user_id} gets no {campaign.name} step {step.step} email on {as_of}: {row['skip_reason']}"
                )
            if row["suppression"]:
                raise PreviewError(
                    f"user {user_id} gets no {campaign.name} step {step.step} email on {as_of}: the address "
                    f"is suppressed ({row['suppression']}); the assignment is recorded, nothing is sent"
                )
        else:
            rows = conn.execute(text(_RENDERABLE_SQL)).mappings()
            row = next(
                (r for r in rows if assigned_variant(campaign, step, r["user_id"], r["episode_start"], None) != "holdout"), None
            )
            if row is None:
                raise PreviewError(
                    f"nobody gets a {campaign.name} step {step.step} email on {as_of}; pass --date with another day, or --step"
                )
        row = dict(row)
    variant = assigned_variant(campaign, step, row["user_id"], row["episode_start"], None)
    holdout = variant == "holdout"
    if holdout:  # shown as its variant would read; the user is held out and gets nothing
        variant = stable_variant(campaign.name, step.step, row["user_id"], row["episode_start"], step.variants)
    link = links.link(config.unsubscribe_url, new_send_ref(), as_of)
    return Preview(
        campaign.name,
        step.step,
        variant,
        row["user_id"],
        as_of,
        holdout,
        render_email(config, campaign, step, variant, row, link),
    )
