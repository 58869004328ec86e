"""The `demo` command's work: seed the demo app, install the trigger, run the loop, report."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

import psycopg2
import sqlalchemy as sa
import stripe
from dagster import AssetKey, DagsterInstance

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.local import demo_data
from retention_pipeline.local.launcher import Environment, LauncherError
from retention_pipeline.local.localstripe import LOCALSTRIPE_API_KEY, LocalStripe
from retention_pipeline.local.runner import complete_week_keys, day_key, run_job
from retention_pipeline.local.stripe_seed import seed_demo_stripe
from retention_pipeline.outreach.campaigns import file_campaigns
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema
from retention_pipeline.settings import PROJECT_TIMEZONE, STATE_DIR


def app_database(env: Environment) -> AppDatabase:
    return AppDatabase(url=env.app_database_url)


def run_demo(env: Environment, seed: int, n_users: int, history_days: int, say: Callable[[str], None]) -> str:
    db = app_database(env)
    as_of = clock.latest_complete_day()
    first_day = as_of - timedelta(days=history_days - 1)
    seeded = _seed_if_empty(db, seed, n_users, as_of, say)
    install_schema(db)
    if env.local_stripe is not None:
        _seed_local_stripe_if_empty(db, env.local_stripe, say)
    tracked = install_trigger(db)
    say(f"Trigger on events installed; user_activity tracks {tracked:,} users.")

    instance = DagsterInstance.get()
    timings = {}
    yesterday_of_as_of = as_of - timedelta(days=1)
    say(f"Backfilling daily activity snapshots {first_day} .. {yesterday_of_as_of} as one run ...")
    timings["snapshots"] = _timed(
        lambda: run_job(
            instance,
            "daily_retention_job",
            day_key(first_day),
            day_key(yesterday_of_as_of),
            assets=["daily_activity_snapshots"],
            quiet=True,
        )
    )
    # Before the dormant users: the earlier sends record each user's MRR at assignment from it, which
    # revenue kept compares against.
    say("Snapshotting Stripe subscriptions ...")
    timings["stripe"] = _timed(lambda: run_job(instance, "billing_snapshot_job", quiet=True))
    dormant_from = as_of - timedelta(days=DORMANT_HISTORY_DAYS)
    say(f"Backfilling dormant users {dormant_from} .. {yesterday_of_as_of} as one run ...")
    timings["dormant"] = _timed(
        lambda: run_job(
            instance,
            "daily_retention_job",
            day_key(dormant_from),
            day_key(yesterday_of_as_of),
            assets=["dormant_users"],
            quiet=True,
        )
    )
    weeks = complete_week_keys(first_day, as_of)
    if weeks:
        say(f"Computing weekly segments for {len(weeks)} complete weeks ({weeks[0]} .. {weeks[-1]}) as one run ...")
        timings["segments"] = _timed(lambda: run_job(instance, "weekly_segments_job", weeks[0], weeks[-1], quiet=True))
    timings["earlier sends"] = _timed(lambda: _replay_earlier_sends(instance, as_of, say))
    say(f"Running the daily job for {as_of} ...")
    timings["daily"] = _timed(
        lambda: run_job(instance, "daily_retention_job", day_key(as_of), run_config=DEMO_RUN_CONFIG, quiet=True)
    )
    return _report(db, as_of, weeks[-1] if weeks else None, seeded, timings, env, _email_metadata(instance))


def _email_metadata(instance: DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(AssetKey("reengagement_emails"))
    if event is None or event.asset_materialization is None:
        return {}
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


# Dormancy episodes and the earlier sends below need this much dormant-user history, not all 90 days.
DORMANT_HISTORY_DAYS = 35

# The demo's history includes earlier mornings of sends, so outcomes have closed windows to report, and
# revenue kept a day-30 horizon.
EARLIER_SEND_DAYS = (31, 21, 14)

# The demo campaign counts real work as success, not any event. With campaign files each campaign.yaml says so.
SUCCESS_EVENT_TYPES = ["create_task", "complete_task"]
DEMO_RUN_CONFIG = (
    None
    if file_campaigns()
    else {
        "ops": {
            "reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": {"success_event_types": SUCCESS_EVENT_TYPES}}}}
        }
    }
)


def _replay_earlier_sends(instance: DagsterInstance, as_of: date, say) -> None:
    for days_back in EARLIER_SEND_DAYS:
        day = as_of - timedelta(days=days_back)
        say(f"Replaying the emails of {day} with the clock set to the next morning ...")
        with clock.frozen_at(datetime.combine(day + timedelta(days=1), clock_time(9), UTC)):
            run_job(
                instance,
                "daily_retention_job",
                day_key(day),
                assets=["reengagement_emails"],
                run_config=DEMO_RUN_CONFIG,
                quiet=True,
            )


def _timed(fn) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def _connect(db: AppDatabase):
    url = sa.engine.make_url(db.url)
    return psycopg2.connect(
        dbname=url.database, user=url.username, password=url.password, host=url.query.get("host") or url.host, port=url.port
    )


# The demo app remembers how it was generated, so later runs can re-derive the same population
# (e.g. to seed a fresh localstripe with the same customers).
# Users present, but no record of a demo seed: that is someone's app, and the demo would build indexes
# on its tables, replay sends with a set clock and write emails from its users.
def _refuse_a_real_app(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('users') IS NOT NULL AND to_regclass('demo_seed_info') IS NULL")
        foreign = cur.fetchone()[0]
        if foreign:
            cur.execute("SELECT EXISTS (SELECT 1 FROM users)")
            foreign = cur.fetchone()[0]
    conn.rollback()
    if foreign:
        raise LauncherError(
            "RETENTION_DATABASE_URL points at a database whose `users` table holds rows the demo did not seed. "
            "`demo` only runs on its own demo data: unset RETENTION_DATABASE_URL for the embedded demo, or run the "
            "pipeline on this database with `retention-pipeline dev` (README: Pointing it at a real app database)."
        )


_SEED_INFO_DDL = (
    "CREATE TABLE IF NOT EXISTS demo_seed_info (seed integer NOT NULL, as_of date NOT NULL, n_users integer NOT NULL)"
)


def _seed_if_empty(db: AppDatabase, seed: int, n_users: int, as_of: date, say) -> dict | None:
    conn = _connect(db)
    try:
        _refuse_a_real_app(conn)
        demo_data.create_app_tables(conn)
        with conn.cursor() as cur:
            cur.execute(_SEED_INFO_DDL)
            cur.execute("SELECT count(*) FROM users")
            if cur.fetchone()[0]:
                conn.commit()
                say("Demo app data already present; keeping it.")
                return None
            say(f"Seeding the demo app: {n_users:,} users over the 90 days up to {as_of} (seed {seed}) ...")
            population = demo_data.generate(seed=seed, as_of=as_of, n_users=n_users)
            counts = demo_data.load(conn, population)
            cur.execute("INSERT INTO demo_seed_info VALUES (%s, %s, %s)", (seed, as_of, n_users))
        conn.commit()
        return counts
    finally:
        conn.close()


def _demo_population(db: AppDatabase) -> demo_data.DemoPopulation | None:
    row = db.fetch_all("SELECT seed, as_of, n_users FROM demo_seed_info LIMIT 1")
    return demo_data.generate(seed=row[0].seed, as_of=row[0].as_of, n_users=row[0].n_users) if row else None


def _seed_local_stripe_if_empty(db: AppDatabase, server: LocalStripe, say) -> None:
    """Give localstripe the demo's customers and subscriptions, and the demo users their customer ids."""
    client = stripe.StripeClient(LOCALSTRIPE_API_KEY, base_addresses={"api": server.api_base})
    if client.v1.subscriptions.list(params={"status": "all", "limit": 1}).data:
        return
    population = _demo_population(db)
    if population is None:
        say("The app database was not made by the demo; localstripe stays empty.")
        return
    paying = sum(1 for user in population.users if user.plan)
    say(f"Seeding localstripe (a local Stripe) with {paying:,} demo subscriptions ...")
    seeded = seed_demo_stripe(client, population.users)
    conn = _connect(db)
    try:
        with conn.cursor() as cur:
            # Stripe chooses customer ids; only ~70% are stored on users, the rest are left for the
            # pipeline to map through customer metadata or the email address.
            cur.execute("UPDATE users SET stripe_customer_id = NULL WHERE stripe_customer_id IS NOT NULL")
            cur.executemany(
                "UPDATE users SET stripe_customer_id = %s WHERE id = %s",
                [(customer_id, user_id) for user_id, customer_id in seeded["stripe_customer_ids"].items()],
            )
        conn.commit()
    finally:
        conn.close()


_REPORT_SQL = {
    "source": "SELECT (SELECT count(*) FROM {rs}.source_users) AS users, (SELECT count(*) FROM {rs}.source_events) AS events, "
    "(SELECT count(*) FROM {rs}.source_auth_sessions) AS sessions",
    "segments": "SELECT segment, count(*) AS users FROM {rs}.weekly_segments WHERE week_start = :week GROUP BY segment",
    "dormant": "SELECT reason, count(*) AS users FROM {rs}.dormant_users WHERE as_of_date = :as_of GROUP BY reason",
    "performance": "SELECT campaign, window_days, treated, treated_returned, holdout, holdout_returned, treated_rate, "
    "holdout_rate, lift, lift_ci_low, lift_ci_high, p_value FROM {rs}.campaign_performance WHERE as_of_date = :as_of "
    "AND step = 1 AND variant = 'all' AND segment = 'all' ORDER BY campaign, window_days",
    "success": "SELECT campaign, event_types FROM {rs}.campaign_success",
    "revenue": "SELECT step, horizon_days, treated, treated_kept, holdout, holdout_kept, awaiting, mrr_at_risk_cents, "
    "incremental_mrr_cents, incremental_mrr_ci_low_cents, incremental_mrr_ci_high_cents FROM {rs}.campaign_revenue "
    "WHERE as_of_date = :as_of AND campaign = 'winback' ORDER BY step, horizon_days",
    "ledger": "SELECT campaign, status, count(*) AS emails FROM {rs}.email_sends WHERE as_of_date = :as_of GROUP BY campaign, status",
    "mrr": "SELECT subscription_status, count(*) AS users, sum(mrr_cents)::bigint AS mrr_cents FROM {rs}.dormant_users "
    "WHERE as_of_date = :as_of GROUP BY subscription_status ORDER BY sum(mrr_cents) DESC, subscription_status",
}


def _report(db: AppDatabase, as_of: date, week: str | None, seeded, timings: dict, env: Environment, emails: dict) -> str:
    from retention_pipeline.segments.assets import SEGMENTS

    source = db.fetch_all(_REPORT_SQL["source"])[0]
    lines = [
        f"Retention loop demo, as of {as_of} ({PROJECT_TIMEZONE})",
        f"  app database  {db.display_url}" + ("  (embedded)" if env.is_embedded else ""),
        f"  app data      {source.users:,} users, {source.events:,} events, {source.sessions:,} auth sessions"
        + ("  (seeded now)" if seeded else ""),
        "  runs          " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()),
    ]
    if week:
        segments = {row.segment: row.users for row in db.fetch_all(_REPORT_SQL["segments"], {"week": week})}
        total = sum(segments.values()) or 1
        lines.append(f"\nEngagement segments, week of {week}:")
        lines += [f"  {name:<12} {segments.get(name, 0):>6,}  {segments.get(name, 0) / total:6.1%}" for name in SEGMENTS]
    dormant = {row.reason: row.users for row in db.fetch_all(_REPORT_SQL["dormant"], {"as_of": as_of})}
    lines.append(
        f"\nDormant users on {as_of}: {sum(dormant.values()):,} "
        f"({dormant.get('inactive', 0):,} inactive 7+ days, {dormant.get('declining', 0):,} with declining activity)"
    )
    at_risk = db.fetch_all(_REPORT_SQL["mrr"], {"as_of": as_of})
    lines.append(f"MRR at risk among them: ${sum(r.mrr_cents for r in at_risk) / 100:,.2f} a month")
    lines += [f"  {r.subscription_status:<12} {r.users:>6,} users  ${r.mrr_cents / 100:>10,.2f}" for r in at_risk]
    lines += _email_lines(db, as_of, emails)
    lines += _outcome_lines(db, as_of)
    lines += _revenue_lines(db, as_of)
    return "\n".join(lines)


def _outcome_lines(db: AppDatabase, as_of: date) -> list[str]:
    rows = db.fetch_all(_REPORT_SQL["performance"], {"as_of": as_of})
    success = {r.campaign: r.event_types for r in db.fetch_all(_REPORT_SQL["success"])}
    lines = [f"\nOutcomes of earlier sends (step 1, closed windows as of {as_of}), per campaign:"]
    if not rows:
        return lines + ["  no attribution window has closed yet"]
    for campaign in dict.fromkeys(r.campaign for r in rows):
        events = success.get(campaign)
        lines.append(f"  {campaign} (success = {'at least one ' + ' or '.join(events) + ' event' if events else 'any event'}):")
        for r in (r for r in rows if r.campaign == campaign):
            interval = (
                f"lift {r.lift:+.1%} (95% CI {r.lift_ci_low:+.1%} .. {r.lift_ci_high:+.1%}, p={r.p_value:.2f})"
                if r.lift is not None and r.lift_ci_low is not None
                else f"lift {r.lift:+.1%} (no interval)"
                if r.lift is not None
                else "no holdout to compare"
            )
            lines.append(
                f"    {r.window_days:>2}-day window  emailed {r.treated_returned}/{r.treated} returned ({r.treated_rate:.1%}), "
                f"holdout {r.holdout_returned}/{r.holdout} ({r.holdout_rate or 0:.1%}): {interval}"
            )
    lines.append(
        "  (the demo's users do not react to emails, so no lift is expected here; "
        "`retention-pipeline simulate` measures a known one)"
    )
    return lines


def _revenue_lines(db: AppDatabase, as_of: date) -> list[str]:
    rows = db.fetch_all(_REPORT_SQL["revenue"], {"as_of": as_of})
    lines = ["\nRevenue kept against the holdout (paying users whose subscription still ran N days after assignment):"]
    if not rows:
        return lines + ["  no paying user has reached day 30 after assignment yet"]
    for r in rows:
        head = f"  step {r.step}, day {r.horizon_days:>2}"
        if r.incremental_mrr_cents is None:
            lines.append(f"{head}: {r.treated + r.holdout} judged, {r.awaiting} awaiting a snapshot: no comparison yet")
            continue
        lines.append(
            f"{head}: emailed {r.treated_kept}/{r.treated} kept, holdout {r.holdout_kept}/{r.holdout}; "
            f"MRR at risk ${r.mrr_at_risk_cents / 100:,.2f}, incremental MRR ${r.incremental_mrr_cents / 100:+,.2f} "
            f"(95% CI ${r.incremental_mrr_ci_low_cents / 100:+,.2f} .. ${r.incremental_mrr_ci_high_cents / 100:+,.2f})"
        )
    return lines


def _email_lines(db: AppDatabase, as_of: date, emails: dict) -> list[str]:
    ledger: dict[str, dict[str, int]] = {}
    for r in db.fetch_all(_REPORT_SQL["ledger"], {"as_of": as_of}):
        ledger.setdefault(r.campaign, {})[r.status] = r.emails
    per_campaign = emails.get("campaigns") or {
        name: {"skipped_by_reason": emails.get("skipped_by_reason") or {}} for name in ledger
    }
    sender = emails.get("sender", "?")
    where = (
        f"written to the outbox: {STATE_DIR / 'outbox'} (.eml files) and retention.email_outbox"
        if sender == "outbox"
        else f"sent through {sender}"
    )
    lines = [
        f"\nRe-engagement emails for {as_of}, per campaign in priority order ({where}; at most one email per "
        "person within the frequency cap, across campaigns):"
    ]
    for name, figures in per_campaign.items():
        counts = ledger.get(name, {})
        skipped = figures.get("skipped_by_reason") or {}
        lines.append(
            f"  {name:<17} emails {counts.get('sent', 0):>4,}  held out {counts.get('holdout', 0):>3,}  skipped "
            f"{sum(skipped.values()):,}"
            + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + ")" if skipped else "")
        )
        if counts.get("failed"):
            lines.append(f"  {'':<17} failed {counts['failed']:,} (see retention.email_sends.error)")
        if counts.get("suppressed"):
            lines.append(
                f"  {'':<17} suppressed {counts['suppressed']:,} (assigned to the email, address suppressed: never sent)"
            )
    return lines
