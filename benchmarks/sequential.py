"""`python -m benchmarks.sequential [--replicates N]`: error rates of the daily-look decisions under no effect.

A step sends to 300 dormant users a day for 90 days; the holdout is a stable 10% (`in_holdout`'s share).
Nobody reacts to the email: treated and holdout return within 7 days at the same rate. Every morning the
allocation looks at the 7-day windows closed by then (sends up to 8 days earlier) and decides:

- false pause: the real `sequential_pause` (always-valid, min sample) against the old rule (pooled
  Newcombe 95% interval below zero at any look);
- false winner: two equal variants allocated by the real `thompson_allocation` (so the mix shifts
  between days) while the base rate drifts from 15% to 30%; the real `sequential_winner` against the
  naive rule (the pooled score interval of one variant against the other excludes zero at any look).

Writes `benchmarks/results/<date>-sequential-decisions.{json,md}`. Not a timed benchmark: error rates.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from scipy.stats import norm

from retention_pipeline.outcomes.stats import lift
from retention_pipeline.outreach.allocation import (
    DayOutcome,
    SequentialRule,
    sequential_pause,
    thompson_allocation,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FIRST_DAY = date(2026, 3, 2)


def _newcombe_upper_below_zero(r1: int, n1: int, r2: int, n2: int) -> bool:
    """The old pause rule: Newcombe's hybrid score interval (treated - holdout) entirely below zero."""
    z = norm.isf(0.025)

    def wilson(r, n):
        p = r / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half

    p1, p2 = r1 / n1, r2 / n2
    (_, u1), (l2, _) = wilson(r1, n1), wilson(r2, n2)
    return p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2) < 0


def pause_replicate(
    rng: np.random.Generator, rule: SequentialRule, days: int, sends: int, holdout_share: float, base_rate: float, lag: int
) -> dict[str, bool]:
    holdout = rng.binomial(sends, holdout_share, days)
    treated = sends - holdout
    treated_returned, holdout_returned = rng.binomial(treated, base_rate), rng.binomial(holdout, base_rate)
    outcomes: list[DayOutcome] = []
    paused = {"always_valid": False, "old_rule": False}
    for look in range(days):
        closed = look - lag  # sends of this day index have just closed their window
        if closed >= 0:
            day = FIRST_DAY + timedelta(days=closed)
            outcomes += [
                DayOutcome(day, "recap", True, int(treated[closed]), int(treated_returned[closed])),
                DayOutcome(day, "holdout", False, int(holdout[closed]), int(holdout_returned[closed])),
            ]
        if not outcomes:
            continue
        if not paused["always_valid"] and sequential_pause(outcomes, rule):
            paused["always_valid"] = True
        if not paused["old_rule"]:
            seen = closed + 1
            paused["old_rule"] = _newcombe_upper_below_zero(
                int(treated_returned[:seen].sum()),
                int(treated[:seen].sum()),
                int(holdout_returned[:seen].sum()),
                int(holdout[:seen].sum()),
            )
    return paused


def false_pause_rate(
    replicates: int,
    seed: int = 16,
    rule: SequentialRule | None = None,
    days: int = 90,
    sends: int = 300,
    holdout_share: float = 0.1,
    base_rate: float = 0.2,
    lag: int = 8,
) -> dict:
    rng, rule = np.random.default_rng(seed), rule or SequentialRule()
    results = [pause_replicate(rng, rule, days, sends, holdout_share, base_rate, lag) for _ in range(replicates)]
    return {name: sum(r[name] for r in results) / replicates for name in ("always_valid", "old_rule")}


def winner_replicate(
    rng: np.random.Generator, replicate: int, rule: SequentialRule, days: int, sends: int, holdout_share: float, lag: int
) -> dict[str, bool]:
    variants = ["recap", "nudge"]
    outcomes: list[DayOutcome] = []
    pending: list[list[DayOutcome]] = []
    declared = {"always_valid": False, "naive_pooled": False}
    for look in range(days):
        day = FIRST_DAY + timedelta(days=look)
        if look >= lag:
            outcomes += pending[look - lag]
        allocation = thompson_allocation("bench", replicate, day, variants, outcomes, 0.1, rule, draws=1000)
        if allocation.winner:
            declared["always_valid"] = True
        if not declared["naive_pooled"]:
            totals = {
                v: (sum(o.returned for o in outcomes if o.variant == v), sum(o.users for o in outcomes if o.variant == v))
                for v in variants
            }
            if min(n for _, n in totals.values()) >= rule.min_sample:
                naive = lift(*totals["recap"], *totals["nudge"])
                declared["naive_pooled"] = not naive.ci_low <= 0 <= naive.ci_high
        base_rate = 0.15 + 0.15 * look / (days - 1)  # returns get likelier over the campaign, for both variants
        treated = sends - int(rng.binomial(sends, holdout_share))
        recap = int(rng.binomial(treated, allocation.shares["recap"]))
        pending.append(
            [
                DayOutcome(day, "recap", True, recap, int(rng.binomial(recap, base_rate))),
                DayOutcome(day, "nudge", True, treated - recap, int(rng.binomial(treated - recap, base_rate))),
            ]
        )
    return declared


def false_winner_rate(
    replicates: int,
    seed: int = 61,
    rule: SequentialRule | None = None,
    days: int = 90,
    sends: int = 300,
    holdout_share: float = 0.1,
    lag: int = 8,
) -> dict:
    rng, rule = np.random.default_rng(seed), rule or SequentialRule()
    results = [winner_replicate(rng, i, rule, days, sends, holdout_share, lag) for i in range(replicates)]
    return {name: sum(r[name] for r in results) / replicates for name in ("always_valid", "naive_pooled")}


def _interval(rate: float, n: int) -> str:
    half = 1.96 * math.sqrt(rate * (1 - rate) / n)
    return f"{rate:.1%} (±{half:.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--winner-replicates", type=int, default=500)
    args = parser.parse_args()
    rule = SequentialRule()
    pauses = false_pause_rate(args.replicates, rule=rule)
    winners = false_winner_rate(args.winner_replicates, rule=rule)
    today = date.today().isoformat()
    results = {
        "date": today,
        "machine": platform.platform(),
        "rule": vars(rule),
        "scenario": {
            "days": 90,
            "sends_per_day": 300,
            "holdout_share": 0.1,
            "window_days": 7,
            "look_lag_days": 8,
            "pause_base_rate": 0.2,
            "winner_base_rate": "0.15 -> 0.30 linear",
        },
        "false_pause": {"replicates": args.replicates, **pauses},
        "false_winner": {"replicates": args.winner_replicates, **winners},
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{today}-sequential-decisions.json").write_text(json.dumps(results, indent=2) + "\n")
    md = [
        f"# Sequential decisions under no effect ({today})",
        "",
        "`uv run python -m benchmarks.sequential` — 90 daily looks, 300 sends a day, 10% holdout, 7-day window "
        f"(looks see sends up to 8 days old), rule: alpha {rule.alpha}, effect scale {rule.effect_scale}, "
        f"min sample {rule.min_sample} per arm. ± is the 95% Monte Carlo margin.",
        "",
        "| decision | replicates | always-valid rule (now) | daily look at a fixed-sample interval (before) |",
        "|---|---:|---:|---:|",
        f"| false pause (treated = holdout, base rate 20%) | {args.replicates} | {_interval(pauses['always_valid'], args.replicates)} "
        f"| {_interval(pauses['old_rule'], args.replicates)} (pooled Newcombe) |",
        f"| false winner (equal variants, Thompson mix, base rate 15% → 30%) | {args.winner_replicates} "
        f"| {_interval(winners['always_valid'], args.winner_replicates)} | {_interval(winners['naive_pooled'], args.winner_replicates)} "
        "(pooled score interval) |",
        "",
    ]
    (RESULTS_DIR / f"{today}-sequential-decisions.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
