"""Planning the day's assignments: which campaigns a run plans, each step's candidates, the arm and variant
of every assignment, and the ledger row written for it before anything is sent."""

import json
from collections import Counter
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    Failure,
)
from sqlalchemy import text

from retention_pipeline import clock
from retention_pipeline.outcomes.sql import step_outcomes_by_day
from retention_pipeline.outreach.allocation import (
    Allocation,
    DayOutcome,
    SequentialRule,
    allocated_variant,
    in_holdout,
    stable_variant,
    thompson_allocation,
)
from retention_pipeline.outreach.audience import Audience, audience_sql
from retention_pipeline.outreach.campaign import SECTION as CAMPAIGN_SECTION
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.campaigns import (
    Campaign,
    CampaignFilesError,
    Step,
    campaign_directories,
    campaigns_dir,
    load_campaigns,
)
from retention_pipeline.outreach.render import EmailRenderer
from retention_pipeline.outreach.sql import (
    ASSIGN_BATCH_SQL,
    CANDIDATES_SQL,
    CLEAR_ALLOCATION_SQL,
    CLEAR_DRY_RUN_SQL,
    DORMANT_BASE,
    ELIGIBLE_SQL,
    INSERT_DRY_RUN_SQL,
    INSERT_LEDGER_SQL,
    LIFECYCLE_BASE,
    PREVIOUS_DECISION_SQL,
    RECENT_ACTIONS_SQL,
    RECORD_ALLOCATION_SQL,
    RECORD_SUCCESS_DEFINITION_SQL,
    SKIP_COUNTS_SQL,
    SNAPSHOT_TAKEN_SQL,
)
from retention_pipeline.outreach.tokens import new_send_ref
from retention_pipeline.resources import AppDatabase
from retention_pipeline.settings import PROJECT_TIMEZONE
from retention_pipeline.thresholds import FILE_VALUES, file_default

# How far back a dormancy episode's first day is looked for (longer episodes start there).
EPISODE_LOOKBACK_DAYS = 120
# The latest actions an email names, for a lifecycle campaign's users who are not dormant (as dormant_users).
LAST_ACTIONS = file_default("dormant_users", "last_actions")
# Candidates rendered and written to the ledger per statement: bounds the plan's memory, not the send batches.
LEDGER_CHUNK = 500


def campaign_figures() -> dict:
    return {"skipped": Counter(), "recorded": Counter()}


# Fields of the run config that describe one campaign: with campaign files they live in campaign.yaml.
RUN_CONFIG_CAMPAIGN_FIELDS = ("campaign", "steps", "holdout_share", "success_event_types", "success_min_events", "resume_steps")


def campaigns_of_run(config: CampaignConfig, settings: dict) -> list[Campaign]:
    """The campaigns this run plans, in priority order: the campaign files (RETENTION_CAMPAIGNS_DIR), or, when that
    directory holds none, the one campaign the run config describes, with the built-in templates."""
    root = campaigns_dir()
    try:
        if root.is_dir() and not campaign_directories(root):
            return [run_config_campaign(config)]
        campaigns = load_campaigns(root)
    except CampaignFilesError as exc:
        raise Failure(description="campaign files: " + "; ".join(exc.problems), allow_retries=False) from None
    overridden = [key for key in RUN_CONFIG_CAMPAIGN_FIELDS if settings[key] != FILE_VALUES[CAMPAIGN_SECTION][key]]
    if overridden:
        raise Failure(
            description=f"run config sets {overridden}, which describe a campaign; with campaign files "
            f"({root}) they are set in campaigns/<name>/campaign.yaml, not in the run config.",
            allow_retries=False,
        )
    return campaigns


def run_config_campaign(config: CampaignConfig) -> Campaign:
    """The single campaign of a run without campaign files: everyone dormant and targeted, the built-in templates."""
    return Campaign(
        name=config.campaign,
        priority=0,
        topic=None,
        transactional=False,
        paused=False,
        audience=Audience(),
        steps=tuple(Step(step=s.step, delay_days=s.delay_days, variants=s.variants) for s in config.steps),
        holdout_share=config.holdout_share,
        success_event_types=tuple(sorted(set(config.success_event_types))),
        success_min_events=config.success_min_events,
        from_address=None,
        sender_name=None,
        resume_steps=tuple(config.resume_steps),
        renderer=EmailRenderer(),
    )


def record_success_definition(app_db: AppDatabase, campaign: Campaign) -> None:
    """What the outcomes count as this campaign's success, from its definition (even on a paused day)."""
    app_db.execute(
        RECORD_SUCCESS_DEFINITION_SQL,
        {
            "campaign": campaign.name,
            "event_types": list(campaign.success_event_types) or None,
            "min_events": campaign.success_min_events,
            "updated_at": clock.now(),
        },
    )


def send_guard(config: CampaignConfig, as_of: date) -> str | None:
    if config.paused:
        return "campaign paused (kill switch)"
    lag = (clock.today() - as_of).days
    if lag > config.max_send_lag_days:
        return f"partition is {lag} days old, older than max_send_lag_days={config.max_send_lag_days} (a backfill never sends)"
    return None


def step_label(plan: dict, campaign: Campaign, step: Step) -> str:
    """How metadata names a step: its number alone when the run has one campaign."""
    return str(step.step) if len(plan["campaigns"]) == 1 else f"{campaign.name} step {step.step}"


def snapshot_date(as_of: date) -> date:
    """The Stripe snapshot that stands for the as-of day: the one the billing schedule takes the next morning,
    before the daily run of the day reads it."""
    return as_of + timedelta(days=1)


def candidate_params(
    config: CampaignConfig, campaign: Campaign, step: Step, as_of: date, render_recorded: bool = False
) -> tuple[str, dict]:
    """CANDIDATES_SQL with the campaign's base and audience, and its parameters for one step on one as-of day
    (`render_recorded`: also what it takes to render users the ledger already holds, for `preview`)."""
    conditions = audience_sql(campaign.audience)
    base = LIFECYCLE_BASE.replace("{lifecycle}", conditions.on_subscription) if campaign.audience.lifecycle else DORMANT_BASE
    as_of_end = datetime.combine(as_of + timedelta(days=1), time.min, ZoneInfo(PROJECT_TIMEZONE))
    sql = CANDIDATES_SQL.replace("{base}", base).replace("{audience}", conditions.on_user)
    return sql.replace("{recent_actions}", RECENT_ACTIONS_SQL), conditions.params | {
        "as_of": as_of,
        "as_of_end": as_of_end,
        "snapshot_date": snapshot_date(as_of),
        "tz": PROJECT_TIMEZONE,
        "lifecycle": campaign.audience.lifecycle,
        "last_actions": LAST_ACTIONS,
        "campaign": campaign.name,
        "step": step.step,
        "delay_days": step.delay_days,
        "cooldown_days": config.cooldown_days,
        "episode_lookback_days": EPISODE_LOOKBACK_DAYS,
        "now": clock.now(),
        "topic": campaign.topic,
        "transactional": campaign.transactional,
        "render_recorded": render_recorded,
        "dry_run": config.dry_run,
    }


def missing_snapshot(app_db: AppDatabase, campaign: Campaign, as_of: date) -> str | None:
    """Why a lifecycle campaign plans nobody on the day: its Stripe snapshot was not taken. Never an older one instead:
    it would email people about a card they may have fixed since."""
    if not campaign.audience.lifecycle or app_db.scalar(SNAPSHOT_TAKEN_SQL, {"snapshot_date": snapshot_date(as_of)}):
        return None
    return (
        f"no Stripe snapshot dated {snapshot_date(as_of)} (taken the morning after {as_of}) in "
        "stripe_subscription_history: the campaign plans nobody that day (materialize stripe_subscriptions that morning)"
    )


def plan_step(
    app_db, config: CampaignConfig, campaign: Campaign, step: Step, as_of: date, links, plan: dict, batch_size: int
) -> None:
    shares = None
    holdout_only = False
    figures = plan["by_campaign"][campaign.name]
    missing = missing_snapshot(app_db, campaign, as_of)
    if missing:
        plan["guards"][f"{as_of.isoformat()} {campaign.name}"] = missing
        return
    if config.adaptive_allocation:
        allocation = _decide_allocation(app_db, config, campaign, step, as_of)
        if allocation.paused:
            plan["guards"][f"{as_of.isoformat()} {step_label(plan, campaign, step)}"] = (
                f"step {allocation.reason}; holdout keeps accruing"
            )
            plan["paused_for_review"][step_label(plan, campaign, step)] = allocation.reason
            holdout_only = True
        if allocation.winner:
            plan["winners"][step_label(plan, campaign, step)] = allocation.winner
        shares = allocation.shares
    candidates_sql, params = candidate_params(config, campaign, step, as_of)
    created_at = clock.now()
    pending_ids: list[int] = []
    with app_db.begin() as conn:
        conn.execute(text(app_db.render(candidates_sql)), params)
        for reason, users in conn.execute(text(SKIP_COUNTS_SQL)):
            if reason == "already_recorded":
                plan["already_recorded"] += users  # handled by an earlier run: not a skip
            else:
                plan["skipped"][reason] += users
                figures["skipped"][reason] += users
        # Rendered emails are the large part: only a chunk of them is in memory at a time.
        eligible = conn.execute(text(ELIGIBLE_SQL), execution_options={"stream_results": True})
        if config.dry_run:
            conn.execute(text(app_db.render(CLEAR_DRY_RUN_SQL)), params)
        insert_sql = app_db.render(INSERT_DRY_RUN_SQL if config.dry_run else INSERT_LEDGER_SQL)
        for chunk in eligible.mappings().partitions(LEDGER_CHUNK):
            if holdout_only:
                chunk = _holdout_members(campaign, step, chunk, plan)
            rows = [_ledger_row(config, campaign, step, as_of, candidate, links, created_at, shares) for candidate in chunk]
            inserted = conn.execute(text(insert_sql), {"rows": json.dumps(rows, default=_json_value)}).all()
            # A concurrent run that recorded the same user first wins; ours is simply not inserted.
            if len(inserted) < len(rows):
                plan["skipped"]["recorded_by_concurrent_run"] += len(rows) - len(inserted)
                figures["skipped"]["recorded_by_concurrent_run"] += len(rows) - len(inserted)
            for row in inserted:
                plan["recorded"][row.status] += 1
                figures["recorded"][row.status] += 1
                if row.suppressed:
                    plan["suppressed_by_arm"]["holdout" if row.status in ("holdout", "would_hold_out") else "email"] += 1
            pending_ids += [row.id for row in inserted if row.status == "pending"]  # none in a dry run
        pending_ids.sort()
        # Batches as large as the sender takes (its max_batch_size), so no stored batch is too large to send.
        for start in range(0, len(pending_ids), batch_size):
            ids = pending_ids[start : start + batch_size]
            batch_key = f"{campaign.name}-{as_of.isoformat()}-s{step.step}-{ids[0]}"
            conn.execute(text(app_db.render(ASSIGN_BATCH_SQL)), {"batch_key": batch_key, "ids": ids})
            plan["batch_keys"].append(batch_key)


def _holdout_members(campaign: Campaign, step: Step, chunk, plan: dict) -> list:
    """While a step is paused for review, only its holdout members are recorded: the comparison group keeps
    accruing, and the others are skipped (counted) so they can be emailed once the step is resumed."""
    kept = [c for c in chunk if in_holdout(campaign.name, step.step, c["user_id"], c["episode_start"], campaign.holdout_share)]
    if len(kept) < len(chunk):
        plan["skipped"]["step_paused_for_review"] += len(chunk) - len(kept)
        plan["by_campaign"][campaign.name]["skipped"]["step_paused_for_review"] += len(chunk) - len(kept)
    return kept


def _json_value(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in the ledger")


def _decide_allocation(app_db: AppDatabase, config: CampaignConfig, campaign: Campaign, step: Step, as_of: date) -> Allocation:
    """Allocate the step's variants by the outcomes closed before this day, by send day, and record the decision."""
    closed = step_outcomes_by_day(
        app_db,
        campaign.name,
        step.step,
        config.primary_window_days,
        before=datetime.combine(as_of, time.min, ZoneInfo(PROJECT_TIMEZONE)),
    )
    outcomes = [DayOutcome(r.day, r.variant, r.treated, r.users, r.returned) for r in closed]
    previous = app_db.fetch_all(PREVIOUS_DECISION_SQL, {"campaign": campaign.name, "step": step.step, "as_of": as_of})
    rule = SequentialRule(config.sequential_alpha, config.sequential_effect_scale, config.min_decision_sample)
    allocation = thompson_allocation(
        campaign.name,
        step.step,
        as_of,
        step.variants,
        outcomes,
        config.min_exploration_share,
        rule,
        dict(previous[0]._mapping) if previous else None,
        step.step in campaign.resume_steps,
    )
    decided_at = clock.now()
    key = {"as_of_date": as_of, "campaign": campaign.name, "step": step.step}
    with app_db.begin() as conn:
        conn.execute(text(app_db.render(CLEAR_ALLOCATION_SQL)), key)
        for variant in step.variants if not allocation.paused else ["all"]:
            figures = allocation.figures.get(variant, {})
            conn.execute(
                text(app_db.render(RECORD_ALLOCATION_SQL)),
                key
                | {
                    "variant": variant,
                    "share": allocation.shares.get(variant, 0.0),
                    "treated": figures.get("treated", 0),
                    "returned": figures.get("returned", 0),
                    "p_best": figures.get("p_best"),
                    "step_paused": allocation.paused,
                    "reason": allocation.reason,
                    "decided_at": decided_at,
                    "decision": allocation.decision,
                },
            )
    return allocation


def assigned_variant(campaign: Campaign, step: Step, user_id: int, episode_start: date, shares: dict[str, float] | None) -> str:
    """The arm and variant of one assignment (a campaign step of one user's dormancy episode): 'holdout', or the
    variant to render. One function for every campaign, so how assignments are drawn changes in one place."""
    unit = (campaign.name, step.step, user_id, episode_start)
    if in_holdout(*unit, campaign.holdout_share):
        return "holdout"
    return allocated_variant(*unit, shares) if shares else stable_variant(*unit, step.variants)


def render_email(config: CampaignConfig, campaign: Campaign, step: Step, variant: str, user, link: str) -> dict:
    """The provider payload of one email: exactly what is sent (and what `preview` shows)."""
    # A transactional email's link leaves all email (the one unsubscribe it honours), so its footer names no topic.
    identity = config.model_dump() | {"topic": None if campaign.transactional else campaign.topic}
    if campaign.sender_name:
        identity["sender_name"] = campaign.sender_name
    rendered = campaign.renderer.render(variant, dict(user), identity, link)
    return {
        "to": user["email"],
        "from_address": campaign.from_address or config.from_address,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
        "headers": {"List-Unsubscribe": f"<{link}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        "tags": {"campaign": campaign.name, "step": str(step.step), "variant": variant},
    }


def _ledger_row(
    config: CampaignConfig, campaign: Campaign, step: Step, as_of: date, user, links, created_at, shares: dict[str, float] | None
) -> dict:
    """The assignment (arm and variant, drawn for this step of the user's episode) as its ledger row; a
    suppressed address is recorded in its arm like any other and is never sent."""
    variant = assigned_variant(campaign, step, user["user_id"], user["episode_start"], shares)
    base = {
        "campaign": campaign.name,
        "step": step.step,
        "user_id": user["user_id"],
        "episode_start": user["episode_start"],
        "as_of_date": as_of,
        "variant": variant,
        "email": user["email"],
        "segment_reason": user["segment_reason"],
        "mrr_cents": user["mrr_cents"],
        "created_at": created_at,
        "subject": None,
        "payload": None,
        "suppression": user["suppression"],
    }
    if variant == "holdout":
        return base | {"status": "holdout"}
    if user["suppression"]:
        return base | {"status": "suppressed"}
    send_ref = new_send_ref()  # the link names this row, not the address: the endpoint looks it up
    link = links.link(config.unsubscribe_url, send_ref, as_of)
    payload = render_email(config, campaign, step, variant, user, link)
    return base | {
        "status": "pending",
        "subject": payload["subject"],
        "payload": payload,
        "unsubscribe_ref": send_ref,
        "unsubscribe_topic": None if campaign.transactional else campaign.topic,
    }
