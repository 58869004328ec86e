"""Who is held out and which variant a user gets: stable hashes, so re-runs never flip an assignment."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

import numpy as np


def hash_unit(*parts: object) -> float:
    """A uniform number in [0, 1) determined only by `parts`."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_holdout(campaign: str, user_id: int, share: float) -> bool:
    # Independent of the step: a holdout user stays held out for the whole sequence.
    return hash_unit("holdout", campaign, user_id) < share


def stable_variant(campaign: str, step: int, user_id: int, variants: list[str]) -> str:
    return variants[int(hash_unit("variant", campaign, step, user_id) * len(variants))]


@dataclass(frozen=True)
class Allocation:
    """Variant shares for one step on one day, the figures behind them, and whether the step is paused."""

    shares: dict[str, float]
    paused: bool
    reason: str
    figures: dict[str, dict]


def thompson_allocation(
    campaign: str, step: int, as_of: date, variants: list[str], performance: list[dict], min_share: float, draws: int = 4000
) -> Allocation:
    """Thompson sampling on returns: each variant's share is its posterior probability of being the best
    (Beta(1 + returned, 1 + not returned)), floored at `min_share` so no variant stops being measured.
    A step whose overall lift is confidently negative (95% interval below zero) is paused."""
    by_variant = {row["variant"]: row for row in performance}
    overall = by_variant.get("all")
    if overall and overall.get("lift_ci_high") is not None and overall["lift_ci_high"] < 0:
        return Allocation({}, True, f"lift {overall['lift']:+.3f} with 95% CI upper bound {overall['lift_ci_high']:+.3f} < 0",
                          {"all": dict(overall)})
    rng = np.random.default_rng(int(hash_unit("thompson", campaign, step, as_of) * 2**63))
    samples = np.column_stack([
        rng.beta(1 + by_variant.get(v, {}).get("treated_returned", 0),
                 1 + by_variant.get(v, {}).get("treated", 0) - by_variant.get(v, {}).get("treated_returned", 0), draws)
        for v in variants
    ])
    p_best = np.bincount(samples.argmax(axis=1), minlength=len(variants)) / draws
    floor = min(min_share, 1 / len(variants))
    shares = floor + (1 - floor * len(variants)) * p_best
    figures = {v: {"treated": by_variant.get(v, {}).get("treated", 0), "returned": by_variant.get(v, {}).get("treated_returned", 0),
                   "p_best": float(p)} for v, p in zip(variants, p_best)}
    return Allocation({v: float(s) for v, s in zip(variants, shares)}, False, "thompson sampling on returns", figures)


def allocated_variant(campaign: str, step: int, user_id: int, shares: dict[str, float]) -> str:
    """The variant whose cumulative-share interval contains the user's stable hash."""
    point = hash_unit("variant", campaign, step, user_id)
    cumulative = 0.0
    for variant, share in shares.items():
        cumulative += share
        if point < cumulative:
            return variant
    return next(reversed(shares))
