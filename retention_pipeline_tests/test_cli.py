"""The README's main command, run as a user runs it: twice, killed, and recovered."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from retention_pipeline.embedded import EmbeddedPostgres
from retention_pipeline.settings import STATE_DIR
from retention_pipeline_tests.test_embedded import postgres_processes

FROZEN_NOW = "2026-06-17T08:00:00+00:00"


@pytest.fixture
def state_dir():
    path = STATE_DIR / f"test-cli-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli_env(state_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RETENTION_DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")}
    return env | {"RETENTION_STATE_DIR": str(state_dir), "RETENTION_NOW": FROZEN_NOW}


def run_demo(state_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retention_pipeline.cli", "demo", "--users", "300", *extra],
        env=cli_env(state_dir), capture_output=True, text=True, timeout=300,
    )


def comparable(report: str) -> str:
    """The report without what legitimately differs between runs: timings and the seeding note."""
    report = re.sub(r"\n  runs .*", "", report)
    return report.replace("  (seeded now)", "")


def table_counts(state_dir) -> dict:
    server = EmbeddedPostgres(state_dir / "pgdata")
    server.start()
    try:
        with server.connect("retention_demo") as conn, conn.cursor() as cur:
            counts = {}
            for table in ("users", "events", "retention.daily_activity", "retention.weekly_segments", "retention.dormant_users"):
                cur.execute(f"SELECT count(*) FROM {table}")
                counts[table] = cur.fetchone()[0]
            return counts
    finally:
        server.stop()


def test_demo_twice_is_idempotent_and_leaves_nothing_running(state_dir):
    first = run_demo(state_dir)
    assert first.returncode == 0, first.stderr
    assert "Dormant users on 2026-06-16" in first.stdout
    assert "Engagement segments, week of 2026-06-08" in first.stdout
    assert not postgres_processes(state_dir / "pgdata")
    counts_after_first = table_counts(state_dir)

    second = run_demo(state_dir)
    assert second.returncode == 0, second.stderr
    assert "already present" in second.stderr
    assert comparable(second.stdout) == comparable(first.stdout)
    assert table_counts(state_dir) == counts_after_first
    assert not postgres_processes(state_dir / "pgdata")


def test_demo_recovers_after_the_cli_is_killed(state_dir):
    killed = subprocess.Popen(
        [sys.executable, "-m", "retention_pipeline.cli", "demo", "--users", "300"],
        env=cli_env(state_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    for line in killed.stderr:
        if "Backfilling" in line or time.monotonic() > deadline:
            break
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert postgres_processes(state_dir / "pgdata"), "the killed CLI leaves its server behind"

    recovered = run_demo(state_dir)
    assert recovered.returncode == 0, recovered.stderr
    assert "Recovered an embedded PostgreSQL" in recovered.stderr
    assert "Dormant users on 2026-06-16" in recovered.stdout
    assert not postgres_processes(state_dir / "pgdata")


def test_sigterm_stops_everything_the_demo_started(state_dir):
    demo = subprocess.Popen(
        [sys.executable, "-m", "retention_pipeline.cli", "demo", "--users", "300"],
        env=cli_env(state_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for line in demo.stderr:
        if "Seeding" in line or "Backfilling" in line:
            break
    demo.send_signal(signal.SIGTERM)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode != 0
    assert "interrupted" in err
    assert not postgres_processes(state_dir / "pgdata")
