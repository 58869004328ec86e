"""The simulator's synthetic population and what it is asked (`SimulationConfig`), with the truth it knows.

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
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import numpy as np

from retention_pipeline.errors import SettingsError

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
    daily_activity_probability: float = 0.6  # an engaged user is active on a given day
    daily_quit_probability: float = 0.03  # an engaged user goes quiet on a given day
    background_return_probability: float = 0.01  # a quiet user of average propensity nobody decided about comes back on a day
    base_return_7d: float = 0.20  # mean chance of a quiet user coming back within 7 days of a decision...
    true_uplift: float = 0.10  # ...plus this much when emailed (any variant without its own)
    variant_uplifts: dict[str, float] = field(default_factory=dict)
    adaptive_allocation: bool = False
    propensity_concentration: float = 4.0  # Beta(a + b = this) around base_return_7d: smaller, more unequal users
    fatigue_half_life_days: float = 30.0  # a new email's effect is (1 - 0.5 ** (days since the last delivered / this)); 0: none
    failed_send_share: float = 0.0  # sends the provider rejects (status failed, no effect)
    unknown_send_share: float = 0.0  # sends whose fate is unknown (status unknown, no effect)
    unsubscribe_share: float = 0.0  # delivered emails after which the user unsubscribes (on average)

    def __post_init__(self) -> None:
        problems = []
        if self.days < 1:
            problems.append(f"days must be at least 1 (got {self.days})")
        if self.users < 1:
            problems.append(f"users must be at least 1 (got {self.users})")
        for name in (
            "daily_activity_probability",
            "daily_quit_probability",
            "background_return_probability",
            "base_return_7d",
            "failed_send_share",
            "unknown_send_share",
            "unsubscribe_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} is a probability in [0, 1] (got {getattr(self, name)})")
        if self.failed_send_share + self.unknown_send_share > 1.0:
            problems.append("failed_send_share + unknown_send_share cannot exceed 1")
        for name, uplift in {
            "uplift": self.true_uplift,
            **{f"uplift of {v}": u for v, u in self.variant_uplifts.items()},
        }.items():
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
    baseline: float | None  # None: the user was still engaged (a declining one), nothing was decided
    effect: float


@dataclass(frozen=True)
class Truth:
    """What the measured 7-day lift should find, over exactly the rows the pipeline measured."""

    intention_to_treat: float | None  # mean effect over the email arm, failed and unknown sends included
    per_protocol: float | None  # mean effect over delivered emails
    baseline_imbalance: float | None  # mean chance without an email: email arm minus holdout (0 when both arms are alike)


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
        return next(
            (
                row
                for row in self.performance
                if row["step"] == 1
                and row["variant"] == variant
                and row["segment"] == segment
                and row["window_days"] == window_days
            ),
            None,
        )


_PURPOSES = ("background", "quit", "active", "fate", "when", "delivery", "unsubscribe")


class Population:
    """Per-user state; every random draw is keyed by (seed, purpose, user, day), so order never matters."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.propensity = dict(zip(range(1, config.users + 1), _propensities(config), strict=True))
        self.engaged = {user_id: True for user_id in range(1, config.users + 1)}
        self.return_on: dict[int, date] = {}  # a decided return day for quiet users
        self.quiet_until: dict[int, date] = {}  # decided not to return within the window: no background return either
        self.last_delivered: dict[int, date] = {}
        self.decisions: dict[tuple[int, date], Decision] = {}
        self.fated_return: dict[tuple[int, date], bool] = {}  # whether a decided user's fate is to come back in the window
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
                moment = datetime.combine(day, time(8), UTC) + timedelta(minutes=rng.randint(0, 12 * 60))
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
