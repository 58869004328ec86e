"""Re-engagement emails: a graph-backed asset whose materialization is the send ledger.

plan (eligibility, holdout, rendering, ledger rows written BEFORE sending; a dry run writes its preview
      to `email_dry_runs` instead)
  -> send (an op with its own retries; only in a live, unpaused run of a current day: this run's batches and
     the pending ones a crashed run left, with the same keys)
  -> record (the ledger's figures and exactly which batches this run sent, and why, as the asset's metadata).
"""

import json
from collections import Counter
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from dagster import (
    AssetIn,
    BackfillPolicy,
    Backoff,
    Failure,
    In,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    RetryPolicy,
    graph_asset,
    op,
)
from sqlalchemy import text

from retention_pipeline import clock
from retention_pipeline.activity.trigger import drain_activity_queue
from retention_pipeline.outcomes.sql import STEP_OUTCOMES_BY_DAY_SQL
from retention_pipeline.outreach.allocation import (
    Allocation,
    DayOutcome,
    SequentialRule,
    allocated_variant,
    in_holdout,
    stable_variant,
    thompson_allocation,
)
from retention_pipeline.outreach.campaign import SECTION as CAMPAIGN_SECTION, CampaignConfig, CampaignStep
from retention_pipeline.outreach.links import UnsubscribeLinks
from retention_pipeline.outreach.render import EmailRenderer
from retention_pipeline.outreach.senders import EmailSender, OutgoingEmail, SenderConfigurationError
from retention_pipeline.outreach.sql import (
    ASSIGN_BATCH_SQL,
    BATCH_ROWS_SQL,
    CANDIDATES_SQL,
    CLEAR_ALLOCATION_SQL,
    CLEAR_DRY_RUN_SQL,
    DRY_RUN_SUMMARY_SQL,
    ELIGIBLE_SQL,
    INSERT_DRY_RUN_SQL,
    INSERT_LEDGER_SQL,
    LEDGER_SUMMARY_SQL,
    MARK_FAILED_SQL,
    MARK_SENT_SQL,
    PENDING_BATCHES_SQL,
    PREVIOUS_DECISION_SQL,
    RECORD_ALLOCATION_SQL,
    RECORD_SUCCESS_DEFINITION_SQL,
    SKIP_COUNTS_SQL,
)
from retention_pipeline.outreach.tokens import new_send_ref
from retention_pipeline.partitions import daily_partitions
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import database_retry_policy
from retention_pipeline.schema import require_current_schema
from retention_pipeline.settings import PROJECT_TIMEZONE
from retention_pipeline.sql_time import partition_days, window_params
from retention_pipeline.thresholds import used_values_metadata

# Resend honours an idempotency key for 24 h. A pending batch older than this is not re-sent with its
# key (the provider may have forgotten it and would send twice); it is marked `unknown` instead.
IDEMPOTENCY_HORIZON = timedelta(hours=23)
# How far back a dormancy episode's first day is looked for (longer episodes start there).
EPISODE_LOOKBACK_DAYS = 120
# Candidates rendered and written to the ledger per statement: bounds the plan's memory, not the send batches.
LEDGER_CHUNK = 500

send_retry_policy = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL)

THIS_RUNS_PLAN = "this run's plan"
LEFT_BY_EARLIER_RUN = "left pending by an earlier run"


@op(retry_policy=database_retry_policy, ins={"dormant_users": In(Nothing)}, tags={"kind": "postgres"})
def plan_reengagement_sends(
    context: OpExecutionContext, config: CampaignConfig, app_db: AppDatabase, unsubscribe_links: UnsubscribeLinks,
    email_sender: EmailSender,
) -> dict:
    """Write one ledger row per intended email (pending) or holdout member (holdout) before any send; a dry
    run writes the same rows to its preview table `email_dry_runs` instead."""
    settings = config.model_dump()  # as the run set them (the file, or the launchpad), before the demo address
    config = config.with_footer_identity(email_sender.live)
    require_current_schema(app_db)
    drain_activity_queue(app_db)  # the 'returned' check reads user_activity
    days = partition_days(context)
    today = clock.today()
    plan = {"campaign": config.campaign, "dry_run": config.dry_run, "paused": config.paused, "settings": settings,
            "days": [d.isoformat() for d in days],
            # Days recent enough to send: a run covering none of them is a backfill and sends nothing at all.
            "current_days": [d.isoformat() for d in days if (today - d).days <= config.max_send_lag_days],
            "batch_keys": [], "skipped": Counter(), "guards": {}, "recorded": Counter(), "already_recorded": 0,
            "paused_for_review": {}, "winners": {}}
    _record_success_definition(app_db, config)
    renderer = EmailRenderer()
    for as_of in days:
        guard = _send_guard(config, as_of)
        if guard:
            plan["guards"][as_of.isoformat()] = guard
            context.log.info(f"{as_of}: nothing sent: {guard}")
            continue
        for step in config.steps:
            _plan_step(app_db, config, step, as_of, renderer, unsubscribe_links, plan, email_sender.max_batch_size)
    plan["skipped"], plan["recorded"] = dict(plan["skipped"]), dict(plan["recorded"])
    return plan


def _record_success_definition(app_db: AppDatabase, config: CampaignConfig) -> None:
    """What the outcomes count as this campaign's success, from its config (even on a paused day)."""
    app_db.execute(RECORD_SUCCESS_DEFINITION_SQL, {
        "campaign": config.campaign, "event_types": sorted(set(config.success_event_types)) or None,
        "min_events": config.success_min_events, "updated_at": clock.now()})


def _send_guard(config: CampaignConfig, as_of: date) -> str | None:
    if config.paused:
        return "campaign paused (kill switch)"
    lag = (clock.today() - as_of).days
    if lag > config.max_send_lag_days:
        return f"partition is {lag} days old, older than max_send_lag_days={config.max_send_lag_days} (a backfill never sends)"
    return None


def _plan_step(app_db, config: CampaignConfig, step: CampaignStep, as_of: date, renderer, links, plan: dict,
               batch_size: int) -> None:
    shares = None
    holdout_only = False
    if config.adaptive_allocation:
        allocation = _decide_allocation(app_db, config, step, as_of)
        if allocation.paused:
            plan["guards"][f"{as_of.isoformat()} step {step.step}"] = f"step {allocation.reason}; holdout keeps accruing"
            plan["paused_for_review"][str(step.step)] = allocation.reason
            holdout_only = True
        if allocation.winner:
            plan["winners"][str(step.step)] = allocation.winner
        shares = allocation.shares
    params = {"as_of": as_of, "campaign": config.campaign, "step": step.step, "delay_days": step.delay_days,
              "cooldown_days": config.cooldown_days, "episode_lookback_days": EPISODE_LOOKBACK_DAYS, "now": clock.now()}
    created_at = clock.now()
    pending_ids: list[int] = []
    with app_db.begin() as conn:
        conn.execute(text(app_db.render(CANDIDATES_SQL)), params)
        for reason, users in conn.execute(text(SKIP_COUNTS_SQL)):
            if reason == "already_recorded":
                plan["already_recorded"] += users  # handled by an earlier run: not a skip
            else:
                plan["skipped"][reason] += users
        # Rendered emails are the large part: only a chunk of them is in memory at a time.
        eligible = conn.execute(text(ELIGIBLE_SQL), execution_options={"stream_results": True})
        if config.dry_run:
            conn.execute(text(app_db.render(CLEAR_DRY_RUN_SQL)), params)
        insert_sql = app_db.render(INSERT_DRY_RUN_SQL if config.dry_run else INSERT_LEDGER_SQL)
        for chunk in eligible.mappings().partitions(LEDGER_CHUNK):
            if holdout_only:
                chunk = _holdout_members(config, chunk, plan)
            rows = [_ledger_row(config, step, as_of, candidate, renderer, links, created_at, shares) for candidate in chunk]
            inserted = conn.execute(text(insert_sql), {"rows": json.dumps(rows, default=_json_value)}).all()
            # A concurrent run that recorded the same user first wins; ours is simply not inserted.
            if len(inserted) < len(rows):
                plan["skipped"]["recorded_by_concurrent_run"] += len(rows) - len(inserted)
            for row in inserted:
                plan["recorded"][row.status] += 1
            pending_ids += [row.id for row in inserted if row.status == "pending"]  # none in a dry run
        pending_ids.sort()
        # Batches as large as the sender takes (its max_batch_size), so no stored batch is too large to send.
        for start in range(0, len(pending_ids), batch_size):
            ids = pending_ids[start : start + batch_size]
            batch_key = f"{config.campaign}-{as_of.isoformat()}-s{step.step}-{ids[0]}"
            conn.execute(text(app_db.render(ASSIGN_BATCH_SQL)), {"batch_key": batch_key, "ids": ids})
            plan["batch_keys"].append(batch_key)


def _holdout_members(config: CampaignConfig, chunk, plan: dict) -> list:
    """While a step is paused for review, only its holdout members are recorded: the comparison group keeps
    accruing, and the others are skipped (counted) so they can be emailed once the step is resumed."""
    kept = [candidate for candidate in chunk if in_holdout(config.campaign, candidate["user_id"], config.holdout_share)]
    if len(kept) < len(chunk):
        plan["skipped"]["step_paused_for_review"] += len(chunk) - len(kept)
    return kept


def _json_value(value):
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in the ledger")


def _decide_allocation(app_db: AppDatabase, config: CampaignConfig, step: CampaignStep, as_of: date) -> Allocation:
    """Allocate the step's variants by the outcomes closed before this day, by send day, and record the decision."""
    outcomes = [DayOutcome(r.day, r.variant, r.treated, r.users, r.returned) for r in app_db.fetch_all(STEP_OUTCOMES_BY_DAY_SQL, {
        "campaign": config.campaign, "step": step.step, "window_days": config.primary_window_days,
        "end_ts": datetime.combine(as_of, time.min, ZoneInfo(PROJECT_TIMEZONE)), "tz": PROJECT_TIMEZONE})]
    previous = app_db.fetch_all(PREVIOUS_DECISION_SQL, {"campaign": config.campaign, "step": step.step, "as_of": as_of})
    rule = SequentialRule(config.sequential_alpha, config.sequential_effect_scale, config.min_decision_sample)
    allocation = thompson_allocation(config.campaign, step.step, as_of, step.variants, outcomes, config.min_exploration_share,
                                     rule, dict(previous[0]._mapping) if previous else None, step.step in config.resume_steps)
    decided_at = clock.now()
    key = {"as_of_date": as_of, "campaign": config.campaign, "step": step.step}
    with app_db.begin() as conn:
        conn.execute(text(app_db.render(CLEAR_ALLOCATION_SQL)), key)
        for variant in (step.variants if not allocation.paused else ["all"]):
            figures = allocation.figures.get(variant, {})
            conn.execute(text(app_db.render(RECORD_ALLOCATION_SQL)), key | {
                "variant": variant, "share": allocation.shares.get(variant, 0.0), "treated": figures.get("treated", 0),
                "returned": figures.get("returned", 0), "p_best": figures.get("p_best"), "step_paused": allocation.paused,
                "reason": allocation.reason, "decided_at": decided_at, "decision": allocation.decision})
    return allocation


def _ledger_row(config: CampaignConfig, step: CampaignStep, as_of: date, user, renderer, links, created_at,
                shares: dict[str, float] | None) -> dict:
    variant = (allocated_variant(config.campaign, step.step, user["user_id"], shares) if shares
               else stable_variant(config.campaign, step.step, user["user_id"], step.variants))
    base = {"campaign": config.campaign, "step": step.step, "user_id": user["user_id"],
            "episode_start": user["episode_start"], "as_of_date": as_of, "variant": variant,
            "email": user["email"], "segment_reason": user["segment_reason"], "mrr_cents": user["mrr_cents"],
            "created_at": created_at,
            "subject": None, "payload": None}
    if in_holdout(config.campaign, user["user_id"], config.holdout_share):
        return base | {"status": "holdout", "variant": "holdout"}
    send_ref = new_send_ref()  # the link names this row, not the address: the endpoint looks it up
    link = links.link(config.unsubscribe_url, send_ref, as_of)
    rendered = renderer.render(variant, dict(user), config.model_dump(), link)
    payload = {
        "to": user["email"], "from_address": config.from_address, "subject": rendered.subject,
        "html": rendered.html, "text": rendered.text,
        "headers": {"List-Unsubscribe": f"<{link}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        "tags": {"campaign": config.campaign, "step": str(step.step), "variant": variant},
    }
    return base | {"status": "pending", "subject": rendered.subject, "payload": payload, "unsubscribe_ref": send_ref}


# One pool for every run's sends: dagster.yaml limits `email_provider` to one send op at a time across runs,
# so concurrent runs share the provider's per-team rate limit.
@op(retry_policy=send_retry_policy, pool="email_provider", tags={"kind": "resend"})
def send_pending_emails(context: OpExecutionContext, plan: dict, app_db: AppDatabase, email_sender: EmailSender) -> dict:
    """Send this run's pending batches and those a crashed run left, each with its own key; nothing at all in
    a paused run, a dry run or a backfill (they leave pending batches for the next current-day run)."""
    batches = app_db.fetch_all(PENDING_BATCHES_SQL, {"campaign": plan["campaign"]})
    planned = set(plan["batch_keys"])
    listed = [{"batch_key": b.batch_key, "emails": b.emails,
               "why": THIS_RUNS_PLAN if b.batch_key in planned else LEFT_BY_EARLIER_RUN} for b in batches]
    reason_not_to_send = _reason_not_to_send(plan)
    if reason_not_to_send:
        held = [entry | {"result": "held"} for entry in listed]
        context.log.info(f"nothing sent: {reason_not_to_send}; {len(held)} pending batch(es) held "
                         f"({sum(b['emails'] for b in held)} emails)")
        return {"decision": f"nothing sent: {reason_not_to_send}", "counts": {}, "batches": held}
    results = Counter()
    for batch, entry in zip(batches, listed, strict=True):
        if clock.now() - batch.created_at > IDEMPOTENCY_HORIZON:
            _finish_batch(app_db, batch.batch_key, "unknown", "pending beyond the provider's idempotency horizon; "
                          "not re-sent to avoid a duplicate: check the provider's log for this batch key", 0)
            entry["result"] = "unknown"
        else:
            entry["result"] = _send_batch(context, app_db, email_sender, batch.batch_key)
        results[entry["result"]] += batch.emails
        context.log.info(f"batch {entry['batch_key']} ({entry['emails']} emails, {entry['why']}): {entry['result']}")
    if listed:
        # The next run's first call must not land in the provider's rate window of our last one.
        email_sender.wait_out_rate_window()
    context.log.info(f"send results: {dict(results)}")
    sent = sum(1 for entry in listed if entry["result"] == "sent")
    return {"decision": f"current day's live run: {sent} of {len(listed)} pending batch(es) sent "
                        "(this run's plan and any left pending by an earlier run)",
            "counts": dict(results), "batches": listed}


def _reason_not_to_send(plan: dict) -> str | None:
    if plan["paused"]:
        return "campaign paused (kill switch); pending batches stay pending until an unpaused run"
    if plan["dry_run"]:
        return "dry run; pending batches are left to the next live run"
    if not plan["current_days"]:
        return ("backfill: no partition of this run is within max_send_lag_days of today (a backfill never "
                "sends); pending batches are left to the current day's run")
    return None


def _send_batch(context, app_db: AppDatabase, sender: EmailSender, batch_key: str) -> str:
    # A session-level advisory lock: two runs reconciling the same batch never send it at once.
    with app_db.engine().connect() as lock_conn:
        if not lock_conn.execute(text("SELECT pg_try_advisory_lock(hashtext(:k))"), {"k": batch_key}).scalar():
            return "locked_by_other_run"
        try:
            rows = app_db.fetch_all(BATCH_ROWS_SQL, {"batch_key": batch_key})
            if not rows:
                return "already_done"
            emails = [OutgoingEmail(**row.payload) for row in rows]
            try:
                outcome = sender.send_batch(emails, idempotency_key=batch_key)
            except SenderConfigurationError as exc:
                raise Failure(description=str(exc), allow_retries=False) from None
            if outcome.error or not outcome.provider_ids:
                _finish_batch(app_db, batch_key, "failed", outcome.error or "provider returned no ids", outcome.attempts)
                context.log.warning(f"batch {batch_key} rejected: {outcome.error}")
                return "failed"
            sent_at = clock.now()
            with app_db.begin() as conn:
                for row, provider_id in zip(rows, outcome.provider_ids, strict=True):
                    conn.execute(text(app_db.render(MARK_SENT_SQL)),
                                 {"id": row.id, "provider_id": provider_id, "sent_at": sent_at, "attempts": outcome.attempts})
            return "sent"
        finally:
            lock_conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": batch_key})
            lock_conn.commit()


def _finish_batch(app_db: AppDatabase, batch_key: str, status: str, error: str, attempts: int) -> None:
    app_db.execute(MARK_FAILED_SQL, {"batch_key": batch_key, "status": status, "error": error[:500], "attempts": attempts})


@op(out=Out(Nothing), ins={"plan": In(dict), "results": In(dict)})
def record_send_ledger(context: OpExecutionContext, plan: dict, results: dict, app_db: AppDatabase, email_sender: EmailSender):
    """Summarise the ledger of the window as the asset's metadata."""
    window = window_params(context.partition_time_window)
    ledger = pd.DataFrame(app_db.fetch_all(LEDGER_SUMMARY_SQL, window | {"campaign": plan["campaign"]}),
                          columns=["step", "variant", "status", "emails"])
    by_status = ledger.groupby("status")["emails"].sum().to_dict() if not ledger.empty else {}
    previews = {row.status: row.emails for row in
                app_db.fetch_all(DRY_RUN_SUMMARY_SQL, window | {"campaign": plan["campaign"]})}
    skipped = plan["skipped"]
    batches = results["batches"]
    figures = {
        "emails_sent": int(by_status.get("sent", 0)),
        "holdout": int(by_status.get("holdout", 0)),
        "failed": int(by_status.get("failed", 0)),
        "pending": int(by_status.get("pending", 0)),
        "dry_run_would_send": int(previews.get("would_send", 0)),
        "dry_run_would_hold_out": int(previews.get("would_hold_out", 0)),
        "skipped": sum(skipped.values()),
        "already_recorded": plan["already_recorded"],
    }
    context.add_output_metadata({
        "campaign": MetadataValue.text(plan["campaign"]),
        "sender": MetadataValue.text(email_sender.name),
        **_figures_metadata(figures, plan["days"]),
        "skipped_by_reason": MetadataValue.json(skipped),
        "send_decision": MetadataValue.text(results["decision"]),
        "send_results_this_run": MetadataValue.json(results["counts"]),
        "batches_sent": MetadataValue.json([_batch_entry(b) for b in batches if b["result"] == "sent"]),
        "batches_not_sent": MetadataValue.json([_batch_entry(b) | {"result": b["result"]}
                                                for b in batches if b["result"] != "sent"]),
        "guards": MetadataValue.json(plan["guards"]),
        "paused_for_review": MetadataValue.json(plan.get("paused_for_review", {})),
        "winners": MetadataValue.json(plan.get("winners", {})),
        "ledger": MetadataValue.md(ledger.to_markdown(index=False) if not ledger.empty else "_no ledger rows in this window_"),
        **used_values_metadata(plan["settings"], CAMPAIGN_SECTION),
    })


def _figures_metadata(figures: dict[str, int], days: list[str]) -> dict[str, MetadataValue]:
    """A day's figures as numbers the UI plots; a range run's only as one JSON value, because Dagster stamps an
    op's metadata on every partition of the range and the window's totals would plot as each day's figure."""
    if len(days) == 1:
        return {name: MetadataValue.int(value) for name, value in figures.items()}
    return {"window_figures": MetadataValue.json(figures | {"days": f"{days[0]} .. {days[-1]}"})}


def _batch_entry(batch: dict) -> dict:
    return {"batch_key": batch["batch_key"], "emails": batch["emails"], "why": batch["why"]}


@graph_asset(
    group_name="outreach",
    kinds={"resend", "postgres"},
    owners=["team:growth"],
    partitions_def=daily_partitions,
    # One run over a range sends nothing for days older than max_send_lag_days, so a backfill is safe.
    backfill_policy=BackfillPolicy.single_run(),
    ins={"dormant_users": AssetIn(dagster_type=Nothing)},
)
def reengagement_emails(dormant_users):
    """Personalized re-engagement emails to dormant users, sent at most once per user, step and
    dormancy episode; the materialization is the send ledger (`retention.email_sends`)."""
    plan = plan_reengagement_sends(dormant_users)
    return record_send_ledger(plan, send_pending_emails(plan))
