"""Which arm and variant an assignment gets: stable hashes, so re-runs never flip an assignment.

The unit of the experiment is one step of a campaign for one user in one dormancy episode: its arm is
drawn afresh from (campaign, step, user, episode start), never from the user alone. A user's repeated
episodes are then independent draws, so rules that look at earlier assignments (frequency cap, step 2,
suppression) cannot tilt the arms, and the rows the lift counts are independent units."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

import numpy as np

from retention_pipeline.outcomes.stats import AlwaysValid, Estimate, Stratum, always_valid_interval, stratified_difference


def hash_unit(*parts: object) -> float:
    """A uniform number in [0, 1) determined only by `parts`."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(campaign: str, step: int, user_id: int, episode_start: date, share: float) -> bool:
    # One arm per user (the design before) made a user's episodes share it: their rows were correlated and
    # the 95% interval covered the truth only 90.8% of the time (benchmarks/results/2026-12-02-coverage.md).
    return hash_unit("holdout", campaign, step, user_id, episode_start) < share


def stable_variant(campaign: str, step: int, user_id: int, episode_start: date, variants: list[str]) -> str:
    return variants[int(hash_unit("variant", campaign, step, user_id, episode_start) * len(variants))]


@dataclass(frozen=True)
class SequentialRule:
    """When the daily look may pause a step or declare a winner: an always-valid test (normal-mixture
    confidence sequence), so looking every day keeps the error rate at `alpha` over the whole campaign."""

    alpha: float = 0.05
    effect_scale: float = 0.05
    min_sample: int = 100


@dataclass(frozen=True)
class DayOutcome:
    """Closed-window outcomes of one step on one send day, per variant ('holdout' for the holdout)."""

    day: date
    variant: str
    treated: bool
    users: int
    returned: int


@dataclass(frozen=True)
class Allocation:
    """Variant shares for one step on one day, the figures behind them, and the decision taken:
    'explore' (Thompson sampling), 'winner', 'paused_for_review' or 'resumed'."""

    shares: dict[str, float]
    paused: bool
    reason: str
    figures: dict[str, dict]
    decision: str = "explore"
    winner: str | None = None


def day_strata(outcomes: list[DayOutcome], treated_arm, control_arm) -> list[Stratum]:
    """One stratum per send day: the two arms chosen by the predicates, summed within the day."""
    days: dict[date, list[int]] = {}
    for row in outcomes:
        counts = days.setdefault(row.day, [0, 0, 0, 0])
        if treated_arm(row):
            counts[0] += row.returned
            counts[1] += row.users
        elif control_arm(row):
            counts[2] += row.returned
            counts[3] += row.users
    return [Stratum(*counts) for _, counts in sorted(days.items())]


def overall_lift(outcomes: list[DayOutcome], rule: SequentialRule) -> tuple[Estimate, AlwaysValid | None]:
    """Every variant against the holdout, stratified by send day, with its always-valid interval."""
    estimate = stratified_difference(day_strata(outcomes, lambda r: r.treated, lambda r: not r.treated))
    return estimate, always_valid_interval(estimate, rule.alpha, rule.effect_scale)


def sequential_pause(outcomes: list[DayOutcome], rule: SequentialRule) -> str | None:
    """Why the step should be paused for review (its lift is below zero by the always-valid interval,
    with at least `min_sample` users in each arm), or None."""
    estimate, interval = overall_lift(outcomes, rule)
    if interval is None or min(estimate.treated, estimate.control) < rule.min_sample or interval.high >= 0:
        return None
    return (
        f"lift {interval.estimate:+.3f}, always-valid {1 - rule.alpha:.0%} interval {interval.low:+.3f} .. "
        f"{interval.high:+.3f} < 0 ({estimate.treated} treated, {estimate.control} holdout)"
    )


def sequential_winner(outcomes: list[DayOutcome], variants: list[str], rule: SequentialRule) -> tuple[str, str] | None:
    """The variant whose return rate beats every other's by the always-valid interval (day-stratified,
    Bonferroni over the comparisons), each variant with at least `min_sample` users; or None."""
    if len(variants) < 2:
        return None
    sizes = {v: sum(r.users for r in outcomes if r.variant == v) for v in variants}
    if min(sizes.values()) < rule.min_sample:
        return None
    alpha = rule.alpha / (len(variants) - 1)
    for leader in variants:
        comparisons = []
        for other in variants:
            if other == leader:
                continue
            estimate = stratified_difference(
                day_strata(outcomes, lambda r, v=leader: r.variant == v, lambda r, v=other: r.variant == v)
            )
            comparisons.append((other, always_valid_interval(estimate, alpha, rule.effect_scale)))
        if all(interval is not None and interval.low > 0 for _, interval in comparisons):
            return leader, "; ".join(
                f"beats {other} by {i.estimate:+.3f} (always-valid interval {i.low:+.3f} .. {i.high:+.3f})"
                for other, i in comparisons
            )
    return None


def thompson_allocation(
    campaign: str,
    step: int,
    as_of: date,
    variants: list[str],
    outcomes: list[DayOutcome],
    min_share: float,
    rule: SequentialRule = SequentialRule(),
    previous: dict | None = None,
    resumed: bool = False,
    draws: int = 4000,
) -> Allocation:
    """Thompson sampling on returns: each variant's share is its posterior probability of being the best
    (Beta(1 + returned, 1 + not returned)), floored at `min_share` so no variant stops being measured.
    The sequential rule may pause the step for review (until `resumed`) or declare a winner, which then
    takes all but the exploration floor; both decisions stand once taken (`previous`: the last one)."""
    previous = previous or {}
    pause = (
        None
        if resumed
        else (previous.get("reason") if previous.get("decision") == "paused_for_review" else sequential_pause(outcomes, rule))
    )
    if pause:
        treated = {
            "treated": sum(r.users for r in outcomes if r.treated),
            "returned": sum(r.returned for r in outcomes if r.treated),
        }
        return Allocation(
            {},
            True,
            pause if pause.startswith("paused for review") else f"paused for review: {pause}",
            {"all": treated},
            decision="paused_for_review",
        )
    totals = {
        v: {
            "treated": sum(r.users for r in outcomes if r.variant == v),
            "returned": sum(r.returned for r in outcomes if r.variant == v),
        }
        for v in variants
    }
    rng = np.random.default_rng(int(hash_unit("thompson", campaign, step, as_of) * 2**63))
    samples = np.column_stack(
        [rng.beta(1 + totals[v]["returned"], 1 + totals[v]["treated"] - totals[v]["returned"], draws) for v in variants]
    )
    p_best = np.bincount(samples.argmax(axis=1), minlength=len(variants)) / draws
    figures = {v: totals[v] | {"p_best": float(p)} for v, p in zip(variants, p_best, strict=False)}
    floor = min(min_share, 1 / len(variants))
    winner = (previous.get("winner"), previous.get("reason")) if previous.get("decision") == "winner" else None
    winner = winner if winner and winner[0] in variants else sequential_winner(outcomes, variants, rule)
    if winner:
        shares = {v: (1 - floor * (len(variants) - 1)) if v == winner[0] else floor for v in variants}
        reason = winner[1] if winner[1].startswith("winner") else f"winner {winner[0]}: {winner[1]}"
        return Allocation(shares, False, reason, figures, decision="winner", winner=winner[0])
    shares = floor + (1 - floor * len(variants)) * p_best
    reason = "resumed by config after review; thompson sampling on returns" if resumed else "thompson sampling on returns"
    return Allocation(
        {v: float(s) for v, s in zip(variants, shares, strict=False)},
        False,
        reason,
        figures,
        decision="resumed" if resumed else "explore",
    )


def allocated_variant(campaign: str, step: int, user_id: int, episode_start: date, shares: dict[str, float]) -> str:
    """The variant whose cumulative-share interval contains the assignment's stable hash."""
    point = hash_unit("variant", campaign, step, user_id, episode_start)
    cumulative = 0.0
    for variant, share in shares.items():
        cumulative += share
        if point < cumulative:
            return variant
    return next(reversed(shares))
