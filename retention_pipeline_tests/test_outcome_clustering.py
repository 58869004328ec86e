"""The lift clustered by user: a user's repeated assignments (episodes, steps) are correlated, so each arm's
counts are divided by its Rao-Scott design effect. Checked against hand-computed numbers, in the simulator's
population (where users differ and cycle through episodes), and through the real campaign_performance asset."""

import random
from datetime import UTC, date, datetime, time, timedelta

import pytest
import sqlalchemy as sa

from retention_pipeline.local.runner import run_job
from retention_pipeline.local.simulation import SimulationConfig, model_lift
from retention_pipeline.outcomes.stats import (
    Stratum,
    UserSums,
    clustered_lift,
    design_effect,
    lift,
    score_interval,
    score_test_p_value,
    stratified_difference,
)
from retention_pipeline.schema import install_schema
from retention_pipeline_tests.scenario import materialization_metadata


def sums(per_user: list[tuple[int, int]]) -> UserSums:
    """An arm from (rows, returns) per user."""
    return UserSums(
        rows=sum(n for n, _ in per_user),
        returned=sum(x for _, x in per_user),
        users=len(per_user),
        rows_squared=sum(n * n for n, _ in per_user),
        returned_squared=sum(x * x for _, x in per_user),
        returned_times_rows=sum(x * n for n, x in per_user),
    )


def test_one_row_per_user_gives_design_effect_one_and_exactly_the_unclustered_interval():
    treated, holdout = sums([(1, 1)] * 34 + [(1, 0)] * 866), sums([(1, 0)] * 100)
    assert treated == UserSums.independent(34, 900) and holdout == UserSums.independent(0, 100)
    assert design_effect(treated) == 1.0 and design_effect(holdout) == 1.0
    assert clustered_lift(treated, holdout) == lift(34, 900, 0, 100)


def test_identical_rows_of_a_user_count_once_so_the_effective_rows_are_the_users():
    # 50 treated users with 3 rows each, all three returned for 10 of them: d = 3, effective 10 of 50.
    # 40 holdout users with 2 rows each, both returned for 8: d = 2, effective 8 of 40.
    treated = sums([(3, 3)] * 10 + [(3, 0)] * 40)
    holdout = sums([(2, 2)] * 8 + [(2, 0)] * 32)
    assert design_effect(treated) == pytest.approx(3.0, abs=1e-12)
    assert design_effect(holdout) == pytest.approx(2.0, abs=1e-12)
    clustered, by_user = clustered_lift(treated, holdout), lift(10, 50, 8, 40)
    assert clustered.lift == by_user.lift == pytest.approx(0.0)
    assert (clustered.ci_low, clustered.ci_high, clustered.p_value) == pytest.approx(
        (by_user.ci_low, by_user.ci_high, by_user.p_value), abs=1e-10
    )
    naive = lift(30, 150, 16, 80)
    assert clustered.ci_high - clustered.ci_low > 1.5 * (naive.ci_high - naive.ci_low), "rows taken as independent: too narrow"


def test_design_effect_is_the_cluster_variance_over_the_binomial_variance_by_hand():
    # Users (rows, returns): (3, 3), (3, 0), (1, 1), (1, 0). p = 4/8; sum of (x - p n)^2 = 2.25 + 2.25 + 0.25 +
    # 0.25 = 5; binomial n p (1 - p) = 2; d = 2.5.
    treated = sums([(3, 3), (3, 0), (1, 1), (1, 0)])
    assert design_effect(treated) == pytest.approx(2.5, abs=1e-12)
    holdout = UserSums.independent(1, 10)
    result = clustered_lift(treated, holdout)
    assert result.design_effects == pytest.approx((2.5, 1.0))
    assert (result.ci_low, result.ci_high) == pytest.approx(score_interval(4 / 2.5, 8 / 2.5, 1, 10), abs=1e-12)
    # The reported interval inverts the reported test: at each end the (effective-count) score test is at 5%.
    for end in (result.ci_low, result.ci_high):
        assert score_test_p_value(4 / 2.5, 8 / 2.5, 1, 10, delta=end) == pytest.approx(0.05, abs=1e-9)
    assert result.p_value == pytest.approx(score_test_p_value(4 / 2.5, 8 / 2.5, 1, 10), abs=1e-12)


def test_design_effect_below_one_is_floored_at_one():
    # (2, 1), (1, 0), (3, 2), (1, 1): p = 4/7, sum of (x - p n)^2 = 30/49 against a binomial 84/49: 0.357.
    assert design_effect(sums([(2, 1), (1, 0), (3, 2), (1, 1)])) == 1.0
    assert design_effect(sums([(3, 0), (2, 0)])) == 1.0, "no returns: no variance to compare, independent"


def test_clustered_interval_excludes_zero_exactly_when_the_clustered_test_rejects():
    rng = random.Random(16)
    checked = 0
    for _ in range(200):
        arms = []
        for users in (rng.randint(20, 400), rng.randint(5, 60)):
            propensities = [rng.betavariate(1, 3) for _ in range(users)]
            per_user = []
            for p in propensities:
                n = rng.randint(1, 4)
                per_user.append((n, sum(rng.random() < p for _ in range(n))))
            arms.append(sums(per_user))
        result = clustered_lift(*arms)
        if abs(result.p_value - 0.05) > 1e-6:
            outside = not result.ci_low <= 0 <= result.ci_high
            assert (result.p_value < 0.05) == outside, (arms, result)
            checked += 1
    assert checked > 150


def test_day_stratified_variance_scales_by_each_arms_design_effect():
    strata = [Stratum(30, 100, 20, 100), Stratum(12, 60, 9, 40)]
    plain = stratified_difference(strata)
    both = stratified_difference(strata, (2.0, 2.0))
    assert both.value == plain.value and both.variance == pytest.approx(2 * plain.variance, rel=1e-12)
    treated_only = stratified_difference(strata, (3.0, 1.0))
    # The treated part of each day's variance alone is multiplied: p1(1-p1)/(n1-1) terms.
    weights = [100 * 100 / 200, 60 * 40 / 100]
    treated_part = sum(w * w * p * (1 - p) / (n - 1) for w, p, n in zip(weights, (0.3, 0.2), (100, 60), strict=True))
    assert treated_only.variance == pytest.approx(plain.variance + 2 * treated_part / sum(weights) ** 2, rel=1e-12)


def test_simulated_users_with_repeated_episodes_are_detected_as_clusters():
    """Fast cyclers (users go quiet again within ~10 days of coming back): many users have several step-1 rows
    in the email arm, and their outcomes share the user's propensity, so the treated arm's design effect is
    clearly above 1 and the clustered interval is wider than the independent-rows one. The same population
    with near-identical users (no lasting propensity to share) has several rows per user too, but a design
    effect near 1: the adjustment measures the correlation, not the row count."""
    unequal = model_lift(SimulationConfig(users=1500, days=60, daily_quit_probability=0.1, seed=3))
    assert unequal.treated_users.users < 0.7 * unequal.treated, "several rows per user in the email arm"
    d_treated, _ = unequal.measured.design_effects
    assert d_treated > 1.1, unequal.measured
    clustered, naive = unequal.measured, unequal.independent_rows
    assert clustered.lift == naive.lift
    assert clustered.ci_high - clustered.ci_low > naive.ci_high - naive.ci_low

    alike = model_lift(SimulationConfig(users=1500, days=60, daily_quit_probability=0.1, seed=3, propensity_concentration=10_000))
    assert alike.treated_users.users < 0.7 * alike.treated
    assert alike.measured.design_effects[0] < 1.05, alike.measured


SEND_DAY = date(2026, 4, 10)


def _outcome_rows(db, rows: list[tuple[int, int, bool, bool]]) -> None:
    """Final 7-day outcomes of step 1: (send id, user, treated, returned), each on its own send day."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.reengagement_outcomes (send_id, window_days, campaign, step, variant, treated, delivered,
                segment_reason, user_id, mrr_cents, reference_at, window_end, returned, first_returned_at, events,
                active_days, final, evaluated_as_of)
            VALUES (:id, 7, 'winback', 1, CASE WHEN :treated THEN 'recap' ELSE 'holdout' END, :treated, :treated,
                'inactive', :user_id, 0, :at, CAST(:at AS timestamptz) + interval '7 days', :returned, NULL, 0, 0, true,
                :as_of)""")
            ),
            [
                {
                    "id": send_id,
                    "user_id": user_id,
                    "treated": treated,
                    "returned": returned,
                    "at": datetime.combine(SEND_DAY + timedelta(days=send_id % 3), time(9), UTC),
                    "as_of": SEND_DAY + timedelta(days=20),
                }
                for send_id, user_id, treated, returned in rows
            ],
        )


def test_campaign_performance_reports_the_interval_and_test_clustered_by_user(app_db_env, instance):
    """Through the asset and its SQL: 20 emailed users with 3 rows each (all returned for 8 of them, none for
    the others) and 20 holdout users with one row each (4 returned). The per-user sums give d = 3 and 1, so the
    reported interval and p-value are those of 8/20 against 4/20, and the metadata says it is clustered."""
    db = app_db_env
    install_schema(db)
    treated_rows = [(user, user in range(1, 9)) for user in range(1, 21) for _ in range(3)]
    holdout_rows = [(user, user in range(21, 25)) for user in range(21, 41)]
    _outcome_rows(
        db,
        [(i, u, True, r) for i, (u, r) in enumerate(treated_rows, start=1)]
        + [(i, u, False, r) for i, (u, r) in enumerate(holdout_rows, start=1000)],
    )
    as_of = SEND_DAY + timedelta(days=20)
    result = run_job(instance, "daily_retention_job", as_of.isoformat(), assets=["campaign_performance"], quiet=True)
    assert result.success
    row = db.fetch_all(
        "SELECT * FROM {rs}.campaign_performance WHERE as_of_date = :d AND variant = 'all' AND segment = 'all'", {"d": as_of}
    )[0]
    assert (row.treated, row.treated_returned, row.holdout, row.holdout_returned) == (60, 24, 20, 4)
    by_user = lift(8, 20, 4, 20)
    assert (row.lift_ci_low, row.lift_ci_high, row.p_value) == pytest.approx(
        (by_user.ci_low, by_user.ci_high, by_user.p_value), abs=1e-10
    )
    naive = lift(24, 60, 4, 20)
    assert row.lift_ci_high - row.lift_ci_low > naive.ci_high - naive.ci_low
    metadata = materialization_metadata(result, "campaign_performance")
    assert metadata["design_effect_winback_step1_7d"] == {"treated": 3.0, "holdout": 1.0}
    assert "clustered by user" in metadata["interval"]


ASSIGNED = date(2026, 4, 10)


def _assignments(db, rows: list[tuple[int, str, date]]) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
                segment_reason, mrr_cents, created_at)
            VALUES ('winback', 1, :user_id, :day, :day, :variant, :status, 'x@example.com', 'inactive', 1000, :t)""")
            ),
            [
                {
                    "user_id": u,
                    "status": status,
                    "day": day,
                    "variant": "holdout" if status == "holdout" else "recap",
                    "t": datetime.combine(day + timedelta(days=1), time(9), UTC),
                }
                for u, status, day in rows
            ],
        )


def _snapshot(db, snapshot_date: date, users: list[int], lost: set[int]) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                db.render("""
            INSERT INTO {rs}.stripe_subscription_history (snapshot_date, subscription_id, customer_id, user_id, status,
                mrr_cents, cancel_at_period_end, canceled_at, ended_at, snapshot_at)
            VALUES (:d, :sub, :cus, :user_id, :status, 1000, false, :ended, :ended,
                    CAST(:d AS timestamp) AT TIME ZONE 'UTC' + interval '9 hours')""")
            ),
            [
                {
                    "d": snapshot_date,
                    "sub": f"sub_{u}",
                    "cus": f"cus_{u}",
                    "user_id": u,
                    "status": "canceled" if u in lost else "active",
                    "ended": datetime(2026, 4, 30, 12, tzinfo=UTC) if u in lost else None,
                }
                for u in users
            ],
        )


def test_revenue_kept_is_clustered_by_user_since_a_users_assignments_share_one_subscription(app_db_env, instance):
    """20 emailed paying users with two assignments each (two episodes, a day apart) and 20 holdout users with
    one: a user's two day-30 verdicts read the same subscription, so they count once (d = 2). The interval of
    the retention difference is that of 14/20 kept against 10/20, not of 28/40."""
    db = app_db_env
    install_schema(db)
    treated, holdout = list(range(1, 21)), list(range(21, 41))
    _assignments(
        db,
        [(u, "sent", ASSIGNED) for u in treated]
        + [(u, "sent", ASSIGNED + timedelta(days=1)) for u in treated]
        + [(u, "holdout", ASSIGNED) for u in holdout],
    )
    lost = set(range(1, 7)) | set(range(21, 31))  # canceled before day 30
    _snapshot(db, date(2026, 5, 12), treated + holdout, lost)
    as_of = date(2026, 5, 12)
    assert run_job(instance, "daily_retention_job", as_of.isoformat(), assets=["campaign_performance"], quiet=True).success
    day30 = db.fetch_all("SELECT * FROM {rs}.campaign_revenue WHERE as_of_date = :d AND horizon_days = 30", {"d": as_of})[0]
    assert (day30.treated, day30.treated_kept, day30.holdout, day30.holdout_kept) == (40, 28, 20, 10)
    by_user = lift(14, 20, 10, 20)
    assert (day30.retention_lift_ci_low, day30.retention_lift_ci_high) == pytest.approx(
        (by_user.ci_low, by_user.ci_high), abs=1e-10
    )
    assert day30.incremental_mrr_ci_low_cents == pytest.approx(by_user.ci_low * 40_000)
