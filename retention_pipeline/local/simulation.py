"""A synthetic population lived day by day through the real daily pipeline, with a known true uplift.

Every simulated day: active users produce events (inserted into `events`, so the trigger runs), the
clock is set to the next morning, and the real `daily_retention_job` runs as a Dagster run (snapshot,
dormant users, emails through a local Resend-like server, outcomes, performance).

The population and its truth are in `simulation_population`, the fast model in `simulation_model`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from dagster import DagsterInstance

from retention_pipeline import clock
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.local import demo_data
from retention_pipeline.local.embedded import EmbeddedPostgres
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.local.simulation_model import ModelResult, model_lift
from retention_pipeline.local.simulation_population import (
    CAMPAIGN,
    FIRST_DAY,
    MODELLED_WINDOW_DAYS,
    WARMUP_DAYS,
    Population,
    SimulationConfig,
    SimulationConfigError,
    SimulationResult,
)
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.resources import AppDatabase
from retention_pipeline.schema import install_schema
from retention_pipeline.settings import PROJECT_TIMEZONE

__all__ = [
    "ModelResult",
    "SimulationConfig",
    "SimulationConfigError",
    "SimulationResult",
    "format_report",
    "model_lift",
    "run_simulation",
    "simulation_database",
]

SIMULATION_DATABASE = "retention_sim"


@contextlib.contextmanager
def simulation_database(server: EmbeddedPostgres) -> Iterator[AppDatabase]:
    """A fresh database with the app tables, replaced on every simulation."""
    server.drop_database(SIMULATION_DATABASE)
    server.ensure_database(SIMULATION_DATABASE)
    conn = server.connect(SIMULATION_DATABASE)
    try:
        demo_data.create_app_tables(conn)
        conn.commit()
    finally:
        conn.close()
    db = AppDatabase(url=server.url(SIMULATION_DATABASE))
    previous = os.environ.get("RETENTION_DATABASE_URL")
    os.environ["RETENTION_DATABASE_URL"] = db.url  # the jobs' app_db resource reads it
    try:
        yield db
    finally:
        db.engine().dispose()
        if previous is None:
            os.environ.pop("RETENTION_DATABASE_URL", None)
        else:
            os.environ["RETENTION_DATABASE_URL"] = previous


def run_simulation(
    db: AppDatabase, instance: DagsterInstance, config: SimulationConfig, say: Callable[[str], None] = lambda _: None
) -> SimulationResult:
    install_schema(db)
    _create_users(db, config)
    install_trigger(db)
    population = Population(config)
    first = FIRST_DAY - timedelta(days=WARMUP_DAYS)
    for day in (first + timedelta(days=n) for n in range(WARMUP_DAYS)):
        _insert_events(db, population.events_for(day))
    run_config = {
        "ops": {
            "reengagement_emails": {
                "ops": {
                    "plan_reengagement_sends": {
                        "config": {
                            "campaign": CAMPAIGN,
                            "adaptive_allocation": config.adaptive_allocation,
                            "postal_address": "Simulation only, 1 Example Street, Springfield",
                        }
                    }
                }
            }
        }
    }
    with FakeResend(rate=0) as provider:
        sender = ResendSender(api_key="re_sim", api_url=provider.url, requests_per_second=1000, backoff_base_seconds=0.01)
        clock.set_now(_morning_after(FIRST_DAY - timedelta(days=1)))
        run_job(
            instance,
            "daily_retention_job",
            first.isoformat(),
            (FIRST_DAY - timedelta(days=1)).isoformat(),
            run_config=run_config,
            resources={"email_sender": sender},
            quiet=True,
        )
        _settle_sends(db, population, FIRST_DAY - timedelta(days=1))
        last_day = FIRST_DAY + timedelta(days=config.days - 1)
        for index in range(config.days):
            day = FIRST_DAY + timedelta(days=index)
            _insert_events(db, population.events_for(day))
            clock.set_now(_morning_after(day))
            run_job(
                instance,
                "daily_retention_job",
                day.isoformat(),
                run_config=run_config,
                resources={"email_sender": sender},
                quiet=True,
            )
            _settle_sends(db, population, day)
            if (index + 1) % 10 == 0 or index + 1 == config.days:
                say(f"  simulated {index + 1}/{config.days} days (up to {day})")
    clock.set_now(None)
    performance = [dict(r._mapping) for r in db.fetch_all(_PERFORMANCE_SQL, {"as_of": last_day})]
    weeks = {}
    for row in db.fetch_all(_VARIANT_WEEKS_SQL, {"first": FIRST_DAY}):
        weeks.setdefault(row.week, {})[row.variant] = row.emails
    totals = {r.status: r.emails for r in db.fetch_all("SELECT status, count(*) AS emails FROM {rs}.email_sends GROUP BY status")}
    end_ts = datetime.combine(last_day + timedelta(days=1), time(), ZoneInfo(PROJECT_TIMEZONE))
    measured = [(r.user_id, r.as_of_date) for r in db.fetch_all(_MEASURED_ROWS_SQL, {"end_ts": end_ts})]
    return SimulationResult(
        config, last_day, performance, weeks, totals.get("sent", 0), totals.get("holdout", 0), population.truth(measured), totals
    )


_DECISIONS_SQL = """
SELECT id, user_id, status, variant FROM {rs}.email_sends
WHERE as_of_date = :as_of AND campaign = :campaign AND status IN ('sent', 'suppressed', 'holdout') ORDER BY user_id, step
"""
_MARK_DELIVERY_SQL = """
UPDATE {rs}.email_sends SET status = :status, sent_at = NULL, provider_message_id = NULL,
    error = 'simulated: ' || :status || ' at the provider'
WHERE id = ANY(:ids)
"""
# What the unsubscribe link does (retention_pipeline.outreach.web): the address is suppressed from then on.
_UNSUBSCRIBE_SQL = """
INSERT INTO {rs}.email_suppressions (email, reason, source, detail, created_at)
SELECT lower(email), 'unsubscribed', 'simulation', 'simulated unsubscribe after a delivered email', :at
FROM {rs}.email_sends WHERE id = ANY(:ids)
ON CONFLICT (email) DO NOTHING
"""
# The rows behind the headline figure: step 1, inactive, 7-day windows closed by the last day.
_MEASURED_ROWS_SQL = """
SELECT s.user_id, s.as_of_date FROM {rs}.reengagement_outcomes o JOIN {rs}.email_sends s ON s.id = o.send_id
WHERE o.final AND o.window_end <= :end_ts AND o.window_days = 7 AND o.step = 1 AND o.segment_reason = 'inactive'
"""
_PERFORMANCE_SQL = (
    "SELECT * FROM {rs}.campaign_performance WHERE as_of_date = :as_of ORDER BY step, variant, segment, window_days"
)
_VARIANT_WEEKS_SQL = """
SELECT (as_of_date - CAST(:first AS date)) / 7 AS week, variant, count(*) AS emails
FROM {rs}.email_sends WHERE status = 'sent' AND step = 1 GROUP BY 1, 2 ORDER BY 1, 2
"""


def _settle_sends(db: AppDatabase, population: Population, day: date) -> None:
    """Mark the day's sends the model says failed or ended unknown, draw every ledger row's fate, and
    suppress the addresses of users a delivered email made unsubscribe."""
    rows = db.fetch_all(_DECISIONS_SQL, {"as_of": day, "campaign": CAMPAIGN})
    fates = {row.id: row.status if row.status != "sent" else population.delivery(row.user_id, day) for row in rows}
    for status in ("failed", "unknown"):
        ids = [send_id for send_id, fate in fates.items() if fate == status]
        if ids:
            db.execute(_MARK_DELIVERY_SQL, {"status": status, "ids": ids})
    for row in rows:
        population.decide(row.user_id, row.status != "holdout", fates[row.id] == "sent", row.variant, day)
    unsubscribed = [row.id for row in rows if fates[row.id] == "sent" and population.unsubscribes(row.user_id, day)]
    if unsubscribed:
        db.execute(_UNSUBSCRIBE_SQL, {"ids": unsubscribed, "at": _morning_after(day) + timedelta(hours=2)})


def _morning_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(9), UTC)


def _create_users(db: AppDatabase, config: SimulationConfig) -> None:
    signed_up = datetime.combine(FIRST_DAY - timedelta(days=WARMUP_DAYS + 30), time(10), UTC)
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, email, name, created_at) "
                "SELECT g, 'sim' || g || '@example.com', 'Sim User ' || g, :signed_up FROM generate_series(1, :n) g"
            ),
            {"signed_up": signed_up, "n": config.users},
        )


def _insert_events(db: AppDatabase, rows: list[tuple]) -> None:
    if not rows:
        return
    with db.begin() as conn:
        first_id = conn.execute(sa.text("SELECT COALESCE(max(id), 0) + 1 FROM events")).scalar_one()
        # One multi-row INSERT: one statement, so the trigger runs once per simulated day.
        conn.execute(
            sa.text(
                "INSERT INTO events (id, user_id, event_type, occurred_at) "
                "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:users AS bigint[]), CAST(:types AS text[]), CAST(:times AS timestamptz[]))"
            ),
            {
                "ids": list(range(first_id, first_id + len(rows))),
                "users": [r[0] for r in rows],
                "types": [r[1] for r in rows],
                "times": [r[2] for r in rows],
            },
        )


def format_report(result: SimulationResult) -> str:
    c, truth = result.config, result.truth
    failed, unknown = result.ledger_by_status.get("failed", 0), result.ledger_by_status.get("unknown", 0)
    lines = [
        f"Simulated {c.days} days of {c.users:,} users (seed {c.seed}) through the real daily pipeline, up to {result.last_day}.",
        f"  emails sent {result.emails_sent:,}, failed {failed:,}, unknown {unknown:,}, "
        f"suppressed (never sent) {result.ledger_by_status.get('suppressed', 0):,}, holdout {result.holdout:,}",
        "",
        "Step 1 among users dormant by inactivity, as assigned (failed, unknown and suppressed sends count as emailed), by window:",
        "  window  treated  holdout  treated rate  holdout rate  measured lift (95% CI)          true lift",
    ]
    for window in (1, 7, 14):
        row = result.headline(window)
        if window != MODELLED_WINDOW_DAYS:
            # The model decides returns for the 7-day window only: other windows measure its artefacts.
            lines.append(
                f"  {window:>4}d   not modelled (the model defines returns within {MODELLED_WINDOW_DAYS} days only): no lift"
            )
            continue
        if row is None or row["lift"] is None:
            lines.append(f"  {window:>4}d   (no closed windows yet)")
            continue
        true_lift = f"{truth.intention_to_treat:+.1%}" if truth.intention_to_treat is not None else "n/a"
        lines.append(
            f"  {window:>4}d  {row['treated']:>7,}  {row['holdout']:>7,}  {row['treated_rate']:>12.1%}  {row['holdout_rate']:>12.1%}"
            f"  {row['lift']:+.1%} ({row['lift_ci_low']:+.1%} .. {row['lift_ci_high']:+.1%})  {true_lift:>14}"
        )
    headline = result.headline(MODELLED_WINDOW_DAYS)
    if headline and headline["lift_ci_low"] is not None and truth.intention_to_treat is not None:
        covered = headline["lift_ci_low"] <= truth.intention_to_treat <= headline["lift_ci_high"]
        lines.append("")
        lines.append(
            f"The 95% interval {'covers' if covered else 'MISSES'} the true intention-to-treat lift of "
            f"{truth.intention_to_treat:+.1%} (uplift {c.true_uplift:+.1%} per effective email, less fatigue and "
            f"failed sends) and {'excludes' if headline['lift_ci_low'] > 0 or headline['lift_ci_high'] < 0 else 'includes'} zero."
        )
        if headline.get("per_protocol_lift") is not None and truth.per_protocol is not None:
            lines.append(
                f"Per protocol (secondary, delivered emails only): measured {headline['per_protocol_lift']:+.1%}, "
                f"true {truth.per_protocol:+.1%}."
            )
        if truth.baseline_imbalance is not None:
            lines.append(
                f"Baseline imbalance between the arms (chance of returning without an email, email arm minus "
                f"holdout): {truth.baseline_imbalance:+.2%}; near zero when both arms are filtered alike."
            )
    if result.variant_sends_by_week:
        lines.append("")
        lines.append(
            "Step 1 emails by variant and week: "
            + "; ".join(
                f"week {week}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
                for week, counts in sorted(result.variant_sends_by_week.items())
            )
        )
    return "\n".join(lines)
