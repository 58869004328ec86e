"""Re-engagement emails: a graph-backed asset whose materialization is the send ledger.

plan (eligibility, holdout, rendering, ledger rows written BEFORE sending; a dry run writes its preview
      to `email_dry_runs` instead)
  -> send (an op with its own retries; only in a live, unpaused run of a current day: this run's batches and
     the pending ones a crashed run left, with the same keys)
  -> record (the ledger's figures and exactly which batches this run sent, and why, as the asset's metadata).
"""

from collections import Counter
from datetime import timedelta

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
from retention_pipeline.outreach.campaign import SECTION as CAMPAIGN_SECTION
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.links import UnsubscribeLinks
from retention_pipeline.outreach.planning import (
    campaign_figures,
    campaigns_of_run,
    plan_step,
    record_success_definition,
    send_guard,
)
from retention_pipeline.outreach.senders import EmailSender, OutgoingEmail, SenderConfigurationError
from retention_pipeline.outreach.sql import (
    BATCH_ROWS_SQL,
    DRY_RUN_SUMMARY_SQL,
    LEDGER_SUMMARY_SQL,
    MARK_FAILED_SQL,
    MARK_SENT_SQL,
    PENDING_BATCHES_SQL,
)
from retention_pipeline.partitions import daily_partitions
from retention_pipeline.resources import AppDatabase
from retention_pipeline.retry import database_retry_policy
from retention_pipeline.schema import require_current_schema
from retention_pipeline.sql_time import partition_days, window_params
from retention_pipeline.thresholds import used_values_metadata

# Resend honours an idempotency key for 24 h. A pending batch older than this is not re-sent with its
# key (the provider may have forgotten it and would send twice); it is marked `unknown` instead.
IDEMPOTENCY_HORIZON = timedelta(hours=23)

send_retry_policy = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL)

THIS_RUNS_PLAN = "this run's plan"
LEFT_BY_EARLIER_RUN = "left pending by an earlier run"


@op(retry_policy=database_retry_policy, ins={"dormant_users": In(Nothing)}, tags={"kind": "postgres"})
def plan_reengagement_sends(
    context: OpExecutionContext,
    config: CampaignConfig,
    app_db: AppDatabase,
    unsubscribe_links: UnsubscribeLinks,
    email_sender: EmailSender,
) -> dict:
    """Write one ledger row per assignment of every campaign, in priority order, before any send: an intended
    email (pending), a holdout member (holdout) or an email to a suppressed address (suppressed, never sent); a
    dry run writes the same rows to its preview table `email_dry_runs` instead."""
    settings = config.model_dump()  # as the run set them (the file, or the launchpad), before the demo address
    config = config.with_footer_identity(email_sender.live)
    campaigns = campaigns_of_run(config, settings)
    require_current_schema(app_db)
    drain_activity_queue(app_db)  # the 'returned' check reads user_activity
    days = partition_days(context)
    today = clock.today()
    names = [c.name for c in campaigns]
    plan = {
        "campaign": ", ".join(names),
        "campaigns": names,
        # A paused campaign's pending batches stay pending; the send op sends only these campaigns'.
        "sending_campaigns": [c.name for c in campaigns if not c.paused],
        "dry_run": config.dry_run,
        "paused": config.paused,
        "settings": settings,
        "days": [d.isoformat() for d in days],
        # Days recent enough to send: a run covering none of them is a backfill and sends nothing at all.
        "current_days": [d.isoformat() for d in days if (today - d).days <= config.max_send_lag_days],
        "batch_keys": [],
        "skipped": Counter(),
        "guards": {},
        "recorded": Counter(),
        "already_recorded": 0,
        "paused_for_review": {},
        "winners": {},
        "by_campaign": {c.name: campaign_figures() for c in campaigns},
        "suppressed_by_arm": Counter({"email": 0, "holdout": 0}),
    }
    for campaign in campaigns:
        record_success_definition(app_db, campaign)
    for as_of in days:
        guard = send_guard(config, as_of)
        if guard:
            plan["guards"][as_of.isoformat()] = guard
            context.log.info(f"{as_of}: nothing sent: {guard}")
            continue
        # Priority order, one campaign (and step) after the other: each commits its rows before the next plans,
        # so the frequency cap of a later campaign sees the emails and holdout rows of an earlier one.
        for campaign in campaigns:
            if campaign.paused:
                plan["guards"][f"{as_of.isoformat()} {campaign.name}"] = "campaign paused (paused: true in its campaign.yaml)"
                continue
            for step in campaign.steps:
                plan_step(app_db, config, campaign, step, as_of, unsubscribe_links, plan, email_sender.max_batch_size)
    plan["skipped"], plan["recorded"] = dict(plan["skipped"]), dict(plan["recorded"])
    for figures in plan["by_campaign"].values():
        figures["skipped"], figures["recorded"] = dict(figures["skipped"]), dict(figures["recorded"])
    plan["suppressed_by_arm"] = dict(plan["suppressed_by_arm"])
    return plan


# One pool for every run's sends: dagster.yaml limits `email_provider` to one send op at a time across runs,
# so concurrent runs share the provider's per-team rate limit.
@op(retry_policy=send_retry_policy, pool="email_provider", tags={"kind": "resend"})
def send_pending_emails(context: OpExecutionContext, plan: dict, app_db: AppDatabase, email_sender: EmailSender) -> dict:
    """Send this run's pending batches and those a crashed run left, each with its own key; nothing at all in
    a paused run, a dry run or a backfill (they leave pending batches for the next current-day run)."""
    batches = app_db.fetch_all(PENDING_BATCHES_SQL, {"campaigns": plan["sending_campaigns"]})
    planned = set(plan["batch_keys"])
    listed = [
        {"batch_key": b.batch_key, "emails": b.emails, "why": THIS_RUNS_PLAN if b.batch_key in planned else LEFT_BY_EARLIER_RUN}
        for b in batches
    ]
    reason_not_to_send = _reason_not_to_send(plan)
    if reason_not_to_send:
        held = [entry | {"result": "held"} for entry in listed]
        context.log.info(
            f"nothing sent: {reason_not_to_send}; {len(held)} pending batch(es) held ({sum(b['emails'] for b in held)} emails)"
        )
        return {"decision": f"nothing sent: {reason_not_to_send}", "counts": {}, "batches": held}
    results = Counter()
    for batch, entry in zip(batches, listed, strict=True):
        if clock.now() - batch.created_at > IDEMPOTENCY_HORIZON:
            _finish_batch(
                app_db,
                batch.batch_key,
                "unknown",
                "pending beyond the provider's idempotency horizon; "
                "not re-sent to avoid a duplicate: check the provider's log for this batch key",
                0,
            )
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
    return {
        "decision": f"current day's live run: {sent} of {len(listed)} pending batch(es) sent "
        "(this run's plan and any left pending by an earlier run)",
        "counts": dict(results),
        "batches": listed,
    }


def _reason_not_to_send(plan: dict) -> str | None:
    if plan["paused"]:
        return "campaign paused (kill switch); pending batches stay pending until an unpaused run"
    if plan["dry_run"]:
        return "dry run; pending batches are left to the next live run"
    if not plan["current_days"]:
        return (
            "backfill: no partition of this run is within max_send_lag_days of today (a backfill never "
            "sends); pending batches are left to the current day's run"
        )
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
                    conn.execute(
                        text(app_db.render(MARK_SENT_SQL)),
                        {"id": row.id, "provider_id": provider_id, "sent_at": sent_at, "attempts": outcome.attempts},
                    )
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
    ledger = pd.DataFrame(
        app_db.fetch_all(LEDGER_SUMMARY_SQL, window | {"campaigns": plan["campaigns"]}),
        columns=["campaign", "step", "variant", "status", "emails"],
    )
    by_status = ledger.groupby("status")["emails"].sum().to_dict() if not ledger.empty else {}
    previews = {
        row.status: row.emails for row in app_db.fetch_all(DRY_RUN_SUMMARY_SQL, window | {"campaigns": plan["campaigns"]})
    }
    skipped = plan["skipped"]
    batches = results["batches"]
    figures = {
        "emails_sent": int(by_status.get("sent", 0)),
        "holdout": int(by_status.get("holdout", 0)),
        "failed": int(by_status.get("failed", 0)),
        "pending": int(by_status.get("pending", 0)),
        "suppressed": int(by_status.get("suppressed", 0)),
        "dry_run_would_send": int(previews.get("would_send", 0)),
        "dry_run_would_hold_out": int(previews.get("would_hold_out", 0)),
        "dry_run_would_suppress": int(previews.get("would_suppress", 0)),
        "skipped": sum(skipped.values()),
        "already_recorded": plan["already_recorded"],
    }
    context.add_output_metadata(
        {
            "campaign": MetadataValue.text(plan["campaign"]),
            "sender": MetadataValue.text(email_sender.name),
            **_figures_metadata(figures, plan["days"]),
            "skipped_by_reason": MetadataValue.json(skipped),
            "campaigns": MetadataValue.json(_per_campaign(ledger, plan)),
            # Suppressed addresses are assigned, not skipped: this run's suppressed assignments in each arm.
            "suppressed_by_arm": MetadataValue.json(plan["suppressed_by_arm"]),
            "send_decision": MetadataValue.text(results["decision"]),
            "send_results_this_run": MetadataValue.json(results["counts"]),
            "batches_sent": MetadataValue.json([_batch_entry(b) for b in batches if b["result"] == "sent"]),
            "batches_not_sent": MetadataValue.json(
                [_batch_entry(b) | {"result": b["result"]} for b in batches if b["result"] != "sent"]
            ),
            "guards": MetadataValue.json(plan["guards"]),
            "paused_for_review": MetadataValue.json(plan.get("paused_for_review", {})),
            "winners": MetadataValue.json(plan.get("winners", {})),
            "ledger": MetadataValue.md(
                ledger.to_markdown(index=False) if not ledger.empty else "_no ledger rows in this window_"
            ),
            **used_values_metadata(plan["settings"], CAMPAIGN_SECTION),
        }
    )


def _per_campaign(ledger: pd.DataFrame, plan: dict) -> dict:
    """Each campaign's emails, holdout and skips by reason in the window, in priority order."""
    out = {}
    for name in plan["campaigns"]:
        rows = ledger[ledger["campaign"] == name] if not ledger.empty else ledger
        statuses = rows.groupby("status")["emails"].sum().to_dict() if not rows.empty else {}
        out[name] = {status: int(statuses.get(status, 0)) for status in ("sent", "holdout", "failed", "pending")} | {
            "skipped_by_reason": plan["by_campaign"][name]["skipped"]
        }
    return out


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
    """Personalized emails of every campaign (to dormant users, or to subscribers by Stripe lifecycle), sent at
    most once per user, step and episode; the materialization is the send ledger (`retention.email_sends`)."""
    plan = plan_reengagement_sends(dormant_users)
    return record_send_ledger(plan, send_pending_emails(plan))
