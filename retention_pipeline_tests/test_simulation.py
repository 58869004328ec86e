"""The simulator drives the real daily pipeline; the measured lift must find the truth it was given."""

import uuid

import pytest
from click.testing import CliRunner

from retention_pipeline.errors import SettingsError
from retention_pipeline.local import demo_data
from retention_pipeline.local.simulation import SimulationConfig, SimulationConfigError, format_report, model_lift, run_simulation
from retention_pipeline.resources import AppDatabase


@pytest.fixture
def fresh_db(pg_server, monkeypatch):
    """A factory of fresh app databases (several per test), exported for the jobs' resources."""
    created = []
    monkeypatch.setenv("RETENTION_UNSUBSCRIBE_SECRET", "test-unsubscribe-secret")

    def make() -> AppDatabase:
        name = f"sim_{uuid.uuid4().hex[:10]}"
        pg_server.ensure_database(name)
        created.append(name)
        conn = pg_server.connect(name)
        demo_data.create_app_tables(conn)
        conn.commit()
        conn.close()
        monkeypatch.setenv("RETENTION_DATABASE_URL", pg_server.url(name))
        return AppDatabase(url=pg_server.url(name))

    yield make
    for name in created:
        pg_server.drop_database(name)


@pytest.mark.slow  # the default population (3,000 users) through 40-60 daily runs
def test_a_true_uplift_of_10_points_is_measured_with_an_interval_that_covers_it(fresh_db, instance):
    config = SimulationConfig()  # the default population: 3,000 users over 60 days
    result = run_simulation(fresh_db(), instance, config)
    row = result.headline(7)
    report = format_report(result)
    print(report)
    truth = result.truth.intention_to_treat
    # The truth is the uplift, less the fatigue of users emailed in an earlier episode.
    assert 0.07 < truth <= 0.10
    assert row["lift_ci_low"] <= truth <= row["lift_ci_high"]
    # Users now differ and tire of emails, so 145 holdout rows no longer give the power to exclude zero
    # for this seed (measured +7.1%, 95% CI -0.6% .. +13.4%): the estimate must still point the right way.
    assert row["lift"] > 0
    assert row["holdout"] >= 100 and row["treated"] >= 900
    # Windows the model does not define get no lift, only the label.
    assert "   1d   not modelled" in report and "  14d   not modelled" in report
    assert "MISSES" not in report and "covers the true intention-to-treat lift" in report


@pytest.mark.slow  # the default population (3,000 users) through 40-60 daily runs
def test_zero_uplift_gives_an_interval_that_covers_zero(fresh_db, instance):
    result = run_simulation(fresh_db(), instance, SimulationConfig(true_uplift=0.0, days=40))
    row = result.headline(7)
    assert row["lift_ci_low"] <= 0.0 <= row["lift_ci_high"]


def test_a_simulation_is_deterministic_for_a_seed(fresh_db, instance):
    config = SimulationConfig(users=500, days=14, seed=3)
    first = run_simulation(fresh_db(), instance, config)
    second = run_simulation(fresh_db(), instance, config)
    assert first.performance == second.performance
    assert (first.emails_sent, first.holdout) == (second.emails_sent, second.holdout)
    other = run_simulation(fresh_db(), instance, SimulationConfig(users=500, days=14, seed=4))
    assert other.performance != first.performance


@pytest.mark.slow  # the default population (3,000 users) through 40-60 daily runs
def test_adaptive_allocation_shifts_sends_to_the_better_variant(fresh_db, instance):
    config = SimulationConfig(days=45, adaptive_allocation=True, variant_uplifts={"recap": 0.30, "nudge": 0.0})
    result = run_simulation(fresh_db(), instance, config)
    weeks = result.variant_sends_by_week
    first_week, last_week = weeks[min(weeks)], weeks[max(weeks) - 1]

    def recap_share(counts):
        return counts.get("recap", 0) / sum(counts.values())

    assert recap_share(first_week) == pytest.approx(0.5, abs=0.15), "before any outcome is known, the split is even"
    assert recap_share(last_week) > 0.75, f"the better variant should take most sends: {weeks}"


@pytest.mark.parametrize("seed", [1, 2])
def test_simulate_recovers_a_known_uplift_as_assigned_for_any_seed(fresh_db, instance, seed):
    """Small populations, a share of sends failing or unknown: the interval covers the intention-to-treat
    truth, failed and unknown sends are counted as emailed, and the fast model agrees with the pipeline."""
    config = SimulationConfig(
        users=900, days=30, seed=seed, failed_send_share=0.15, unknown_send_share=0.05, unsubscribe_share=0.2
    )
    result = run_simulation(fresh_db(), instance, config)
    print(format_report(result))
    row, truth = result.headline(7), result.truth
    assert row["lift_ci_low"] <= truth.intention_to_treat <= row["lift_ci_high"]
    assert result.ledger_by_status["failed"] > 0 and result.ledger_by_status["unknown"] > 0
    assert result.ledger_by_status["suppressed"] > 0, "unsubscribed users assigned to the email stay in its arm"
    assert row["per_protocol_treated"] < row["treated"], "failed and unknown sends stay in the treated arm"
    assert truth.per_protocol == pytest.approx(truth.intention_to_treat * row["treated"] / row["per_protocol_treated"], rel=0.05)
    # Printed, not asserted: the fast model has no "declining" rule (its episodes start at 7 days of
    # inactivity; the pipeline catches most quitters earlier as declining), so its rows are not the same set.
    model = model_lift(config)
    print(
        f"pipeline (inactive): treated {row['treated']}, holdout {row['holdout']}, lift {row['lift']:+.4f}; "
        f"model: treated {model.treated}, holdout {model.holdout}, lift {model.measured.lift:+.4f}, "
        f"truth {model.truth.intention_to_treat:+.4f}"
    )
    assert model.measured.ci_low <= model.truth.intention_to_treat <= model.measured.ci_high


QUIT, COOLDOWN = 0.1, 45  # users who come back go quiet again within ~10 days; a long frequency cap
UNSUBSCRIBE = 1.0  # nearly every delivered email ends in an unsubscribe: an extreme list, to make the bias plain


def test_symmetric_frequency_cap_keeps_the_model_on_the_truth_and_the_old_cap_is_caught():
    """Fast cyclers (users who come back and go quiet again within weeks) under a 45-day frequency cap: the
    old cap, which counted only real sends, let holdout members (one arm per user) back in at once while
    emailed users waited; the measured lift departs from the truth. The pipeline (every assignment counts,
    an arm per step and episode) stays on it."""
    config = SimulationConfig(users=5000, days=90, daily_quit_probability=QUIT, seed=1)
    fixed = model_lift(config, cooldown_days=COOLDOWN)
    old = model_lift(config, symmetric=False, cooldown_days=COOLDOWN, arm_per_user=True)
    print(f"fixed: {fixed.measured}, truth {fixed.truth}\nold: {old.measured}, truth {old.truth}")
    assert fixed.measured.ci_low <= fixed.truth.intention_to_treat <= fixed.measured.ci_high
    assert not old.measured.ci_low <= old.truth.intention_to_treat <= old.measured.ci_high, "the old bias went unseen"
    assert old.truth.baseline_imbalance < fixed.truth.baseline_imbalance - 0.015, (
        "the old cap gave the holdout likelier returners"
    )


def test_symmetric_suppression_keeps_the_model_on_the_truth_and_the_old_filter_is_caught():
    """Fast cyclers, and delivered emails that nearly always end in an unsubscribe. The old design (one arm
    per user, suppressed users skipped before any arm was drawn) took the unsubscribers' later episodes out
    of the email arm only. Later episodes come mostly from users who come back often, so the email arm lost
    its likeliest returners while the holdout kept theirs, and the lift departs from the truth. The
    pipeline draws the arm first and keeps a suppressed assignment in its arm: on the truth."""
    config = SimulationConfig(users=5000, days=90, daily_quit_probability=QUIT, unsubscribe_share=UNSUBSCRIBE, seed=1)
    fixed = model_lift(config)
    old = model_lift(config, arm_per_user=True, suppress_before_assignment=True)
    old_arms_only = model_lift(config, arm_per_user=True)  # the same arms, suppression recorded after the draw
    print(
        f"fixed: {fixed.measured}, truth {fixed.truth}\nold: {old.measured}, truth {old.truth}\n"
        f"old arms, suppression after the draw: {old_arms_only.measured}, truth {old_arms_only.truth}"
    )
    assert fixed.measured.ci_low <= fixed.truth.intention_to_treat <= fixed.measured.ci_high
    assert not old.measured.ci_low <= old.truth.intention_to_treat <= old.measured.ci_high, "the old bias went unseen"
    # The filter itself tilts the arms: with the same per-user arms, skipping before the draw moves the
    # email arm's chance of returning without an email further below the holdout's.
    assert old.truth.baseline_imbalance < old_arms_only.truth.baseline_imbalance - 0.015
    assert old.truth.baseline_imbalance < fixed.truth.baseline_imbalance - 0.015


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"days": 0}, "days must be at least 1 (got 0)"),
        ({"true_uplift": -1.5}, "uplift must be between -1 and 1 (got -1.5)"),
        ({"true_uplift": 1.2}, "uplift must be between -1 and 1 (got 1.2)"),
        ({"base_return_7d": 1.3}, "base_return_7d is a probability in [0, 1] (got 1.3)"),
        ({"failed_send_share": -0.1}, "failed_send_share is a probability in [0, 1] (got -0.1)"),
        ({"unsubscribe_share": 1.5}, "unsubscribe_share is a probability in [0, 1] (got 1.5)"),
        ({"base_return_7d": 0.2, "true_uplift": -0.5}, "base return 0.2 plus uplift -0.5 is not a probability"),
    ],
)
def test_nonsense_simulation_settings_are_rejected_with_one_clear_line(settings, message):
    with pytest.raises(SimulationConfigError) as caught:
        SimulationConfig(**settings)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, SettingsError)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_simulate_command_rejects_an_impossible_uplift_in_one_line(monkeypatch, capsys):
    """Through the console script's entry point: a bad argument is one line and exit code 2."""
    from retention_pipeline.entry import main as console_script

    monkeypatch.delenv("RETENTION_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        console_script(["simulate", "--uplift", "1.5"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--uplift" in lines[0] and "1.5" in lines[0], lines


def test_coverage_benchmark_writes_its_report(tmp_path):
    """`uv run python -m benchmarks.coverage`, tiny: every run lands in the report, with the coverage column."""
    from benchmarks.coverage import main as coverage

    result = CliRunner().invoke(
        coverage, ["--seeds", "2", "--users", "300", "--days", "20", "--workers", "1", "--results-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = next(tmp_path.glob("*-coverage-clustered.md")).read_text()
    assert "| +0.00 | every assignment (fixed) | 2 |" in report and "| +0.10 | every assignment (fixed) | 2 |" in report
    assert "coverage, clustered | coverage, independent rows" in report
