"""Lift of a treated group over its holdout, with the interval and test named in the README.

Three estimators, each with the interval that belongs to it:
- `lift`: one look at pooled counts. Miettinen-Nurminen score test and the score interval that inverts
  it, so "p < 0.05" and "the 95% interval excludes 0" never disagree.
- `stratified_difference`: a difference of rates within each day (allocation period), weighted across
  days (Cochran-Mantel-Haenszel weights), so a mix that shifts over time cannot masquerade as lift.
- `always_valid_interval`: the normal-mixture confidence sequence (Robbins; Howard et al. 2021), the
  interval form of Johari et al.'s mSPRT: it may be looked at every day and stays valid at 95%.

A row is one step of one dormancy episode, and one user can have several in an arm (several episodes,
each drawn afresh): their outcomes share the user's propensity, so rows are not independent. The first
two therefore take each arm's Rao-Scott design effect (`design_effect`, clustered by user): the
score test and interval run on effective counts x/d, n/d, and the day-stratified variance is scaled by d.
With one row per user, d = 1 and nothing changes. `always_valid_interval` takes the variance it is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm

# Hypothesised differences stay this far inside (-1, 1), where the restricted estimates are defined.
_EDGE = 1e-12


@dataclass(frozen=True)
class UserSums:
    """One arm's rows summed per user (the cluster) and then over users: rows n, returns x, users, and the
    sums of n_i^2, x_i^2 and x_i*n_i over users i that the cluster variance needs."""

    rows: int
    returned: int
    users: int
    rows_squared: int
    returned_squared: int
    returned_times_rows: int

    @classmethod
    def independent(cls, returned: int, rows: int) -> UserSums:
        """Every row its own user: what counts without user ids amount to."""
        return cls(rows, returned, rows, rows, returned, returned)


def design_effect(arm: UserSums) -> float:
    """Rao-Scott design effect of an arm's return rate p = x/n, clustered by user: the cluster-robust
    variance sum_i (x_i - p n_i)^2 / n^2 over the binomial p(1-p)/n, floored at 1 (a user's repeated
    outcomes are alike, not opposed: an estimate below 1 is taken as noise). Both variances are in their
    plain (maximum-likelihood) form, so one row per user gives exactly 1, and m identical rows for each of
    k users give m (effective rows n/d = k)."""
    if not arm.rows:
        return 1.0
    p = arm.returned / arm.rows
    binomial = arm.rows * p * (1 - p)
    if binomial <= 0:
        return 1.0
    cluster = arm.returned_squared - 2 * p * arm.returned_times_rows + p * p * arm.rows_squared
    return max(1.0, cluster / binomial)


@dataclass(frozen=True)
class Lift:
    treated_rate: float | None
    holdout_rate: float | None
    lift: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    design_effects: tuple[float, float] = (1.0, 1.0)  # treated, holdout


def lift(
    treated_returned: int,
    treated: int,
    holdout_returned: int,
    holdout: int,
    alpha: float = 0.05,
    design_effects: tuple[float, float] = (1.0, 1.0),
) -> Lift:
    """Difference of return rates (treated - holdout): the Miettinen-Nurminen score interval and the
    two-sided score test it inverts, both on the effective counts x/d, n/d of each arm (Rao-Scott; d = 1:
    independent rows). Undefined without both groups."""
    treated_rate = treated_returned / treated if treated else None
    holdout_rate = holdout_returned / holdout if holdout else None
    if not treated or not holdout:
        return Lift(treated_rate, holdout_rate, None, None, None, None, design_effects)
    d_treated, d_holdout = design_effects
    effective = (treated_returned / d_treated, treated / d_treated, holdout_returned / d_holdout, holdout / d_holdout)
    low, high = score_interval(*effective, alpha)
    p_value = score_test_p_value(*effective)
    return Lift(treated_rate, holdout_rate, treated_rate - holdout_rate, low, high, p_value, design_effects)


def clustered_lift(treated: UserSums, holdout: UserSums, alpha: float = 0.05) -> Lift:
    """`lift` with each arm's design effect from its per-user sums."""
    return lift(
        treated.returned, treated.rows, holdout.returned, holdout.rows, alpha, (design_effect(treated), design_effect(holdout))
    )


def _restricted_rates(x1: float, n1: float, x2: float, n2: float, delta: float) -> tuple[float, float]:
    """Maximum-likelihood rates under p1 - p2 = delta (Miettinen & Nurminen 1985, closed-form cubic root)."""
    p1, p2, theta = x1 / n1, x2 / n2, n2 / n1
    a = 1 + theta
    b = -(1 + theta + p1 + theta * p2 + delta * (theta + 2))
    c = delta * delta + delta * (2 * p1 + theta + 1) + p1 + theta * p2
    d = -p1 * delta * (1 + delta)
    v = b**3 / (27 * a**3) - b * c / (6 * a * a) + d / (2 * a)
    u = math.copysign(math.sqrt(max(b * b / (9 * a * a) - c / (3 * a), 0.0)), v)
    cosine = max(-1.0, min(1.0, v / u**3)) if u else 0.0
    r1 = 2 * u * math.cos((math.pi + math.acos(cosine)) / 3) - b / (3 * a)
    r1 = min(max(r1, 0.0), 1.0)
    return r1, min(max(r1 - delta, 0.0), 1.0)


def score_statistic(x1: float, n1: float, x2: float, n2: float, delta: float = 0.0, correction: bool = True) -> float:
    """Miettinen-Nurminen z of H0: p1 - p2 = delta; `correction` is their N/(N-1) variance factor
    (without it: Farrington-Manning)."""
    r1, r2 = _restricted_rates(x1, n1, x2, n2, delta)
    variance = (r1 * (1 - r1) / n1 + r2 * (1 - r2) / n2) * ((n1 + n2) / (n1 + n2 - 1) if correction else 1.0)
    gap = x1 / n1 - x2 / n2 - delta
    if variance <= 0:
        return 0.0 if abs(gap) < 1e-15 else math.copysign(math.inf, gap)
    return gap / math.sqrt(variance)


def score_test_p_value(x1: float, n1: float, x2: float, n2: float, delta: float = 0.0) -> float:
    return float(2 * norm.sf(abs(score_statistic(x1, n1, x2, n2, delta))))


def score_interval(
    x1: float, n1: float, x2: float, n2: float, alpha: float = 0.05, correction: bool = True
) -> tuple[float, float]:
    """Every delta the two-sided score test does not reject at `alpha`: the interval inverts the test."""
    critical = float(norm.isf(alpha / 2))
    estimate = x1 / n1 - x2 / n2

    def excess(delta: float, sign: int) -> float:
        return sign * score_statistic(x1, n1, x2, n2, delta, correction) - critical

    low_edge, high_edge = -1 + _EDGE, 1 - _EDGE
    # No root inside: the test rejects no delta down to -1 (or up to 1), so the interval reaches it.
    low = -1.0 if estimate <= low_edge or excess(low_edge, 1) < 0 else brentq(excess, low_edge, estimate, args=(1,), xtol=1e-12)
    high = (
        1.0 if estimate >= high_edge or excess(high_edge, -1) < 0 else brentq(excess, estimate, high_edge, args=(-1,), xtol=1e-12)
    )
    return float(low), float(high)


@dataclass(frozen=True)
class Stratum:
    """One day (allocation period): returns and users of the two groups compared."""

    treated_returned: int
    treated: int
    control_returned: int
    control: int


@dataclass(frozen=True)
class Estimate:
    """A difference of rates, its estimated variance and the users behind it."""

    value: float | None
    variance: float | None
    treated: int
    control: int


def stratified_difference(strata: Iterable[Stratum], design_effects: tuple[float, float] = (1.0, 1.0)) -> Estimate:
    """Difference of rates within each stratum, averaged with Cochran-Mantel-Haenszel weights
    n1*n0/(n1+n0). Strata without two users in each group carry no within-day comparison and are left
    out. Per-stratum variances use n-1 denominators: unbiased however small a day is. A user has at most
    one row per day and step, so the clustering is across days: each group's variances are scaled by its
    design effect over all days (`design_effects`: treated, control), as `lift` scales its counts."""
    d_treated, d_control = design_effects
    weight_sum = weighted = variance = 0.0
    treated = control = 0
    for s in strata:
        if s.treated < 2 or s.control < 2:
            continue
        weight = s.treated * s.control / (s.treated + s.control)
        p1, p0 = s.treated_returned / s.treated, s.control_returned / s.control
        weight_sum += weight
        weighted += weight * (p1 - p0)
        variance += weight * weight * (d_treated * p1 * (1 - p1) / (s.treated - 1) + d_control * p0 * (1 - p0) / (s.control - 1))
        treated, control = treated + s.treated, control + s.control
    if not weight_sum:
        return Estimate(None, None, treated, control)
    return Estimate(weighted / weight_sum, variance / weight_sum**2, treated, control)


def wald_interval(estimate: Estimate, alpha: float = 0.05) -> tuple[float | None, float | None]:
    """Normal interval of the estimate; none where the variance is zero (no returns, or all returned, in
    every day), since a zero-width interval would claim certainty the data cannot give."""
    if estimate.value is None or not estimate.variance:
        return None, None
    half = float(norm.isf(alpha / 2)) * math.sqrt(estimate.variance)
    return estimate.value - half, estimate.value + half


def normal_mixture_log_martingale(s: float, v: float, rho: float) -> float:
    """log of the two-sided normal-mixture supermartingale sqrt(rho/(v+rho)) exp(s^2 / (2(v+rho))):
    the mSPRT likelihood ratio of Johari et al. with s = estimate/variance, v = 1/variance, rho = 1/tau^2."""
    return 0.5 * math.log(rho / (v + rho)) + s * s / (2 * (v + rho))


def normal_mixture_bound(v: float, alpha: float, rho: float) -> float:
    """The |s| above which the two-sided normal mixture crosses 1/alpha: sqrt((v+rho) log((v+rho)/(rho alpha^2)))."""
    return math.sqrt((v + rho) * math.log((v + rho) / (rho * alpha * alpha)))


@dataclass(frozen=True)
class AlwaysValid:
    """A confidence sequence at one look and the always-valid p-value of "no difference"."""

    estimate: float
    low: float
    high: float
    p_value: float


def always_valid_interval(estimate: Estimate, alpha: float = 0.05, effect_scale: float = 0.05) -> AlwaysValid | None:
    """Normal-mixture confidence sequence for a difference of rates, in the information scale
    v = 1/variance; `effect_scale` is the mixture's standard deviation tau (the size of lift the test
    is tuned to). Asymptotically valid at every look at once; p <= alpha exactly when 0 is outside."""
    if estimate.value is None or not estimate.variance or estimate.variance <= 0:
        return None
    v, rho = 1 / estimate.variance, 1 / effect_scale**2
    half = normal_mixture_bound(v, alpha, rho) / v
    log_ratio = normal_mixture_log_martingale(estimate.value * v, v, rho)
    return AlwaysValid(estimate.value, estimate.value - half, estimate.value + half, min(1.0, math.exp(-log_ratio)))


@dataclass(frozen=True)
class RevenueKept:
    lift: Lift
    mrr_at_risk_cents: int
    incremental_mrr_cents: float | None
    ci_low_cents: float | None
    ci_high_cents: float | None


def incremental_mrr(
    treated_kept: int,
    treated: int,
    holdout_kept: int,
    holdout: int,
    mrr_at_risk_cents: int,
    alpha: float = 0.05,
    design_effects: tuple[float, float] = (1.0, 1.0),
) -> RevenueKept:
    """(treated retention - holdout retention) x MRR at risk, with the score interval of the retention
    difference scaled by the same MRR (taken as known: it is measured at assignment, before any effect);
    `design_effects` as in `lift` (a user's assignments share one subscription)."""
    kept = lift(treated_kept, treated, holdout_kept, holdout, alpha, design_effects)
    if kept.lift is None:
        return RevenueKept(kept, mrr_at_risk_cents, None, None, None)
    return RevenueKept(
        kept, mrr_at_risk_cents, kept.lift * mrr_at_risk_cents, kept.ci_low * mrr_at_risk_cents, kept.ci_high * mrr_at_risk_cents
    )
