"""A synthetic population lived day by day through the real daily pipeline, with a known true uplift.

Every simulated day: active users produce events (inserted into `events`, so the trigger runs), the
clock is set to the next morning, and the real `daily_retention_job` runs as a Dagster run (snapshot,
dormant users, emails through a local Resend-like server, outcomes, performance).

Behaviour depends on the user and their history, so a pipeline that filters its arms differently shows
up as a wrong lift:
- every user has a lasting propensity to come back (Beta-distributed around `base_return_7d`): it sets
  both their chance of coming back within 7 days of a decision and their daily chance of coming back
  on their own, so some users cycle through dormancy episodes quickly and others hardly ever return;
- engaged users go quiet again (`daily_quit_probability`), which starts a new dormancy episode;
- a delivered email raises the chance of coming back within 7 days by the uplift, scaled down by the
  user's last delivered email: its effect on a new one decays with `fatigue_half_life_days`;
- a share of sends fails or ends unknown (`failed_send_share`, `unknown_send_share`): the ledger row
  is marked so, and such an email has no effect;
- a delivered email makes some users unsubscribe (`unsubscribe_share`, likelier for users unlikely to
  come back): their address is suppressed from then on, so a later assignment of theirs to the email arm
  is recorded as `suppressed`, never sent, and has no effect.
Each ledger row (email or holdout) gets a fate drawn from that user's state, so the simulator knows the
true effect of every assignment: the truth the intention-to-treat lift must find is the average effect
over the email arm's rows (failed sends and suppressed addresses included, with no effect); per
protocol, over delivered ones.

`model_lift` runs the same population through a fast pure-Python model of the pipeline's arm logic
(dormancy episodes, frequency cap, step 2, the arm drawn per step and episode, suppression recorded
after the draw) and the same `lift` function: the benchmark's many seeds use it, and it can re-create
the old design (one arm per user, with the old frequency cap or suppression filtered before the draw)
to show its bias.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import sqlalchemy as sa
from dagster import DagsterInstance

from retention_pipeline import clock, demo_data
from retention_pipeline.activity.trigger import install_trigger
from retention_pipeline.embedded import EmbeddedPostgres
from retention_pipeline.errors import SettingsError
from retention_pipeline.outcomes.stats import Lift, lift
from retention_pipeline.outreach.allocation import hash_unit, in_holdout
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.resources import AppDatabase
from retention_pipeline.runner import run_job
from retention_pipeline.schema import install_schema
from retention_pipeline.segments.config import DormancyThresholds
from retention_pipeline.settings import PROJECT_TIMEZONE
from retention_pipeline.testing.resend_server import FakeResend

FIRST_DAY = date(2026, 3, 2)
WARMUP_DAYS = 21
EVENT_TYPES = ("login", "view_dashboard", "create_task", "complete_task", "comment")
CAMPAIGN = "sim"
# The window the model defines: a decided return falls on one of the six days after the morning send.
MODELLED_WINDOW_DAYS = 7


class SimulationConfigError(SettingsError):
    """A simulation setting the model cannot run with; the message names every bad one."""


@dataclass(frozen=True)
class SimulationConfig:
    days: int = 60
    users: int = 3000
    seed: int = 7
    daily_activity_probability: float = 0.6   # an engaged user is active on a given day
    daily_quit_probability: float = 0.03      # an engaged user goes quiet on a given day
    background_return_probability: float = 0.01  # a quiet user of average propensity nobody decided about comes back on a day
    base_return_7d: float = 0.20              # mean chance of a quiet user coming back within 7 days of a decision...
    true_uplift: float = 0.10                 # ...plus this much when emailed (any variant without its own)
    variant_uplifts: dict[str, float] = field(default_factory=dict)
    adaptive_allocation: bool = False
    propensity_concentration: float = 4.0     # Beta(a + b = this) around base_return_7d: smaller, more unequal users
    fatigue_half_life_days: float = 30.0      # a new email's effect is (1 - 0.5 ** (days since the last delivered / this)); 0: none
    failed_send_share: float = 0.0            # sends the provider rejects (status failed, no effect)
    unknown_send_share: float = 0.0           # sends whose fate is unknown (status unknown, no effect)
    unsubscribe_share: float = 0.0            # delivered emails after which the user unsubscribes (on average)

    def __post_init__(self) -> None:
        problems = []
        if self.days < 1:
            problems.append(f"days must be at least 1 (got {self.days})")
        if self.users < 1:
            problems.append(f"users must be at least 1 (got {self.users})")
        for name in ("daily_activity_probability", "daily_quit_probability", "background_return_probability",
                     "base_return_7d", "failed_send_share", "unknown_send_share", "unsubscribe_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} is a probability in [0, 1] (got {getattr(self, name)})")
        if self.failed_send_share + self.unknown_send_share > 1.0:
            problems.append("failed_send_share + unknown_send_share cannot exceed 1")
        for name, uplift in {"uplift": self.true_uplift, **{f"uplift of {v}": u for v, u in self.variant_uplifts.items()}}.items():
            if not -1.0 <= uplift <= 1.0:
                problems.append(f"{name} must be between -1 and 1 (got {uplift})")
            elif not 0.0 <= self.base_return_7d + uplift <= 1.0:
                problems.append(f"base return {self.base_return_7d} plus {name} {uplift:+} is not a probability")
        if self.propensity_concentration <= 0:
            problems.append(f"propensity_concentration must be positive (got {self.propensity_concentration})")
        if self.fatigue_half_life_days < 0:
            problems.append(f"fatigue_half_life_days cannot be negative (got {self.fatigue_half_life_days})")
        if problems:
            raise SimulationConfigError("invalid simulation: " + "; ".join(problems) + ".")

    def uplift_of(self, variant: str) -> float:
        return self.variant_uplifts.get(variant, self.true_uplift)


@dataclass(frozen=True)
class Decision:
    """One ledger row's fate as the model drew it: the chance without an email now, the email's effect."""

    treated: bool
    delivered: bool
    baseline: float | None   # None: the user was still engaged (a declining one), nothing was decided
    effect: float


@dataclass(frozen=True)
class Truth:
    """What the measured 7-day lift should find, over exactly the rows the pipeline measured."""

    intention_to_treat: float | None   # mean effect over the email arm, failed and unknown sends included
    per_protocol: float | None         # mean effect over delivered emails
    baseline_imbalance: float | None   # mean chance without an email: email arm minus holdout (0 when both arms are alike)


@dataclass
class SimulationResult:
    config: SimulationConfig
    last_day: date
    performance: list[dict]
    variant_sends_by_week: dict[int, dict[str, int]]
    emails_sent: int
    holdout: int
    truth: Truth = Truth(None, None, None)
    ledger_by_status: dict[str, int] = field(default_factory=dict)

    def headline(self, window_days: int = MODELLED_WINDOW_DAYS, segment: str = "inactive", variant: str = "all") -> dict | None:
        """Step 1 among users dormant by inactivity: the population the true uplift is defined on."""
        return next((row for row in self.performance if row["step"] == 1 and row["variant"] == variant
                     and row["segment"] == segment and row["window_days"] == window_days), None)


_PURPOSES = ("background", "quit", "active", "fate", "when", "delivery", "unsubscribe")


class Population:
    """Per-user state; every random draw is keyed by (seed, purpose, user, day), so order never matters."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.propensity = dict(zip(range(1, config.users + 1), _propensities(config), strict=True))
        self.engaged = {user_id: True for user_id in range(1, config.users + 1)}
        self.return_on: dict[int, date] = {}   # a decided return day for quiet users
        self.quiet_until: dict[int, date] = {}  # decided not to return within the window: no background return either
        self.last_delivered: dict[int, date] = {}
        self.decisions: dict[tuple[int, date], Decision] = {}
        self.fated_return: dict[tuple[int, date], bool] = {}   # whether a decided user's fate is to come back in the window
        self._daily_draws: dict[tuple[str, date], np.ndarray] = {}

    def _draw(self, purpose: str, user_id: int, day: date) -> float:
        """A uniform draw fixed by (seed, purpose, user, day): whole days are drawn at once for speed."""
        key = (purpose, day)
        if key not in self._daily_draws:
            if len(self._daily_draws) > 64:
                self._daily_draws.clear()
            entropy = [self.config.seed, _PURPOSES.index(purpose), day.toordinal()]
            self._daily_draws[key] = np.random.default_rng(entropy).random(self.config.users + 1)
        return float(self._daily_draws[key][user_id])

    def active_users(self, day: date) -> list[int]:
        """Live one day: who comes back, who goes quiet, and who is active (in user order)."""
        active = []
        for user_id, engaged in self.engaged.items():
            returning = not engaged and self.return_on.get(user_id) == day
            if returning:
                del self.return_on[user_id]
            elif not engaged and self._may_come_back_by_itself(user_id, day):
                returning = self._draw("background", user_id, day) < self._background_hazard(user_id)
            if returning:
                self.engaged[user_id] = engaged = True
            if not engaged:
                continue
            if not returning and self._draw("quit", user_id, day) < self.config.daily_quit_probability:
                self.engaged[user_id] = False
                continue
            if returning or self._draw("active", user_id, day) < self.config.daily_activity_probability:
                active.append(user_id)
        return active

    def events_for(self, day: date) -> list[tuple]:
        rows = []
        for user_id in self.active_users(day):
            rng = random.Random(f"{self.config.seed}:{user_id}:{day}")
            for _ in range(rng.randint(1, 4)):
                moment = datetime.combine(day, time(8), timezone.utc) + timedelta(minutes=rng.randint(0, 12 * 60))
                rows.append((user_id, rng.choice(EVENT_TYPES), moment))
        return rows

    def _background_hazard(self, user_id: int) -> float:
        base = self.config.base_return_7d
        relative = self.propensity[user_id] / base if base > 0 else 1.0
        return min(1.0, self.config.background_return_probability * relative)

    def _may_come_back_by_itself(self, user_id: int, day: date) -> bool:
        return user_id not in self.return_on and day > self.quiet_until.get(user_id, date.min)

    def decide(self, user_id: int, treated: bool, delivered: bool, variant: str, decided_on: date) -> None:
        """Fate of a user with a ledger row (email or holdout), decided the morning after `decided_on`."""
        if (user_id, decided_on) in self.decisions:
            return
        if self.engaged[user_id]:
            # A still-active user (declining, not gone): nothing to decide, and the email changes nothing.
            self.decisions[(user_id, decided_on)] = Decision(treated, delivered, None, 0.0)
            return
        baseline = self.propensity[user_id]
        effect = self.config.uplift_of(variant) * self._freshness(user_id, decided_on) if treated and delivered else 0.0
        self.decisions[(user_id, decided_on)] = Decision(treated, delivered, baseline, effect)
        if delivered:
            self.last_delivered[user_id] = decided_on
        self.fated_return[(user_id, decided_on)] = comes_back = self._draw("fate", user_id, decided_on) < baseline + effect
        if comes_back:
            # The send goes out at 09:00 the morning after `decided_on`; returning on one of the six
            # days after that keeps every return inside the 7-day window, after the send.
            self.return_on[user_id] = decided_on + timedelta(days=2 + int(self._draw("when", user_id, decided_on) * 6))
        else:
            self.quiet_until[user_id] = decided_on + timedelta(days=MODELLED_WINDOW_DAYS + 1)

    def _freshness(self, user_id: int, day: date) -> float:
        """How much of its full effect an email has, given the user's last delivered one."""
        last, half_life = self.last_delivered.get(user_id), self.config.fatigue_half_life_days
        if last is None or half_life == 0:
            return 1.0
        return 1.0 - 0.5 ** ((day - last).days / half_life)

    def delivery(self, user_id: int, day: date) -> str:
        """What became of an email the pipeline sent: sent, failed or unknown."""
        draw = self._draw("delivery", user_id, day)
        if draw < self.config.failed_send_share:
            return "failed"
        if draw < self.config.failed_send_share + self.config.unknown_send_share:
            return "unknown"
        return "sent"

    def unsubscribes(self, user_id: int, day: date) -> bool:
        """Whether a delivered email makes the user unsubscribe: `unsubscribe_share` on average, likelier the
        less likely the user is to come back (so removing them from one arm only would tilt it)."""
        share, base = self.config.unsubscribe_share, self.config.base_return_7d
        chance = share * (1 - self.propensity[user_id]) / (1 - base) if base < 1 else share
        return self._draw("unsubscribe", user_id, day) < chance

    def truth(self, rows: list[tuple[int, date]]) -> Truth:
        """The truth over these (user, as-of day) ledger rows: the ones a measured figure counted."""
        decided = [self.decisions[row] for row in rows if row in self.decisions]
        treated = [d for d in decided if d.treated]
        delivered = [d for d in treated if d.delivered]
        baselines = {arm: [d.baseline for d in decided if d.treated == arm and d.baseline is not None] for arm in (True, False)}
        return Truth(
            float(np.mean([d.effect for d in treated])) if treated else None,
            float(np.mean([d.effect for d in delivered])) if delivered else None,
            float(np.mean(baselines[True]) - np.mean(baselines[False])) if baselines[True] and baselines[False] else None,
        )


def _propensities(config: SimulationConfig) -> np.ndarray:
    """Lasting chances of coming back within 7 days, kept where every uplift still gives a probability."""
    rng = np.random.default_rng(config.seed)
    mean = config.base_return_7d
    if 0.0 < mean < 1.0:
        draws = rng.beta(mean * config.propensity_concentration, (1 - mean) * config.propensity_concentration, config.users)
    else:
        draws = np.full(config.users, mean)
    uplifts = [config.true_uplift, *config.variant_uplifts.values()]
    return np.clip(draws, max(0.0, -min(uplifts)), min(1.0, 1.0 - max(uplifts)))


@dataclass(frozen=True)
class ModelResult:
    """The fast model's step-1, 7-day figures among users dormant by inactivity."""

    treated: int
    treated_returned: int
    holdout: int
    holdout_returned: int
    measured: Lift
    truth: Truth


# Ledger statuses the frequency cap counts: every assignment (the pipeline), or the old rule's real sends.
_FREQUENCY_CAP_COUNTS = {True: ("pending", "sent", "failed", "unknown", "suppressed", "holdout"),
                         False: ("pending", "sent", "unknown")}


def model_lift(config: SimulationConfig, symmetric: bool = True, cooldown_days: int | None = None,
               arm_per_user: bool = False, suppress_before_assignment: bool = False) -> ModelResult:
    """The population through a pure-Python model of the pipeline's arm logic, measured with `lift`.

    Same population, dormancy (inactive for `dormant_after_days` up to `lost_after_days`), episodes
    (consecutive dormant days), step 1 once per episode and step 2 `delay_days` later while still
    dormant, the frequency cap, the arm drawn by `in_holdout` for each step of each episode, suppression
    (addresses unsubscribed after a delivered email) recorded after the draw, closed 7-day windows.
    The old design, to show its bias: `arm_per_user` draws one arm per user for all their episodes;
    `symmetric=False` re-creates the old frequency cap, which counted only real sends (pending, sent,
    unknown); `suppress_before_assignment` skips suppressed users before any arm is drawn.
    Only inactivity-dormant users, one variant."""
    campaign, dormancy = CampaignConfig(campaign=CAMPAIGN), DormancyThresholds()
    cooldown = campaign.cooldown_days if cooldown_days is None else cooldown_days
    step_two_delay = campaign.steps[1].delay_days if len(campaign.steps) > 1 else None
    population = Population(config)
    last_active: dict[int, date] = {}
    active_days: dict[int, set[date]] = {}
    episode: dict[int, date] = {}           # current episode start of users dormant today
    rows: dict[tuple[int, int, date], tuple[date, str]] = {}   # (user, step, episode) -> (as-of day, status)
    history: dict[int, list[tuple[date, str]]] = {}            # the user's rows, for the frequency cap
    suppressed: set[int] = set()                               # users who unsubscribed
    first = FIRST_DAY - timedelta(days=WARMUP_DAYS)
    last_day = FIRST_DAY + timedelta(days=config.days - 1)
    for day in (first + timedelta(days=n) for n in range((last_day - first).days + 1)):
        for user_id in population.active_users(day):
            last_active[user_id] = day
            active_days.setdefault(user_id, set()).add(day)
        dormant_today = {u for u, seen in last_active.items()
                         if dormancy.dormant_after_days <= (day - seen).days <= dormancy.lost_after_days}
        episode = {u: episode.get(u, day) for u in dormant_today}
        if day < FIRST_DAY - timedelta(days=1):
            continue  # the warm-up's backfill sends nothing
        unsubscribed_today = []
        for user_id in sorted(dormant_today):
            start = episode[user_id]
            for step in (1, 2):
                if (user_id, step, start) in rows:
                    continue
                if step == 2:
                    previous = rows.get((user_id, 1, start))
                    if step_two_delay is None or previous is None or previous[0] > day - timedelta(days=step_two_delay):
                        continue
                if suppress_before_assignment and user_id in suppressed:
                    continue
                if any(status in _FREQUENCY_CAP_COUNTS[symmetric] and when > day - timedelta(days=cooldown) for when, status in history.get(user_id, [])):
                    continue
                held_out = (hash_unit("holdout", CAMPAIGN, user_id) < campaign.holdout_share if arm_per_user
                            else in_holdout(CAMPAIGN, step, user_id, start, campaign.holdout_share))
                status = ("holdout" if held_out else "suppressed" if user_id in suppressed
                          else population.delivery(user_id, day))
                rows[(user_id, step, start)] = (day, status)
                history.setdefault(user_id, []).append((day, status))
                population.decide(user_id, not held_out, status == "sent", "all", day)
                if status == "sent" and population.unsubscribes(user_id, day):
                    unsubscribed_today.append(user_id)
        suppressed.update(unsubscribed_today)   # the unsubscribe link is clicked after the morning's send
    closed = [(u, when, status) for (u, step, _), (when, status) in rows.items()
              if step == 1 and when <= last_day - timedelta(days=MODELLED_WINDOW_DAYS + 1)]
    return _measure(population, closed, active_days)


def _measure(population: Population, rows: list[tuple[int, date, str]], active_days: dict[int, set[date]]) -> ModelResult:
    # A decided user came back in the window when their fate said so; a still-engaged one when active on
    # one of the six full days after the morning send.
    returned = {(u, when): population.fated_return.get((u, when),
                                                       any(when + timedelta(days=k) in active_days.get(u, ()) for k in range(2, 8)))
                for u, when, _ in rows}
    treated = [(u, when) for u, when, status in rows if status != "holdout"]
    holdout = [(u, when) for u, when, status in rows if status == "holdout"]
    t_ret, h_ret = sum(returned[r] for r in treated), sum(returned[r] for r in holdout)
    return ModelResult(len(treated), t_ret, len(holdout), h_ret, lift(t_ret, len(treated), h_ret, len(holdout)),
                       population.truth(treated + holdout))


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
        "campaign": CAMPAIGN, "adaptive_allocation": config.adaptive_allocation,
        "postal_address": "Simulation only, 1 Example Street, Springfield"}}}}}}
    with FakeResend(rate=0) as provider:
        sender = ResendSender(api_key="re_sim", api_url=provider.url, requests_per_second=1000, backoff_base_seconds=0.01)
        clock.set_now(_morning_after(FIRST_DAY - timedelta(days=1)))
        run_job(instance, "daily_retention_job", first.isoformat(), (FIRST_DAY - timedelta(days=1)).isoformat(),
                run_config=run_config, resources={"email_sender": sender}, quiet=True)
        _settle_sends(db, population, FIRST_DAY - timedelta(days=1))
        last_day = FIRST_DAY + timedelta(days=config.days - 1)
        for index in range(config.days):
            day = FIRST_DAY + timedelta(days=index)
            _insert_events(db, population.events_for(day))
            clock.set_now(_morning_after(day))
            run_job(instance, "daily_retention_job", day.isoformat(), run_config=run_config,
                    resources={"email_sender": sender}, quiet=True)
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
    return SimulationResult(config, last_day, performance, weeks, totals.get("sent", 0), totals.get("holdout", 0),
                            population.truth(measured), totals)


_DECISIONS_SQL = """
SELECT id, user_id, status, variant FROM {rs}.email_sends
WHERE as_of_date = :as_of AND campaign = :campaign AND status IN ('sent', 'suppressed', 'holdout') ORDER BY user_id, step
"""
_MARK_DELIVERY_SQL = """
UPDATE {rs}.email_sends SET status = :status, sent_at = NULL, provider_message_id = NULL,
    error = 'simulated: ' || :status || ' at the provider'
WHERE id = ANY(:ids)
"""
# What the unsubscribe link does (retention_pipeline.flask): the address is suppressed from then on.
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
_PERFORMANCE_SQL = "SELECT * FROM {rs}.campaign_performance WHERE as_of_date = :as_of ORDER BY step, variant, segment, window_days"
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
            lines.append(f"  {window:>4}d   not modelled (the model defines returns within {MODELLED_WINDOW_DAYS} days only): no lift")
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
        lines.append(f"The 95% interval {'covers' if covered else 'MISSES'} the true intention-to-treat lift of "
                     f"{truth.intention_to_treat:+.1%} (uplift {c.true_uplift:+.1%} per effective email, less fatigue and "
                     f"failed sends) and {'excludes' if headline['lift_ci_low'] > 0 or headline['lift_ci_high'] < 0 else 'includes'} zero.")
        if headline.get("per_protocol_lift") is not None and truth.per_protocol is not None:
            lines.append(f"Per protocol (secondary, delivered emails only): measured {headline['per_protocol_lift']:+.1%}, "
                         f"true {truth.per_protocol:+.1%}.")
        if truth.baseline_imbalance is not None:
            lines.append(f"Baseline imbalance between the arms (chance of returning without an email, email arm minus "
                         f"holdout): {truth.baseline_imbalance:+.2%}; near zero when both arms are filtered alike.")
    if result.variant_sends_by_week:
        lines.append("")
        lines.append("Step 1 emails by variant and week: " + "; ".join(
            f"week {week}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items()))
            for week, counts in sorted(result.variant_sends_by_week.items())))
    return "\n".join(lines)
