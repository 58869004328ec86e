"""The simulator drives the real daily pipeline; the measured lift must find the truth it was given."""

import uuid

import pytest

from retention_pipeline import demo_data
from retention_pipeline.resources import AppDatabase
from retention_pipeline.simulation import SimulationConfig, format_report, run_simulation


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


def test_a_true_uplift_of_10_points_is_measured_with_an_interval_that_covers_it(fresh_db, instance):
    config = SimulationConfig()  # the default population: 3,000 users over 60 days
    result = run_simulation(fresh_db(), instance, config)
    row = result.headline(7)
    print(format_report(result))
    assert row["lift_ci_low"] <= 0.10 <= row["lift_ci_high"]
    assert row["lift_ci_low"] > 0, "with this population the interval must exclude zero"
    assert row["holdout"] >= 100 and row["treated"] >= 900


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


def test_adaptive_allocation_shifts_sends_to_the_better_variant(fresh_db, instance):
    config = SimulationConfig(days=45, adaptive_allocation=True, variant_uplifts={"recap": 0.30, "nudge": 0.0})
    result = run_simulation(fresh_db(), instance, config)
    weeks = result.variant_sends_by_week
    first_week, last_week = weeks[min(weeks)], weeks[max(weeks) - 1]

    def recap_share(counts):
        return counts.get("recap", 0) / sum(counts.values())

    assert recap_share(first_week) == pytest.approx(0.5, abs=0.15), "before any outcome is known, the split is even"
    assert recap_share(last_week) > 0.75, f"the better variant should take most sends: {weeks}"
