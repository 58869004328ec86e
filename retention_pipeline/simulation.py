"""A synthetic population lived day by day through the real daily pipeline, with a known true uplift.

Every simulated day: active users produce events (inserted into `events`, so the trigger runs), the
clock is set to the next morning, and the real `daily_retention_job` runs as a Dagster run (snapshot,
dormant users, emails through a local Resend-like server, outcomes, performance). Each user who gets
a ledger row that day (email or holdout) has a fate drawn: they come back within 7 days with the base
probability, plus the true uplift of the variant if they were emailed. So the 7-day lift the pipeline
measures can be compared with the truth.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

import sqlalchemy as sa
from dagster import DagsterInstance

from retention_pipeline import clock, demo_data
from retention_pipeline.embedded import EmbeddedPostgres
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.outreach.allocation import hash_unit
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.resources import AppDatabase
from retention_pipeline.runner import run_job
from retention_pipeline.schema import install_schema
from retention_pipeline.testing.resend_server import FakeResend

FIRST_DAY = date(2026, 3, 2)
WARMUP_DAYS = 21
EVENT_TYPES = ("login", "view_dashboard", "create_task", "complete_task", "comment")


@dataclass(frozen=True)
class SimulationConfig:
    days: int = 60
    users: int = 3000
    seed: int = 7
    daily_activity_probability: float = 0.6   # an engaged user is active on a given day
    daily_quit_probability: float = 0.03      # an engaged user goes quiet on a given day
    background_return_probability: float = 0.01  # a quiet user nobody decided about comes back on a day
    base_return_7d: float = 0.20              # a quiet user comes back within 7 days of the decision...
    true_uplift: float = 0.10                 # ...plus this much when emailed (any variant without its own)
    variant_uplifts: dict[str, float] = field(default_factory=dict)
    adaptive_allocation: bool = False


@dataclass
class SimulationResult:
    config: SimulationConfig
    last_day: date
    performance: list[dict]
    variant_sends_by_week: dict[int, dict[str, int]]
    emails_sent: int
    holdout: int

    def headline(self, window_days: int = 7, segment: str = "inactive", variant: str = "all") -> dict | None:
        """Step 1 among users dormant by inactivity: the population the true uplift is defined on."""
        return next((row for row in self.performance if row["step"] == 1 and row["variant"] == variant
                     and row["segment"] == segment and row["window_days"] == window_days), None)


class Population:
    """Per-user state; every random draw is keyed by (seed, user, day, purpose), so order never matters."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.engaged = {user_id: True for user_id in range(1, config.users + 1)}
        self.return_on: dict[int, date] = {}   # a decided return day for quiet users
        self.quiet_until: dict[int, date] = {}  # decided not to return within the window: no background return either
        self.decided: set[tuple[int, date]] = set()

    def _draw(self, *parts) -> float:
        return hash_unit("sim", self.config.seed, *parts)

    def events_for(self, day: date) -> list[tuple]:
        rows = []
        for user_id, engaged in self.engaged.items():
            returning = not engaged and self.return_on.get(user_id) == day
            if returning:
                del self.return_on[user_id]
            elif not engaged and self._may_come_back_by_itself(user_id, day):
                returning = self._draw("background", user_id, day) < self.config.background_return_probability
            if returning:
                self.engaged[user_id] = engaged = True
            if not engaged:
                continue
            if not returning and self._draw("quit", user_id, day) < self.config.daily_quit_probability:
                self.engaged[user_id] = False
                continue
            if returning or self._draw("active", user_id, day) < self.config.daily_activity_probability:
                rng = random.Random(f"{self.config.seed}:{user_id}:{day}")
                for _ in range(rng.randint(1, 4)):
                    moment = datetime.combine(day, time(8), timezone.utc) + timedelta(minutes=rng.randint(0, 12 * 60))
                    rows.append((user_id, rng.choice(EVENT_TYPES), moment))
        return rows

    def _may_come_back_by_itself(self, user_id: int, day: date) -> bool:
        return user_id not in self.return_on and day > self.quiet_until.get(user_id, date.min)

    def decide(self, user_id: int, status: str, variant: str, decided_on: date) -> None:
        """Fate of a user who got an email (status sent) or was held out, decided the morning after `decided_on`."""
        if (user_id, decided_on) in self.decided:
            return
        self.decided.add((user_id, decided_on))
        uplift = self.config.variant_uplifts.get(variant, self.config.true_uplift) if status == "sent" else 0.0
        if self.engaged[user_id]:
            return  # a still-active user (declining, not gone): nothing to decide
        if self._draw("fate", user_id, decided_on) < self.config.base_return_7d + uplift:
            # The send goes out at 09:00 the morning after `decided_on`; returning on one of the six
            # days after that keeps every return inside the 7-day window, after the send.
            self.return_on[user_id] = decided_on + timedelta(days=2 + int(self._draw("when", user_id, decided_on) * 6))
        else:
            self.quiet_until[user_id] = decided_on + timedelta(days=8)


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
    run_config = {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": {
        "campaign": "sim", "adaptive_allocation": config.adaptive_allocation,
        "postal_address": "Simulation only, 1 Example Street, Springfield"}}}}}}
    with FakeResend(rate=0) as provider:
        sender = ResendSender(api_key="re_sim", api_url=provider.url, requests_per_second=1000, backoff_base_seconds=0.01)
        clock.set_now(_morning_after(FIRST_DAY - timedelta(days=1)))
        run_job(instance, "daily_retention_job", first.isoformat(), (FIRST_DAY - timedelta(days=1)).isoformat(),
                run_config=run_config, resources={"email_sender": sender}, quiet=True)
        _decide_fates(db, population, FIRST_DAY - timedelta(days=1))
        last_day = FIRST_DAY + timedelta(days=config.days - 1)
        for index in range(config.days):
            day = FIRST_DAY + timedelta(days=index)
            _insert_events(db, population.events_for(day))
            clock.set_now(_morning_after(day))
            run_job(instance, "daily_retention_job", day.isoformat(), run_config=run_config,
                    resources={"email_sender": sender}, quiet=True)
            _decide_fates(db, population, day)
            if (index + 1) % 10 == 0 or index + 1 == config.days:
                say(f"  simulated {index + 1}/{config.days} days (up to {day})")
    clock.set_now(None)
    performance = [dict(r._mapping) for r in db.fetch_all(_PERFORMANCE_SQL, {"as_of": last_day})]
    weeks = {}
    for row in db.fetch_all(_VARIANT_WEEKS_SQL, {"first": FIRST_DAY}):
        weeks.setdefault(row.week, {})[row.variant] = row.emails
    totals = {r.status: r.emails for r in db.fetch_all("SELECT status, count(*) AS emails FROM {rs}.email_sends GROUP BY status")}
    return SimulationResult(config, last_day, performance, weeks, totals.get("sent", 0), totals.get("holdout", 0))


_DECISIONS_SQL = """
SELECT user_id, status, variant FROM {rs}.email_sends
WHERE as_of_date = :as_of AND campaign = :campaign AND status IN ('sent', 'holdout') ORDER BY user_id, step
"""
_PERFORMANCE_SQL = "SELECT * FROM {rs}.campaign_performance WHERE as_of_date = :as_of ORDER BY step, variant, segment, window_days"
_VARIANT_WEEKS_SQL = """
SELECT (as_of_date - CAST(:first AS date)) / 7 AS week, variant, count(*) AS emails
FROM {rs}.email_sends WHERE status = 'sent' AND step = 1 GROUP BY 1, 2 ORDER BY 1, 2
"""


def _decide_fates(db: AppDatabase, population: Population, day: date) -> None:
    for row in db.fetch_all(_DECISIONS_SQL, {"as_of": day, "campaign": "sim"}):
        population.decide(row.user_id, row.status, row.variant, day)


def _morning_after(day: date) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(9), timezone.utc)


def _create_users(db: AppDatabase, config: SimulationConfig) -> None:
    signed_up = datetime.combine(FIRST_DAY - timedelta(days=WARMUP_DAYS + 30), time(10), timezone.utc)
    with db.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO users (id, email, name, created_at) "
            "SELECT g, 'sim' || g || '@example.com', 'Sim User ' || g, :signed_up FROM generate_series(1, :n) g"
        ), {"signed_up": signed_up, "n": config.users})


def _insert_events(db: AppDatabase, rows: list[tuple]) -> None:
    if not rows:
        return
    with db.begin() as conn:
        first_id = conn.execute(sa.text("SELECT COALESCE(max(id), 0) + 1 FROM events")).scalar_one()
        # One multi-row INSERT: one statement, so the trigger runs once per simulated day.
        conn.execute(sa.text(
            "INSERT INTO events (id, user_id, event_type, occurred_at) "
            "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:users AS bigint[]), CAST(:types AS text[]), CAST(:times AS timestamptz[]))"
        ), {"ids": list(range(first_id, first_id + len(rows))), "users": [r[0] for r in rows],
            "types": [r[1] for r in rows], "times": [r[2] for r in rows]})


def format_report(result: SimulationResult) -> str:
    c = result.config
    lines = [
        f"Simulated {c.days} days of {c.users:,} users (seed {c.seed}) through the real daily pipeline, up to {result.last_day}.",
        f"  emails sent {result.emails_sent:,}, holdout {result.holdout:,}",
        "",
        "Step 1 among users dormant by inactivity, by attribution window:",
        "  window  treated  holdout  treated rate  holdout rate  measured lift (95% CI)          true lift",
    ]
    for window in (1, 7, 14):
        row = result.headline(window)
        if row is None or row["lift"] is None:
            lines.append(f"  {window:>4}d   (no closed windows yet)")
            continue
        truth = f"{c.true_uplift:+.1%}" if window == 7 else "(defined for 7d)"
        lines.append(
            f"  {window:>4}d  {row['treated']:>7,}  {row['holdout']:>7,}  {row['treated_rate']:>12.1%}  {row['holdout_rate']:>12.1%}"
            f"  {row['lift']:+.1%} ({row['lift_ci_low']:+.1%} .. {row['lift_ci_high']:+.1%})  {truth:>14}"
        )
    headline = result.headline(7)
    if headline and headline["lift_ci_low"] is not None:
        covered = headline["lift_ci_low"] <= c.true_uplift <= headline["lift_ci_high"]
        lines.append("")
        lines.append(f"The 95% interval {'covers' if covered else 'MISSES'} the true uplift of {c.true_uplift:+.1%}"
                     f" and {'excludes' if headline['lift_ci_low'] > 0 or headline['lift_ci_high'] < 0 else 'includes'} zero.")
    if result.variant_sends_by_week:
        lines.append("")
        lines.append("Step 1 emails by variant and week: " + "; ".join(
            f"week {week}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
            for week, counts in sorted(result.variant_sends_by_week.items())))
    return "\n".join(lines)
