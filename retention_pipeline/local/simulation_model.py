"""A fast, pure-Python model of the pipeline's arm logic over the simulator's population.

`model_lift` runs the same population through a fast pure-Python model of the pipeline's arm logic
(dormancy episodes, frequency cap, step 2, the arm drawn per step and episode, suppression recorded
after the draw) and the same `lift` function: the benchmark's many seeds use it, and it can re-create
the old design (one arm per user, with the old frequency cap or suppression filtered before the draw)
to show its bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from retention_pipeline.local.simulation_population import (
    CAMPAIGN,
    FIRST_DAY,
    MODELLED_WINDOW_DAYS,
    WARMUP_DAYS,
    Population,
    SimulationConfig,
    Truth,
)
from retention_pipeline.outcomes.stats import Lift, UserSums, clustered_lift, lift
from retention_pipeline.outreach.allocation import hash_unit, in_holdout
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.segments.config import DormancyThresholds


@dataclass(frozen=True)
class ModelResult:
    """The fast model's step-1, 7-day figures among users dormant by inactivity."""

    treated: int
    treated_returned: int
    holdout: int
    holdout_returned: int
    measured: Lift  # clustered by user, as the pipeline reports it
    truth: Truth
    independent_rows: Lift  # the same counts taken as independent rows (the interval before clustering)
    treated_users: UserSums
    holdout_users: UserSums


# Ledger statuses the frequency cap counts: every assignment (the pipeline), or the old rule's real sends.
_FREQUENCY_CAP_COUNTS = {
    True: ("pending", "sent", "failed", "unknown", "suppressed", "holdout"),
    False: ("pending", "sent", "unknown"),
}


def model_lift(
    config: SimulationConfig,
    symmetric: bool = True,
    cooldown_days: int | None = None,
    arm_per_user: bool = False,
    suppress_before_assignment: bool = False,
) -> ModelResult:
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
    episode: dict[int, date] = {}  # current episode start of users dormant today
    rows: dict[tuple[int, int, date], tuple[date, str]] = {}  # (user, step, episode) -> (as-of day, status)
    history: dict[int, list[tuple[date, str]]] = {}  # the user's rows, for the frequency cap
    suppressed: set[int] = set()  # users who unsubscribed
    first = FIRST_DAY - timedelta(days=WARMUP_DAYS)
    last_day = FIRST_DAY + timedelta(days=config.days - 1)
    for day in (first + timedelta(days=n) for n in range((last_day - first).days + 1)):
        for user_id in population.active_users(day):
            last_active[user_id] = day
            active_days.setdefault(user_id, set()).add(day)
        dormant_today = {
            u for u, seen in last_active.items() if dormancy.dormant_after_days <= (day - seen).days <= dormancy.lost_after_days
        }
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
                if any(
                    status in _FREQUENCY_CAP_COUNTS[symmetric] and when > day - timedelta(days=cooldown)
                    for when, status in history.get(user_id, [])
                ):
                    continue
                held_out = (
                    hash_unit("holdout", CAMPAIGN, user_id) < campaign.holdout_share
                    if arm_per_user
                    else in_holdout(CAMPAIGN, step, user_id, start, campaign.holdout_share)
                )
                status = "holdout" if held_out else "suppressed" if user_id in suppressed else population.delivery(user_id, day)
                rows[(user_id, step, start)] = (day, status)
                history.setdefault(user_id, []).append((day, status))
                population.decide(user_id, not held_out, status == "sent", "all", day)
                if status == "sent" and population.unsubscribes(user_id, day):
                    unsubscribed_today.append(user_id)
        suppressed.update(unsubscribed_today)  # the unsubscribe link is clicked after the morning's send
    closed = [
        (u, when, status)
        for (u, step, _), (when, status) in rows.items()
        if step == 1 and when <= last_day - timedelta(days=MODELLED_WINDOW_DAYS + 1)
    ]
    return _measure(population, closed, active_days)


def _measure(population: Population, rows: list[tuple[int, date, str]], active_days: dict[int, set[date]]) -> ModelResult:
    # A decided user came back in the window when their fate said so; a still-engaged one when active on
    # one of the six full days after the morning send.
    returned = {
        (u, when): population.fated_return.get(
            (u, when), any(when + timedelta(days=k) in active_days.get(u, ()) for k in range(2, 8))
        )
        for u, when, _ in rows
    }
    treated = [(u, when) for u, when, status in rows if status != "holdout"]
    holdout = [(u, when) for u, when, status in rows if status == "holdout"]
    t_ret, h_ret = sum(returned[r] for r in treated), sum(returned[r] for r in holdout)
    treated_users, holdout_users = _user_sums(treated, returned), _user_sums(holdout, returned)
    return ModelResult(
        len(treated),
        t_ret,
        len(holdout),
        h_ret,
        clustered_lift(treated_users, holdout_users),
        population.truth(treated + holdout),
        lift(t_ret, len(treated), h_ret, len(holdout)),
        treated_users,
        holdout_users,
    )


def _user_sums(rows: list[tuple[int, date]], returned: dict[tuple[int, date], bool]) -> UserSums:
    """What the pipeline's per-user SQL sums give for these rows."""
    per_user: dict[int, list[int]] = {}
    for row in rows:
        sums = per_user.setdefault(row[0], [0, 0])
        sums[0] += 1
        sums[1] += int(returned[row])
    return UserSums(
        rows=len(rows),
        returned=sum(x for _, x in per_user.values()),
        users=len(per_user),
        rows_squared=sum(n * n for n, _ in per_user.values()),
        returned_squared=sum(x * x for _, x in per_user.values()),
        returned_times_rows=sum(x * n for n, x in per_user.values()),
    )
