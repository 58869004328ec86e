"""`retention-pipeline`: finds users who drift away from your app and brings them back.

Every command works on the embedded default (a PostgreSQL server started and stopped by the
command itself, with demo data) unless RETENTION_DATABASE_URL points at your app's database.

Every setting is checked before a command starts: a bad one is reported in one line (exit code 2).

\b
Environment variables (all optional; the README's table says more):
  RETENTION_DATABASE_URL        the app's PostgreSQL; unset = embedded server with demo data
  DAGSTER_PG_URL                Dagster's own storage database (needed with RETENTION_DATABASE_URL)
  DAGSTER_HOME                  Dagster instance directory (default .retention/dagster_home)
  RETENTION_STATE_DIR           local, git-ignored state (default .retention/)
  RETENTION_TIMEZONE            timezone of every partition and schedule (default UTC)
  RETENTION_PARTITIONS_START    first daily partition (default 2025-01-01)
  RETENTION_MORNING_CRON        the daily run (default "0 9 * * *")
  RETENTION_WEEKLY_CRON         the weekly segments run (default "0 10 * * 1")
  RETENTION_BILLING_CRON        the Stripe snapshot (default "30 8 * * *")
  RETENTION_NOW                 pretend the clock says this ISO time (simulations, tests)
  STRIPE_API_KEY, STRIPE_API_BASE   Stripe; unset = a local Stripe stand-in
  RESEND_API_KEY, RESEND_API_URL    Resend; unset = emails go to the outbox
  RETENTION_UNSUBSCRIBE_SECRET  key of the unsubscribe links (at least 16 characters)
  RETENTION_DEBUG               1 = show the traceback of an error
"""

from __future__ import annotations

import os
import socket
import sys
import time
import warnings

import click

# The CLI talks to people: library chatter (beta-API notices, a missing XDG_RUNTIME_DIR) is noise here.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")

from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR, SettingsError, check_environment  # noqa: E402

try:
    from retention_pipeline.local.launcher import ChildProcesses, environment, install_signal_handlers
except ModuleNotFoundError as missing:  # a production install of the wheel: no local harness
    _HARNESS_MISSING = missing

    def _needs_harness(*_args, **_kwargs):
        raise _HARNESS_MISSING

    ChildProcesses = environment = _needs_harness

    def install_signal_handlers() -> None:
        """Without the harness there is no embedded server or child process to stop on SIGTERM."""


DEMO_HISTORY_DAYS = 90


@click.group(help=__doc__, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def main() -> None:
    check_environment()
    install_signal_handlers()


def _say(message: str) -> None:
    click.echo(message, err=True)


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


@main.command()
@click.option("--seed", default=42, show_default=True, help="Seed of the demo data generator.")
@click.option(
    "--users",
    "n_users",
    default=2000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Demo users to generate (first run only).",
)
def demo(seed: int, n_users: int) -> None:
    """Run the whole retention loop once on demo data and print what it found.

    Starts the embedded PostgreSQL (unless RETENTION_DATABASE_URL is set), creates and seeds the demo
    app on the first run, installs the events trigger, backfills the history as single runs and runs
    the daily job for the latest complete day. Safe to run again: every step replaces its own output.
    """
    started = time.monotonic()
    try:
        with environment() as env:
            # Imported only now: the definitions read STRIPE_API_BASE, which the environment just set.
            from retention_pipeline.local.demo import run_demo

            for note in env.notes:
                _say(note)
            report = run_demo(env, seed=seed, n_users=n_users, history_days=DEMO_HISTORY_DAYS, say=_say)
    except KeyboardInterrupt:
        _fail("interrupted; everything this command started has been stopped. Run it again to start over.")
    click.echo(report)
    _say(f"Done in {time.monotonic() - started:.0f} s. Next: `uv run retention-pipeline dev` opens the Dagster UI.")


@main.command()
@click.option(
    "--port", default=3000, show_default=True, type=click.IntRange(1, 65535), help="Port of the Dagster UI on 127.0.0.1."
)
def dev(port: int) -> None:
    """Open the Dagster UI (`dagster dev`) on the same instance and data as `demo`, at 127.0.0.1:PORT.

    Ctrl-C stops the UI, the daemon and the embedded PostgreSQL.
    """
    _require_free_port(port)
    try:
        with environment() as env:
            for note in env.notes:
                _say(note)
            children = ChildProcesses(STATE_DIR)
            process = children.start(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "dev",
                    "-w",
                    str(PROJECT_ROOT / "workspace.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=PROJECT_ROOT,
            )
            _say(f"Dagster UI starting at http://127.0.0.1:{port} (about 20 s). Ctrl-C stops everything.")
            try:
                code = process.wait()
            finally:
                children.stop(process)
            if code:
                _fail(f"dagster dev exited with code {code}; its output is above.")
    except KeyboardInterrupt:
        _say("Stopped the Dagster UI and the embedded PostgreSQL.")


def _require_free_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise click.BadParameter(
                f"127.0.0.1:{port} is already in use (another `dev`?); pick a free port.", param_hint="'--port'"
            ) from None


@main.command(
    "dagster",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def dagster_command(args: tuple[str, ...]) -> None:
    """Run any `dagster` CLI command against the same instance and data, e.g. a backfill:

    \b
    retention-pipeline dagster asset materialize -m retention_pipeline.definitions \\
        --select daily_activity_snapshots --partition-range 2026-08-01...2026-10-29
    """
    try:
        with environment() as env:
            for note in env.notes:
                _say(note)
            children = ChildProcesses(STATE_DIR)
            process = children.start([sys.executable, "-m", "dagster", *args], cwd=PROJECT_ROOT)
            try:
                code = process.wait()
            finally:
                children.stop(process)
    except KeyboardInterrupt:
        _fail("interrupted; the dagster command and the embedded PostgreSQL were stopped.")
    sys.exit(code)


@main.command()
@click.option("--days", default=60, show_default=True, type=click.IntRange(min=1), help="Days to simulate.")
@click.option("--users", default=3000, show_default=True, type=click.IntRange(min=1), help="Size of the synthetic population.")
@click.option(
    "--uplift",
    default=0.10,
    show_default=True,
    type=click.FloatRange(-1.0, 1.0),
    help="True uplift of an email on the 7-day return rate (added to --base-return).",
)
@click.option(
    "--base-return",
    default=0.20,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    help="7-day return rate without an email, between 0 and 1.",
)
@click.option("--seed", default=7, show_default=True, help="Seed: the same seed gives the same simulation.")
@click.option("--adaptive", is_flag=True, help="Turn on adaptive variant allocation (Thompson sampling).")
def simulate(days: int, users: int, uplift: float, base_return: float, seed: int, adaptive: bool) -> None:
    """Run the real daily pipeline over a synthetic population, day by day with a set clock, and compare
    the measured lift with the true one. Uses a fresh `retention_sim` database on the embedded server."""
    if os.environ.get("RETENTION_DATABASE_URL"):
        raise SettingsError(
            "RETENTION_DATABASE_URL is set, but simulate only runs on the embedded server (it creates "
            "and drops its own database); unset RETENTION_DATABASE_URL for this command."
        )
    if not 0.0 <= base_return + uplift <= 1.0:
        raise click.BadParameter(
            f"--base-return {base_return} plus --uplift {uplift} is the return rate of an "
            "emailed user and must be between 0 and 1.",
            param_hint="'--uplift'",
        )
    started = time.monotonic()
    try:
        from retention_pipeline.local.simulation import SimulationConfig, format_report, run_simulation, simulation_database

        # Checked before anything starts: nonsense (no days, an uplift beyond +-1) is one line, not a report.
        config = SimulationConfig(
            days=days, users=users, true_uplift=uplift, base_return_7d=base_return, seed=seed, adaptive_allocation=adaptive
        )
        with environment() as env:
            from dagster import DagsterInstance

            _say(f"Simulating {days} days of {users:,} users (true uplift {uplift:+.0%}) ...")
            from retention_pipeline.outreach.campaigns import without_campaign_files

            # The simulation models one campaign, the run config's; the campaign files do not take part.
            with (
                simulation_database(env.embedded) as db,
                DagsterInstance.ephemeral() as instance,
                without_campaign_files(STATE_DIR),
            ):
                result = run_simulation(db, instance, config, say=_say)
    except KeyboardInterrupt:
        _fail("interrupted; everything this command started has been stopped.")
    click.echo(format_report(result))
    _say(f"Done in {time.monotonic() - started:.0f} s.")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def benchmark(args: tuple[str, ...]) -> None:
    """Measure the pipeline at scale against bare SQL and the provider's rate limit.

    Every option of `uv run python -m benchmarks.run` (see `retention-pipeline benchmark --help`): builds
    each dataset with set-based SQL on its own embedded PostgreSQL (.retention/bench-pgdata, deleted at
    the end unless --keep-data) and writes benchmarks/results/latest.md and latest.json. About 15 minutes
    at the default scale.
    """
    try:
        from benchmarks.run import main as benchmark_main
    except ImportError:
        _fail("the benchmarks/ folder of the project's repository is needed: run this from a checkout (uv run ...).")
    started = time.monotonic()
    try:
        benchmark_main.main(args=list(args), prog_name="retention-pipeline benchmark", standalone_mode=False)
    except KeyboardInterrupt:
        _fail("interrupted; the benchmark's PostgreSQL was stopped (its data stays in .retention/bench-pgdata).")
    except click.exceptions.Exit:
        return  # --help
    except click.ClickException as error:
        _fail(f"{error.format_message()} (see `retention-pipeline benchmark --help`)", code=2)
    _say(f"Done in {(time.monotonic() - started) / 60:.1f} min.")


@main.group()
def trigger() -> None:
    """Install or remove the activity trigger on the app's events table."""


@trigger.command("install")
def trigger_install() -> None:
    """Install the trigger (idempotent) and fill user_activity from the events already there."""
    from retention_pipeline.activity.trigger import install_trigger
    from retention_pipeline.local.demo import app_database

    with environment() as env:
        tracked = install_trigger(app_database(env))
    click.echo(f"Trigger installed; user_activity tracks {tracked:,} users.")


@trigger.command("uninstall")
def trigger_uninstall() -> None:
    """Remove the trigger and its function (the user_activity table is kept)."""
    from retention_pipeline.activity.trigger import uninstall_trigger
    from retention_pipeline.local.demo import app_database

    with environment() as env:
        uninstall_trigger(app_database(env))
    click.echo("Trigger removed.")


# The command groups of their own modules register on `main` when imported (after it exists).
from retention_pipeline.cli import campaigns as _campaigns  # noqa: E402, F401
from retention_pipeline.cli import db as _db  # noqa: E402, F401
