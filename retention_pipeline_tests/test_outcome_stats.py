"""The lift statistics: an interval consistent with its test, day-stratified comparisons, and
always-valid (sequential) intervals, each checked against published numbers or an independent computation."""

import math
import random

import pytest

from retention_pipeline.outcomes.stats import (
    Estimate,
    Stratum,
    always_valid_interval,
    lift,
    normal_mixture_bound,
    normal_mixture_log_martingale,
    score_interval,
    score_test_p_value,
    stratified_difference,
)

ISSUE_EXAMPLE = (34, 900, 0, 100)  # issue 16: Newcombe gave [-0.07%, +5.2%] with p = 0.048


def test_consistent_interval_and_p_value_at_the_issue_example():
    result = lift(*ISSUE_EXAMPLE)
    assert result.p_value == pytest.approx(0.0481, abs=1e-4)
    assert result.p_value < 0.05 and result.ci_low > 0, f"p < 0.05 must mean 0 is outside: {result}"
    assert result.ci_high == pytest.approx(0.0523, abs=1e-4)
    # Inverting: the test of each end reaches exactly 5%.
    assert score_test_p_value(*ISSUE_EXAMPLE, delta=result.ci_low) == pytest.approx(0.05, abs=1e-9)
    assert score_test_p_value(*ISSUE_EXAMPLE, delta=result.ci_high) == pytest.approx(0.05, abs=1e-9)


@pytest.mark.parametrize("counts", [(0, 100, 0, 100), (100, 100, 100, 100), (0, 10, 10, 10), (100, 100, 0, 50), (1, 1, 0, 1)])
def test_consistent_at_the_edges(counts):
    result = lift(*counts)
    assert -1 <= result.ci_low <= result.lift <= result.ci_high <= 1
    assert (result.p_value < 0.05) == (not result.ci_low <= 0 <= result.ci_high)
    if counts[0] * counts[3] == counts[2] * counts[1]:
        assert result.p_value == 1.0 and result.ci_low < 0 < result.ci_high, "equal rates: no evidence either way"


def test_consistent_on_random_counts():
    rng = random.Random(16)
    for _ in range(300):
        n1, n2 = rng.randint(5, 2000), rng.randint(5, 300)
        r1, r2 = rng.randint(0, n1), rng.randint(0, n2)
        result = lift(r1, n1, r2, n2)
        outside = not result.ci_low <= 0 <= result.ci_high
        if abs(result.p_value - 0.05) > 1e-6:
            assert (result.p_value < 0.05) == outside, (r1, n1, r2, n2, result)


def test_score_interval_matches_the_published_miettinen_nurminen_example():
    # Fagerland, Lydersen & Laake (2015), 7/34 vs 1/34: Miettinen-Nurminen interval (0.028, 0.34) without
    # the N/(N-1) factor. statsmodels 0.15 gets the restricted MLE wrong for delta != 0 (its issue #10269).
    low, high = score_interval(7, 34, 1, 34, correction=False)
    assert (round(low, 3), round(high, 2)) == (0.028, 0.34)


def test_normal_mixture_boundary_matches_published_values():
    # Reference values of the two-sided normal mixture (Howard et al. 2021) from confseq's unit tests,
    # computed there by an independent R implementation at the mixture precision rho = 12.60056 (the one
    # tightest at v = 100, alpha = 0.05): log supermartingale at s=10, v=100: -0.6510052; boundary at
    # v=100, alpha=0.05: 30.35209.
    rho = 12.60056
    assert normal_mixture_log_martingale(10, 100, rho) == pytest.approx(-0.6510052, abs=1e-6)
    assert normal_mixture_bound(100, 0.05, rho) == pytest.approx(30.35209, abs=1e-5)


def test_always_valid_interval_is_johari_msprt_in_interval_form():
    # Johari et al. (2017): Lambda = sqrt(V/(V+tau^2)) exp(tau^2 theta^2 / (2 V (V+tau^2))), V the variance of
    # the estimate; reject at Lambda >= 1/alpha. The interval excludes 0 exactly when it rejects.
    tau, alpha = 0.05, 0.05
    for value, variance in [(0.02, 1e-4), (0.03, 1e-4), (-0.05, 4e-4), (0.001, 1e-6), (0.0, 1e-4)]:
        lam = math.sqrt(variance / (variance + tau**2)) * math.exp(tau**2 * value**2 / (2 * variance * (variance + tau**2)))
        interval = always_valid_interval(Estimate(value, variance, 1000, 1000), alpha, tau)
        assert interval.p_value == pytest.approx(min(1.0, 1 / lam), rel=1e-9)
        assert (lam >= 1 / alpha) == (not interval.low <= 0 <= interval.high)
    wider = always_valid_interval(Estimate(0.02, 1e-4, 1000, 1000), alpha, tau)
    assert wider.high - wider.low > 2 * 1.96 * 0.01, "always valid costs width against a single-look interval"


def test_stratified_difference_gets_the_sign_that_pooling_gets_wrong():
    # Day 1: base rate 10%, the variant gets 90% of sends; day 2: base rate 50%, it gets 10%. Within each
    # day the variant is 2 points BETTER; pooled over days it looks 31 points WORSE (Simpson's paradox).
    day1 = Stratum(treated_returned=108, treated=900, control_returned=10, control=100)
    day2 = Stratum(treated_returned=52, treated=100, control_returned=450, control=900)
    pooled = lift(108 + 52, 1000, 10 + 450, 1000)
    assert pooled.lift < -0.25 and pooled.ci_high < 0
    stratified = stratified_difference([day1, day2])
    assert stratified.value == pytest.approx(0.02, abs=1e-9)
    weights = [900 * 100 / 1000, 100 * 900 / 1000]
    assert stratified.value == pytest.approx((weights[0] * 0.02 + weights[1] * 0.02) / sum(weights))


def test_stratified_difference_skips_days_without_both_groups():
    only_treated = Stratum(50, 100, 0, 0)
    both = Stratum(30, 100, 20, 100)
    result = stratified_difference([only_treated, both])
    assert result.value == pytest.approx(0.10) and (result.treated, result.control) == (100, 100)
    assert stratified_difference([only_treated]).value is None


def test_stratified_variant_lift_in_performance_rows_has_the_right_sign():
    from datetime import date

    import pandas as pd

    from retention_pipeline.outcomes.assets import performance_rows

    day1, day2 = date(2026, 4, 1), date(2026, 4, 2)
    # Thompson moved the mix from recap (day 1, base rate 10%) to nudge (day 2, base rate 50%). Within
    # each day both variants beat the holdout by 1 point.
    counts = pd.DataFrame(
        [
            ("winback", 1, "recap", "inactive", 7, True, day1, 900, 99, 0),
            ("winback", 1, "nudge", "inactive", 7, True, day1, 100, 11, 0),
            ("winback", 1, "holdout", "inactive", 7, False, day1, 100, 10, 0),
            ("winback", 1, "recap", "inactive", 7, True, day2, 100, 51, 0),
            ("winback", 1, "nudge", "inactive", 7, True, day2, 900, 459, 0),
            ("winback", 1, "holdout", "inactive", 7, False, day2, 100, 50, 0),
        ],
        columns=[
            "campaign",
            "step",
            "variant",
            "segment",
            "window_days",
            "treated",
            "day",
            "users",
            "returned",
            "recovered_mrr_cents",
        ],
    )
    counts["delivered_users"], counts["delivered_returned"] = counts["users"], counts["returned"]  # every email delivered
    rows = {(r["variant"], r["segment"]): r for r in performance_rows(counts, day2)}
    recap = rows[("recap", "all")]
    assert recap["lift"] == pytest.approx(150 / 1000 - 60 / 200) and recap["lift_ci_high"] < 0, "pooled: wrong sign"
    assert recap["adjusted_lift"] == pytest.approx(0.01)
    assert recap["adjusted_ci_low"] < 0.01 < recap["adjusted_ci_high"]
    assert {type(recap[k]) for k in ("lift", "lift_ci_low", "p_value", "adjusted_lift", "adjusted_ci_low")} == {float}, (
        "plain floats: the rows are bound as SQL parameters"
    )
    assert rows[("nudge", "all")]["lift"] > 0.15 and rows[("nudge", "all")]["adjusted_lift"] == pytest.approx(0.01)
    overall = rows[("all", "all")]
    assert overall["adjusted_lift"] == pytest.approx(0.01), "the holdout share is the same each day"
