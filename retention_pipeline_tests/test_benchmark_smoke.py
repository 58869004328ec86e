"""The benchmark, end to end at a tiny scale, through the command a user runs: so it never rots.

Every phase runs (emails, daily partition, backfill, segments, dormant users, the daily job in a
subprocess, the trigger with pgbench) on the benchmark's own embedded PostgreSQL in a temporary
directory, next to the tests' server and any other benchmark run. Only the structure of the results
and the correctness checks are asserted, never a timing: targets live in the results, not in tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from retention_pipeline.local.embedded import EmbeddedPostgres
from retention_pipeline.settings import PROJECT_ROOT
from retention_pipeline_tests.test_embedded import postgres_processes

USERS, EVENTS, DAYS = 300, 20_000, 14  # 14 days: the fewest the benchmark takes (one whole week of segments)
EMAILS = 300
PHASES = ("daily_partition", "backfill", "weekly_segments", "dormant_users", "daily_job", "trigger")


def _clean_env(tmp_path) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RETENTION_DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "RETENTION_NOW")
        and not k.startswith("RETENTION_BENCH_")
    }
    # Even the defaults point into tmp_path: nothing here can reach .retention/bench-pgdata.
    return inherited | {"RETENTION_STATE_DIR": str(tmp_path / "state")}


def _stop_leftover_server(pgdata) -> None:
    """After a killed benchmark: adopt its server and stop it, so nothing is left running."""
    if postgres_processes(pgdata):
        server = EmbeddedPostgres(pgdata)
        server.start()
        server.stop()


def test_the_benchmark_runs_end_to_end_at_a_tiny_scale(tmp_path):
    pgdata, results = tmp_path / "pgdata", tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "benchmarks.run",
        "--users",
        str(USERS),
        "--events",
        str(EVENTS),
        "--days",
        str(DAYS),
        "--reps",
        "1",
        "--pgbench-seconds",
        "2",
        "--bulk-rows",
        "20000",
        "--email-count",
        str(EMAILS),
        "--email-rate",
        "50",
        "--budget-minutes",
        "5",
        "--build-budget-minutes",
        "2",
        "--name",
        "smoke",
        "--pgdata",
        str(pgdata),
        "--results-dir",
        str(results),
    ]
    process = subprocess.Popen(
        command,
        cwd=PROJECT_ROOT,
        env=_clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"the benchmark did not finish in 300 s:\n{err[-4000:]}") from None
    finally:
        _stop_leftover_server(pgdata)

    assert process.returncode == 0, f"exit {process.returncode}:\n{err[-4000:]}"
    assert not postgres_processes(pgdata), "the benchmark's PostgreSQL is still running"
    assert not pgdata.exists(), "without --keep-data the benchmark deletes its server's data"

    md, js = results / "smoke.md", results / "smoke.json"
    assert md.is_file() and js.is_file(), sorted(p.name for p in results.iterdir())
    report = json.loads(js.read_text())
    assert report["parameters"]["pgdata"] == str(pgdata.resolve())
    assert report["parameters"]["users"] == USERS and report["parameters"]["days"] == DAYS

    # Emails: every one accepted exactly once.
    emails = report["emails"]
    assert "error" not in emails, emails
    assert emails["emails"] == EMAILS and emails["accepted"] == EMAILS
    assert emails["duplicates"] == 0 and emails["lost"] == 0 and not emails["errors"]

    # One scale, every phase measured.
    [scale] = report["scales"]
    assert scale["status"] == "complete", scale.get("traceback") or scale["status"]
    assert scale["dataset"]["users"] == USERS
    assert abs(scale["dataset"]["events"] - EVENTS) <= EVENTS * 0.1, scale["dataset"]
    m = scale["measurements"]
    assert set(PHASES) <= set(m), sorted(m)

    backfill = m["backfill"]
    assert backfill["same_figures"] is True, "the backfill's figures differ from the bare SQL's"
    assert backfill["days"] == DAYS and backfill["rows"] > 0
    assert m["daily_partition"]["same_figures"] is True
    assert m["weekly_segments"]["rows"] > 0
    assert m["dormant_users"]["rows"] >= m["dormant_users"]["targeted"] >= 0
    assert m["dormant_users"]["cold_step_seconds"] > 0 and m["dormant_users"]["carried_over"] >= 0

    daily_job = m["daily_job"]
    assert daily_job["peak_pss_mb"] > 0 and daily_job["peak_rss_mb"] > 0 and daily_job["steps"]
    assert daily_job["emails_accepted_by_provider"] == int(daily_job["emails"].get("emails_sent", 0))
    assert int(daily_job["emails"].get("failed", 0)) == 0

    trigger = m["trigger"]
    assert trigger["drain"]["rows"] == 20_000  # the queue of the one bulk insert with the trigger, all drained
    install = trigger["install"]
    assert install["users_tracked"] > 0 and install["inserts_during_install"] > 0
    assert install["max_insert_wait_seconds"] >= install["median_insert_during_install_ms"] / 1000
    assert trigger["bulk_rows"] == 20_000
    assert len(trigger["bulk"]["with"]) == len(trigger["bulk"]["without"]) == 1
    assert trigger["pgbench"]["with"][0]["transactions"] > 0 and trigger["pgbench"]["without"][0]["transactions"] > 0
    only_pair = 1 - trigger["pgbench"]["with"][0]["tps"] / trigger["pgbench"]["without"][0]["tps"]
    assert trigger["tps_loss_pairs"] == [round(only_pair, 3)] == [trigger["tps_loss"]]
    only_bulk_pair = trigger["bulk"]["with"][0]["seconds"] / trigger["bulk"]["without"][0]["seconds"]
    assert trigger["bulk_ratio_pairs"] == [round(only_bulk_pair, 3)] == [trigger["bulk_ratio"]]

    # The targets table names every target a one-scale run measures (growth needs two scales).
    targets = {t["target"] for t in report["targets"]}
    assert targets == {
        f"{DAYS}-day backfill vs bare SQL",
        "one daily partition vs bare SQL (start-up separate)",
        "trigger: 20,000-row bulk insert (median of pairs)",
        "trigger: single-row throughput loss (pgbench, median of with/without pairs)",
        "trigger install: longest app insert during it",
        f"{EMAILS} emails vs the rate-limit bound",
        "daily run peak memory (PSS of its processes) at every scale",
    }, targets
    assert all(isinstance(t["met"], bool) for t in report["targets"])

    text = md.read_text()
    for heading in ("# Benchmark results", "## Targets", "## Emails", "## Every scale"):
        assert heading in text
    for target in targets:
        assert f"| {target} |" in text
    assert "| status | complete |" in text
