"""The README's main command, run as a user runs it: twice, killed, and recovered; and what it prints is
the README's sample."""

import difflib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from retention_pipeline.local.embedded import EmbeddedPostgres
from retention_pipeline.settings import STATE_DIR
from retention_pipeline_tests.test_embedded import postgres_processes
from retention_pipeline_tests.ui_support import cli_command

FROZEN_NOW = "2026-06-17T08:00:00+00:00"
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def state_dir():
    path = STATE_DIR / f"test-cli-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cli_env(state_dir) -> dict:
    # As a newcomer runs it: the repository's campaigns/, not the single-campaign directory conftest sets.
    unset = ("RETENTION_DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME", "RETENTION_CAMPAIGNS_DIR")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return env | {"RETENTION_STATE_DIR": str(state_dir), "RETENTION_NOW": FROZEN_NOW}


def run_demo(state_dir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "retention_pipeline.cli", "demo", "--users", "300", *extra],
        env=cli_env(state_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_readme_demo(state_dir) -> subprocess.CompletedProcess:
    """`retention-pipeline demo` exactly as the README shows it (2,000 users, every default)."""
    return subprocess.run(cli_command("demo"), env=cli_env(state_dir), capture_output=True, text=True, timeout=900)


def readme_sample() -> list[str]:
    readme = README.read_text()
    block = readme.split("<!-- demo-sample:start -->", 1)[1].split("<!-- demo-sample:end -->", 1)[0]
    return block.strip().removeprefix("```text").removesuffix("```").strip("\n").splitlines()


def shape(line: str) -> str:
    """A report line without what differs from run to run and machine to machine: numbers (with their
    signs, currency and thousands separators), absolute paths, and the column padding numbers cause."""
    line = re.sub(r"(?<=[\s=])(/|%2F)[^\s)]*", "<path>", line)  # a socket dir in a URL is percent-encoded
    line = re.sub(r"[-+]?\$?[-+]?\d[\d,.]*", "#", line)
    return " ".join(line.split())


def assert_matches_the_readme_sample(report: str) -> None:
    sample, printed = [shape(line) for line in readme_sample()], [shape(line) for line in report.strip("\n").splitlines()]
    diff = "\n".join(difflib.unified_diff(sample, printed, "README sample", "demo printed", lineterm=""))
    assert sample == printed, (
        "The README's demo sample no longer matches what `retention-pipeline demo` prints (numbers and paths "
        f"aside). Replace the sample with this run's output:\n{report}\n\n{diff}"
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


@pytest.mark.slow  # two whole demos through the console script
@pytest.mark.timeout(1800)  # two runs of the full-size demo (2,000 users), slower on a loaded machine
def test_demo_twice_is_idempotent_and_leaves_nothing_running(state_dir):
    first = run_readme_demo(state_dir)
    assert first.returncode == 0, first.stderr
    assert_matches_the_readme_sample(first.stdout)
    assert "Dormant users on 2026-06-16" in first.stdout
    assert "Engagement segments, week of 2026-06-08" in first.stdout
    assert not postgres_processes(state_dir / "pgdata")
    counts_after_first = table_counts(state_dir)

    second = run_readme_demo(state_dir)
    assert second.returncode == 0, second.stderr
    assert "already present" in second.stderr
    assert comparable(second.stdout) == comparable(first.stdout)
    assert table_counts(state_dir) == counts_after_first
    assert not postgres_processes(state_dir / "pgdata")


@pytest.mark.slow  # two whole demos through the console script
def test_demo_recovers_after_the_cli_is_killed(state_dir):
    killed = subprocess.Popen(
        [sys.executable, "-m", "retention_pipeline.cli", "demo", "--users", "300"],
        env=cli_env(state_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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
        env=cli_env(state_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in demo.stderr:
        if "Seeding" in line or "Backfilling" in line:
            break
    demo.send_signal(signal.SIGTERM)
    _, err = demo.communicate(timeout=60)
    assert demo.returncode != 0
    assert "interrupted" in err
    assert not postgres_processes(state_dir / "pgdata")


LAUNCHER_STAND_IN = """
import signal, sys, time
from retention_pipeline.cli import ChildProcesses, environment, install_signal_handlers
from retention_pipeline.settings import STATE_DIR
install_signal_handlers()
with environment() as env:
    # What `dev` does: a long-lived child in its own session, recorded with its launcher. This one ignores
    # SIGTERM, as dagster dev does when started with SIGINT ignored, so it outlives a SIGKILLed launcher.
    child = ChildProcesses(STATE_DIR).start([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
"""


def test_a_second_command_leaves_a_running_launchers_child_alone_and_reaps_a_killed_ones(state_dir):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER_STAND_IN], env=cli_env(state_dir), stdout=subprocess.PIPE, text=True
    )
    child_pid = None
    try:
        child_pid = int(launcher.stdout.readline())
        second = subprocess.run(
            cli_command("dagster", "instance", "info"), env=cli_env(state_dir), capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stderr[-3000:]
        assert "owned by another retention-pipeline process" in second.stderr
        assert "Stopped processes" not in second.stderr
        assert psutil.pid_exists(child_pid) and launcher.poll() is None, "the second command stopped the first one's child"
        assert postgres_processes(state_dir / "pgdata"), "the second command stopped the first one's server"

        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE, "the orphan should outlive its launcher"
        third = subprocess.run(
            cli_command("dagster", "instance", "info"), env=cli_env(state_dir), capture_output=True, text=True, timeout=300
        )
        assert third.returncode == 0, third.stderr[-3000:]
        assert f"Stopped processes left running by an earlier, killed run (pid {child_pid})" in third.stderr
        assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
        assert not postgres_processes(state_dir / "pgdata")
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if child_pid and psutil.pid_exists(child_pid):
            psutil.Process(child_pid).kill()
