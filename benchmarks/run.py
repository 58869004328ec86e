"""`uv run python -m benchmarks.run`: build a dataset at one or more scales and measure the pipeline.

    uv run python -m benchmarks.run                         # 100,000 users, 10,000,000 events, 90 days
    uv run python -m benchmarks.run --scales 10000,100000,1000000
    uv run retention-pipeline benchmark --scales 10000,100000    # the same, through the project's CLI

Everything runs on a dedicated embedded PostgreSQL in `.retention/bench-pgdata` (git-ignored), deleted
at the end unless --keep-data. Results: `benchmarks/results/latest.md` and `latest.json`. Another data
directory (--pgdata, RETENTION_BENCH_PGDATA) and results directory (--results-dir, RETENTION_BENCH_RESULTS_DIR)
keep a run apart from any other, e.g. the tiny smoke test of the test suite:

    uv run python -m benchmarks.run --users 300 --events 20000 --days 14 --reps 1 --pgbench-seconds 2 \
        --bulk-rows 20000 --email-count 300 --email-rate 50 --pgdata /tmp/b/pgdata --results-dir /tmp/b/results
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path

import click
import psutil

from benchmarks import dataset, measure
from benchmarks.server import BENCH_PGDATA, DAGSTER_DATABASE, dagster_home_for, run_environment, settings_in_force, start_server
from benchmarks.timing import loads

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_USERS = 100_000
DEFAULT_EVENTS = 10_000_000
DEFAULT_DAYS = 90
# The weekly segments measure the last whole Monday..Sunday week before the as-of day: it lies inside
# the data only with at least 13 days of history; two weeks is the smallest dataset the benchmark takes.
MIN_DAYS = 14
DEFAULT_EMAILS = 10_000
DEFAULT_EMAIL_RATE = 2
DEFAULT_PGBENCH_SECONDS = 20
DEFAULT_BULK_ROWS = 1_000_000


def _say(message: str) -> None:
    click.echo(message, err=True)


def _reps(users: int, override: int | None = None) -> dict[str, int]:
    if override:
        reps = {key: override for key in ("backfill", "daily", "segments", "dormant", "trigger")}
        return reps | ({"bare_last": True} if users > 200_000 else {})
    # The trigger's samples move 5-10 points between runs on 2 cores (a single 1M-row pair at 1M users gave
    # 1.12x in one run and 1.29x in the next): three alternating pairs of each kind at every scale, however
    # few repetitions the (many-minute) pipeline phases get at 1M.
    if users <= 20_000:
        return {"backfill": 3, "daily": 5, "segments": 3, "dormant": 3, "trigger": 3}
    if users <= 200_000:
        return {"backfill": 2, "daily": 5, "segments": 3, "dormant": 3, "trigger": 3}
    return {"backfill": 1, "daily": 3, "segments": 1, "dormant": 1, "trigger": 3, "bare_last": True}


def run_benchmarks(
    users: int = DEFAULT_USERS,
    events: int = DEFAULT_EVENTS,
    days: int = DEFAULT_DAYS,
    scales: list[int] | None = None,
    budget_minutes: float = 25.0,
    build_budget_minutes: float = 30.0,
    seed: int = 42,
    only_phases: list[str] | None = None,
    rebuild: bool = False,
    keep_data: bool = False,
    emails: bool = True,
    output: Path = RESULTS_DIR,
    name: str = "latest",
    say: Callable[[str], None] = _say,
    pgdata: Path = BENCH_PGDATA,
    reps: int | None = None,
    pgbench_seconds: int = DEFAULT_PGBENCH_SECONDS,
    bulk_rows: int = DEFAULT_BULK_ROWS,
    email_count: int = DEFAULT_EMAILS,
    email_rate: int = DEFAULT_EMAIL_RATE,
) -> dict:
    """Run every measurement at every scale and write `<output>/<name>.md` and `.json`; returns the results.

    `pgdata` is the benchmark server's data directory (its socket lives there too); `reps` overrides the
    repetitions of every measurement (default: by scale, see _reps); `pgbench_seconds` and `bulk_rows` size
    the trigger phase, `email_count` and `email_rate` (requests/s of the local Resend-like server) the emails.
    """
    warnings.filterwarnings("ignore")
    from retention_pipeline import clock

    if days < MIN_DAYS:
        raise ValueError(f"days must be at least {MIN_DAYS} (one whole Monday..Sunday week for the segments), got {days}")
    pgdata = Path(pgdata).resolve()
    output = Path(output)
    scales = sorted(scales or [users])
    events_per_user = events / users
    started_at = datetime.now(UTC)
    results: dict = {
        "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]) if sys.argv else "",
        "started_at": started_at.isoformat(timespec="seconds"),
        "machine": _machine(),
        "parameters": {
            "users": users,
            "events": events,
            "days": days,
            "scales": scales,
            "seed": seed,
            "budget_minutes_per_scale": budget_minutes,
            "build_budget_minutes_per_scale": build_budget_minutes,
            "events_per_user": events_per_user,
            "pgdata": str(pgdata),
            "reps": reps,
            "pgbench_seconds": pgbench_seconds,
            "bulk_rows": bulk_rows,
            "email_count": email_count,
            "email_rate": email_rate,
        },
        "scales": [],
    }
    say(
        f"Benchmark on {results['machine']['cores']} cores, {results['machine']['memory_gb']} GB, "
        f"load {results['machine']['load_at_start']} ..."
    )
    server = start_server(say, pgdata)
    try:
        results["postgres_settings"] = settings_in_force(server)
        server.ensure_database(DAGSTER_DATABASE)
        if emails:
            say("Emails (independent of the dataset's scale):")
            try:
                results["emails"] = measure.measure_emails(say, total=email_count, rate=email_rate)
            except Exception as exc:  # noqa: BLE001 - reported, the other phases still run
                results["emails"] = {"error": f"{type(exc).__name__}: {exc}"}
                say(f"    emails failed: {exc}")
        for n_users in scales:
            spec = dataset.DatasetSpec(
                users=n_users,
                events=int(round(n_users * events_per_user)),
                days=days,
                as_of=clock.latest_complete_day(),
                seed=seed,
            )

            def checkpoint(entry):
                _write({**results, "scales": [*results["scales"], entry]}, output, name)

            results["scales"].append(
                _run_scale(
                    server,
                    spec,
                    budget_minutes,
                    rebuild,
                    keep_data,
                    say,
                    build_budget_minutes,
                    only_phases,
                    checkpoint,
                    reps=reps,
                    pgbench_seconds=pgbench_seconds,
                    bulk_rows=bulk_rows,
                )
            )
            _write(results, output, name)
    finally:
        server.stop()
        if not keep_data:
            say(f"Deleting the benchmark server's data ({pgdata}) ...")
            shutil.rmtree(pgdata, ignore_errors=True)
            pgdata.with_name(pgdata.name + ".owner.lock").unlink(missing_ok=True)
            if pgdata != BENCH_PGDATA.resolve():
                shutil.rmtree(dagster_home_for(pgdata), ignore_errors=True)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["growth"] = _growth(results["scales"])
    results["targets"] = _targets(results, users)
    md, js = _write(results, output, name)
    say(f"Results: {md} and {js}")
    return results


def _run_scale(
    server,
    spec: dataset.DatasetSpec,
    budget_minutes: float,
    rebuild: bool,
    keep: bool,
    say,
    build_budget_minutes: float = 30.0,
    only_phases: list[str] | None = None,
    checkpoint=None,
    reps: int | None = None,
    pgbench_seconds: int = DEFAULT_PGBENCH_SECONDS,
    bulk_rows: int = DEFAULT_BULK_ROWS,
) -> dict:
    started = time.monotonic()
    build_deadline = started + build_budget_minutes * 60
    entry: dict = {
        "users": spec.users,
        "events_requested": spec.events,
        "days": spec.days,
        "status": "running",
        "load_at_start": loads(),
        "measurements": {},
    }
    say(
        f"\nScale: {spec.users:,} users, {spec.events:,} events over {spec.days} days "
        f"(budgets: dataset {build_budget_minutes:.0f} min, measurements {budget_minutes:.0f} min)"
    )
    server.ensure_database(spec.database)
    conn = server.connect(spec.database)
    conn.autocommit = True  # an idle transaction would hold locks that the trigger's install waits for
    scale = None
    try:
        params = dataset.existing_params(conn)
        same = (
            params
            and (params["users"], params["days"], params["seed"]) == (spec.users, spec.days, spec.seed)
            and abs(params["events"] - spec.events) <= spec.events * 0.02
        )
        if same and not rebuild:
            spec = dataset.DatasetSpec(spec.users, spec.events, spec.days, params["as_of"], spec.seed)
            say(f"  reusing the dataset built earlier (as of {spec.as_of}, built in {params['build_seconds']:.0f} s)")
            entry["dataset_build"] = {"reused": True, "build_seconds": params["build_seconds"]}
        else:
            entry["dataset_build"] = _build(server, conn, spec, build_deadline, say)
            params = dataset.existing_params(conn)
        entry["as_of"] = spec.as_of.isoformat()
        deadline = time.monotonic() + budget_minutes * 60  # the measurements' budget, after the dataset is ready
        now_iso = datetime.combine(spec.as_of + timedelta(days=1), clock_time(9), UTC).isoformat()
        env = run_environment(server, spec.database, now_iso)
        os.environ.update(env)
        scale = measure.Scale(
            spec=spec,
            server=server,
            deadline=deadline,
            say=say,
            reps=_reps(spec.users, reps),
            env=env,
            pgbench_seconds=pgbench_seconds,
            bulk_rows=bulk_rows,
        )
        _reset_outputs(scale, params["base_max_event_id"])
        entry["dataset"] = dataset.describe(conn)
        say(
            f"  dataset: {entry['dataset']['users']:,} users, {entry['dataset']['events']:,} events, "
            f"{entry['dataset']['auth_sessions']:,} sessions, {entry['dataset']['stripe_subscriptions']:,} subscriptions, "
            f"{entry['dataset']['database_bytes'] / 2**30:.1f} GB"
        )
        phases = [
            ("daily_partition", measure.measure_daily_partition),
            ("backfill", measure.measure_backfill),
            ("weekly_segments", measure.measure_segments),
            ("dormant_users", measure.measure_dormant),
            ("daily_job", measure.measure_daily_job),
            ("trigger", measure.measure_trigger),
            ("backfill_bare_last", measure.measure_backfill_bare_last),
        ]
        if only_phases:
            phases = [(key, phase) for key, phase in phases if key in only_phases]
        scale.measurements = entry["measurements"]
        for key, phase in phases:
            try:
                value = phase(scale)
                if value is not None:
                    entry["measurements"][key] = value
                if checkpoint is not None:
                    checkpoint(entry)  # what is measured so far survives an interrupted run
            except measure.BudgetExceeded as exc:
                entry["status"] = f"incomplete: {exc}"
                say(f"  STOPPED: {exc}")
                break
        else:
            entry["status"] = "complete"
        if keep and "trigger" in entry["measurements"]:
            say("  removing the trigger benchmark's events and recomputing user_activity (the trigger's install) ...")
            entry["measurements"]["trigger"].update(measure.restore_events(scale, params["base_max_event_id"], recompute=True))
    except measure.BudgetExceeded as exc:
        entry["status"] = f"incomplete: {exc}"
        say(f"  STOPPED: {exc}")
    except TimeoutError as exc:
        entry["status"] = f"incomplete: {exc}"
        say(f"  STOPPED: {exc}")
    except Exception as exc:  # noqa: BLE001 - one scale's failure is a result, not a crash
        entry["status"] = f"failed: {type(exc).__name__}: {exc}"
        entry["traceback"] = traceback.format_exc()
        say(f"  FAILED: {exc}")
    finally:
        if scale is not None:
            scale.close()
        conn.close()
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["load_at_end"] = loads()
    if not keep:
        server.drop_database(spec.database)
    say(f"  scale done in {entry['seconds'] / 60:.1f} min: {entry['status']}")
    return entry


def _build(server, conn, spec: dataset.DatasetSpec, deadline: float, say) -> dict:
    from retention_pipeline.activity.trigger import install_trigger
    from retention_pipeline.resources import AppDatabase
    from retention_pipeline.schema import install_schema

    say(f"  building the dataset with set-based SQL (as of {spec.as_of}) ...")
    t0 = time.monotonic()
    built = dataset.build(conn, spec, say, deadline)
    db = AppDatabase(url=server.url(spec.database), statement_timeout_seconds=3600)
    install_schema(db)
    now = datetime.combine(spec.as_of + timedelta(days=1), clock_time(8, 30), UTC)
    t1 = time.monotonic()
    subscriptions = dataset.add_subscriptions(conn, now)
    built["timings"]["subscriptions"] = time.monotonic() - t1
    t1 = time.monotonic()
    tracked = install_trigger(db)
    built["timings"]["trigger_install"] = time.monotonic() - t1
    db.engine().dispose()
    seconds = time.monotonic() - t0
    dataset.mark_complete(conn, spec, built, seconds)
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    conn.commit()
    say(
        f"  built in {seconds:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in built['timings'].items())}); "
        f"{subscriptions:,} subscriptions, {tracked:,} users tracked by the trigger"
    )
    return {"reused": False, "build_seconds": round(seconds, 1), "timings": {k: round(v, 1) for k, v in built["timings"].items()}}


def _reset_outputs(scale: measure.Scale, base_max_event_id: int) -> None:
    """Every measurement starts from the dataset alone: no pipeline output, no leftover benchmark events,
    and the current code's schema and trigger function (a reused dataset may predate them)."""
    from retention_pipeline.activity.trigger import _function_sql
    from retention_pipeline.db import run_script
    from retention_pipeline.schema import install_schema

    scale.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    db = scale.app_db()
    install_schema(db)
    with db.begin() as conn:
        run_script(conn, db.render(_function_sql(db)))
    db.engine().dispose()
    leftovers = scale.sql("SELECT count(*) FROM public.events WHERE id > %s", (base_max_event_id,), fetch=True)[0][0]
    dirty = scale.sql("SELECT to_regclass('bench.trigger_dirty') IS NOT NULL", fetch=True)[0][0]
    if leftovers or dirty:
        scale.say(f"  removing {leftovers:,} events left by an interrupted trigger benchmark, recomputing user_activity ...")
        measure.restore_events(scale, base_max_event_id, recompute=True)
    scale.sql(
        "TRUNCATE retention.daily_activity, retention.weekly_segments, retention.dormant_users, "
        "retention.email_sends, retention.reengagement_outcomes, retention.campaign_performance, "
        "retention.allocation_decisions, retention.email_outbox"
    )
    scale.sql("DROP TABLE IF EXISTS bench.scratch_daily")
    scale.say("  warming the cache (one scan of events and sessions) ...")
    scale.sql("SELECT count(*) FROM public.events")
    scale.sql("SELECT count(*) FROM public.auth_sessions")


# ---------------------------------------------------------------------------------------------
# Machine, growth, targets, report
# ---------------------------------------------------------------------------------------------


def _machine() -> dict:
    import dagster
    import psycopg2
    import sqlalchemy

    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "dagster": dagster.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
        "sqlalchemy": sqlalchemy.__version__,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _phase_seconds(scale: dict) -> dict[str, float]:
    m = scale.get("measurements", {})
    out = {}
    if "backfill" in m:
        out["backfill run"] = m["backfill"]["run_seconds"]
    if "daily_partition" in m:
        out["daily partition SQL"] = m["daily_partition"]["sql_seconds"]
    if "weekly_segments" in m:
        out["weekly segments step"] = m["weekly_segments"]["step_seconds"]
    if "dormant_users" in m:
        out["dormant users step"] = m["dormant_users"]["step_seconds"]
        if "cold_step_seconds" in m["dormant_users"]:
            out["dormant users step, cold"] = m["dormant_users"]["cold_step_seconds"]
    if "daily_job" in m:
        out["daily job wall"] = m["daily_job"]["wall_seconds"]
    return out


def _growth(scales: list[dict]) -> dict:
    """Exponent b of time ~ users^b between the smallest and the largest scale that measured each phase."""
    growth = {}
    done = [s for s in scales if s.get("measurements")]
    phases = {p for s in done for p in _phase_seconds(s)}
    for phase in sorted(phases):
        by_users = {s["users"]: _phase_seconds(s)[phase] for s in done if phase in _phase_seconds(s)}  # a re-run wins
        points = sorted(by_users.items())
        if len(points) < 2:
            continue
        (n1, t1), (n2, t2) = points[0], points[-1]
        exponent = _exponent(n1, t1, n2, t2)
        growth[phase] = {
            "from_users": n1,
            "to_users": n2,
            "from_seconds": t1,
            "to_seconds": t2,
            "time_ratio": round(t2 / t1, 2),
            "users_ratio": round(n2 / n1, 2),
            "exponent": exponent,
            "linear_or_better": exponent is not None and exponent <= 1.05,
            # between neighbouring scales: fixed costs flatter the small end of the full range
            "pairwise": [
                {"from_users": a, "to_users": b, "exponent": _exponent(a, ta, b, tb)}
                for (a, ta), (b, tb) in zip(points, points[1:], strict=False)
            ],
        }
    return growth


def _exponent(n1: int, t1: float, n2: int, t2: float) -> float | None:
    return round(math.log(t2 / t1) / math.log(n2 / n1), 3) if t1 and t2 and t1 > 0 and t2 > 0 else None


def _targets(results: dict, default_users: int) -> list[dict]:
    scales = {s["users"]: s for s in results["scales"]}
    main = scales.get(default_users) or (results["scales"][-1] if results["scales"] else {})
    m = main.get("measurements", {})
    rows = []

    def add(name, value, target, met, load, note=""):
        rows.append({"target": name, "value": value, "limit": target, "met": met, "load": load, "note": note})

    if m.get("backfill", {}).get("ratio") is not None:
        b = m["backfill"]
        add(
            f"{_days(results)}-day backfill vs bare SQL",
            b["ratio"],
            "<= 1.2x",
            b["ratio"] <= 1.2,
            [s["load"] for s in b["samples"]["pipeline"] + b["samples"]["bare"]],
        )
    if "daily_partition" in m:
        d = m["daily_partition"]
        add(
            "one daily partition vs bare SQL (start-up separate)",
            d["ratio"],
            "<= 1.3x",
            d["ratio"] <= 1.3,
            [s["load"] for s in d["samples"]["pipeline"]],
            f"start-up {d['startup_seconds']:.2f} s per run",
        )
    if "trigger" in m and "bulk_ratio" in m["trigger"]:
        t = m["trigger"]
        bulk_of_medians = t.get("bulk_ratio_of_medians")
        add(
            f"trigger: {_rows_label(t.get('bulk_rows', DEFAULT_BULK_ROWS))}-row bulk insert (median of pairs)",
            t["bulk_ratio"],
            f"<= {measure.BULK_TARGET:.2f}x",
            t["bulk_ratio"] <= measure.BULK_TARGET,
            [s["load"] for s in t["bulk"]["with"]],
            f"of the medians {bulk_of_medians:.3f}x" if bulk_of_medians is not None else "",
        )
        of_medians = t.get("tps_loss_of_medians")
        loss_target = measure.tps_loss_target(main["users"])
        add(
            "trigger: single-row throughput loss (pgbench, median of with/without pairs)",
            t["tps_loss"],
            f"<= {loss_target:.0%}",
            t["tps_loss"] <= loss_target,
            [s["load"] for s in t["pgbench"]["with"]],
            f"of the medians {of_medians:.1%}" if of_medians is not None else "",
        )
    if m.get("trigger", {}).get("install", {}).get("max_insert_wait_seconds") is not None:
        i = m["trigger"]["install"]
        add(
            "trigger install: longest app insert during it",
            i["max_insert_wait_seconds"],
            f"< {measure.INSTALL_WAIT_TARGET_SECONDS:.0f} s",
            i["max_insert_wait_seconds"] < measure.INSTALL_WAIT_TARGET_SECONDS,
            [i["load"]],
            f"install {i['install_seconds']:.1f} s, {i['inserts_during_install']:,} inserts meanwhile; "
            f"longest before it {i['max_insert_before_install_seconds']} s",
        )
    e = results.get("emails", {})
    if "ratio" in e:
        add(
            f"{e['emails']:,} emails vs the rate-limit bound",
            e["ratio"],
            "<= 1.05x, 0 duplicates, 0 lost",
            e["ratio"] <= 1.05 and e["duplicates"] == 0 and e["lost"] == 0,
            [e["load"]],
            f"duplicates {e['duplicates']}, lost {e['lost']}",
        )
    peaks = {
        s["users"]: peak_memory_mb(s["measurements"]["daily_job"])
        for s in results["scales"]
        if "daily_job" in s.get("measurements", {})
    }
    if peaks:
        add(
            "daily run peak memory (PSS of its processes) at every scale",
            max(peaks.values()),
            "< 500 MB",
            max(peaks.values()) < 500,
            [],
            ", ".join(f"{u:,}: {p:.0f} MB" for u, p in peaks.items()),
        )
    growth = results.get("growth", {})
    if growth:
        worst = max((g["exponent"] for g in growth.values() if g["exponent"] is not None), default=None)
        add(
            "time grows no faster than linearly (exponent b of users^b)",
            worst,
            "<= 1.0",
            worst is not None and worst <= 1.05,
            [],
            "smallest to largest scale: "
            + ", ".join(f"{k} {g['exponent']}" for k, g in growth.items())
            + "; between neighbouring scales: "
            + ", ".join(f"{k} " + "/".join(str(p["exponent"]) for p in g.get("pairwise", [])) for k, g in growth.items()),
        )
    return rows


def _days(results: dict) -> int:
    return results.get("parameters", {}).get("days", DEFAULT_DAYS)


def _rows_label(rows: int) -> str:
    return "1M" if rows == 1_000_000 else f"{rows:,}"


def _write(results: dict, output: Path, name: str) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    js = output / f"{name}.json"
    md = output / f"{name}.md"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    tmp.replace(js)
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(_markdown(results))
    tmp.replace(md)
    return md, js


def _fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _loads(samples: list[dict]) -> str:
    values = [x for s in samples for x in s.get("load", [])]
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def _markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"`{results.get('command', '')}`, started {results['started_at']}"
        + (f", finished {results['finished_at']}" if "finished_at" in results else " (running)"),
        "",
        f"Machine: {machine['cores']} cores, {machine['memory_gb']} GB, {machine['platform']}; Python {machine['python']}, "
        f"Dagster {machine['dagster']}, {results.get('postgres_settings', {}).get('server_version', '?')} (embedded). "
        f"Load average (1, 5, 15 min) at start {machine['load_at_start']}, at end {machine.get('load_at_end', '-')}. "
        "Other work shares this machine: every measurement carries the 1-minute load during it.",
        "",
    ]
    for rerun in results.get("reruns", []):
        lines += [
            f"Re-run: `{rerun['command']}`, started {rerun['started_at']}, finished {rerun.get('finished_at')}. "
            f"{rerun.get('note', '')}",
            "",
        ]
    if results.get("targets"):
        lines += [
            "## Targets",
            "",
            "| target | measured | limit | met | load (1 min) during | note |",
            "|---|---:|---|---|---|---|",
        ]
        for t in results["targets"]:
            value = t["value"]
            if value is None:
                shown = "-"
            elif "loss" in t["target"]:
                shown = f"{value:.1%}"
            elif "RSS" in t["target"]:
                shown = f"{value:.0f} MB"
            elif "x" in t["limit"]:
                shown = f"{value:.3f}x"
            else:
                shown = _fmt(value, digits=3)
            loads_ = [x for pair in t["load"] for x in pair]
            load_text = f"{min(loads_):.2f}-{max(loads_):.2f}" if loads_ else "-"
            lines.append(
                f"| {t['target']} | {shown} | {t['limit']} | {'yes' if t['met'] else '**no**'} | {load_text} | {t['note']} |"
            )
        lines.append("")
    e = results.get("emails")
    if e and "ratio" in e:
        lines += [
            "## Emails",
            "",
            f"{e['emails']:,} emails in {e['batches']} batches through `ResendSender` to a local FakeResend enforcing "
            f"{e['rate_per_second']} requests/s: {e['seconds']:.1f} s against a bound of {e['bound_seconds']:.0f} s "
            f"({e['ratio']:.3f}x); accepted {e['accepted']:,}, duplicates {e['duplicates']}, lost {e['lost']}, "
            f"attempts {e['attempts']}; load {e['load']}.",
            "",
        ]
    lines += [
        "## Every scale",
        "",
        "| measurement | " + " | ".join(s.get("label") or f"{s['users']:,} users" for s in results["scales"]) + " |",
        "|---|" + "---:|" * len(results["scales"]),
    ]

    def row(label, fn):
        cells = []
        for s in results["scales"]:
            try:
                cells.append(fn(s))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    m = lambda s, k: s["measurements"][k]  # noqa: E731
    days = _days(results)
    row("status", lambda s: s["status"].splitlines()[0][:120])
    row("events (orphans)", lambda s: f"{s['dataset']['events']:,} ({s['dataset']['orphan_events']:,})")
    row(
        "auth sessions / subscriptions", lambda s: f"{s['dataset']['auth_sessions']:,} / {s['dataset']['stripe_subscriptions']:,}"
    )
    row("database size", lambda s: f"{s['dataset']['database_bytes'] / 2**30:.2f} GB")
    row(
        "dataset build",
        lambda s: "reused" if s["dataset_build"].get("reused") else f"{s['dataset_build']['build_seconds']:.0f} s",
    )
    row(f"backfill {days} days: Dagster run", lambda s: f"{m(s, 'backfill')['run_seconds']:.2f} s")
    row(f"backfill {days} days: bare SQL", lambda s: f"{m(s, 'backfill')['bare_seconds']:.2f} s")
    row("backfill ratio (target <= 1.2)", lambda s: f"**{m(s, 'backfill')['ratio']:.3f}x**")
    row("backfill rows, same figures", lambda s: f"{m(s, 'backfill')['rows']:,}, {m(s, 'backfill')['same_figures']}")
    row("backfill load (1 min)", lambda s: _loads(m(s, "backfill")["samples"]["pipeline"] + m(s, "backfill")["samples"]["bare"]))
    row("daily partition: asset step", lambda s: f"{m(s, 'daily_partition')['step_seconds']:.3f} s")
    row("daily partition: SQL inside the asset", lambda s: f"{m(s, 'daily_partition')['sql_seconds']:.3f} s")
    row("daily partition: bare SQL", lambda s: f"{m(s, 'daily_partition')['bare_seconds']:.3f} s")
    row("daily partition ratio (target <= 1.3)", lambda s: f"**{m(s, 'daily_partition')['ratio']:.3f}x**")
    row("daily partition: Dagster start-up per run", lambda s: f"{m(s, 'daily_partition')['startup_seconds']:.2f} s")
    row("daily partition load (1 min)", lambda s: _loads(m(s, "daily_partition")["samples"]["pipeline"]))
    row(
        "weekly segments, one week: step (rows)",
        lambda s: f"{m(s, 'weekly_segments')['step_seconds']:.2f} s ({m(s, 'weekly_segments')['rows']:,})",
    )
    row(
        "dormant users, one day after the day before: step (rows, carried over)",
        lambda s: (
            f"{m(s, 'dormant_users')['step_seconds']:.2f} s "
            f"({m(s, 'dormant_users')['rows']:,}, {m(s, 'dormant_users').get('carried_over', 0):,})"
        ),
    )
    row("dormant users, one day cold (no day before): step", lambda s: f"{m(s, 'dormant_users')['cold_step_seconds']:.2f} s")
    row("daily job (subprocess): wall", lambda s: f"{m(s, 'daily_job')['wall_seconds']:.1f} s")
    row("daily job: the run itself", lambda s: f"{m(s, 'daily_job')['run_seconds']:.1f} s")
    row(
        "daily job: emails sent (rate bound)",
        lambda s: (
            f"{m(s, 'daily_job')['emails'].get('emails_sent', 0):,} ({m(s, 'daily_job')['email_rate_bound_seconds']:.1f} s)"
        ),
    )
    row("daily job: steps", lambda s: ", ".join(f"{k} {v:.1f}" for k, v in m(s, "daily_job")["steps"].items()))
    row(
        "daily job: peak memory, PSS of its processes (target < 500 MB)",
        lambda s: f"**{peak_memory_mb(m(s, 'daily_job')):.0f} MB**",
    )
    row(
        "daily job: peak summed RSS / largest process RSS",
        lambda s: f"{m(s, 'daily_job')['peak_rss_mb']:.0f} / {m(s, 'daily_job').get('peak_single_process_rss_mb', 0):.0f} MB",
    )
    row("daily job load (1 min)", lambda s: f"{m(s, 'daily_job')['load']}")
    row(
        f"trigger: {_rows_label(results.get('parameters', {}).get('bulk_rows', DEFAULT_BULK_ROWS))}-row insert without / with",
        lambda s: f"{m(s, 'trigger')['bulk_without_seconds']:.2f} / {m(s, 'trigger')['bulk_with_seconds']:.2f} s",
    )
    row(
        f"trigger: bulk ratio, median of pairs (target <= {measure.BULK_TARGET:.2f})",
        _paired_cell("bulk_ratio", lambda v: f"{v:.3f}x"),
    )
    row(
        "trigger: pgbench tps without / with",
        lambda s: f"{m(s, 'trigger')['tps_without']:,.0f} / {m(s, 'trigger')['tps_with']:,.0f}",
    )
    row(
        "trigger: throughput loss, median of pairs (target <= 5% up to 100,000 users, 10% beyond)",
        _paired_cell("tps_loss", lambda v: f"{v:.1%}"),
    )
    row(
        "trigger: drain of the bulk inserts' queue (rows)",
        lambda s: f"{m(s, 'trigger')['drain']['seconds']:.1f} s ({m(s, 'trigger')['drain']['rows']:,})",
    )
    row(
        "trigger install under app inserts: install / longest insert (target < 1 s) / inserts meanwhile",
        lambda s: (
            f"{m(s, 'trigger')['install']['install_seconds']:.1f} s / "
            f"**{m(s, 'trigger')['install']['max_insert_wait_seconds']} s** / {m(s, 'trigger')['install']['inserts_during_install']:,}"
        ),
    )
    row(
        "trigger install: longest / median app insert before it, median during it",
        lambda s: (
            f"{m(s, 'trigger')['install']['max_insert_before_install_seconds']} s / "
            f"{m(s, 'trigger')['install']['median_insert_before_install_ms']} ms, "
            f"{m(s, 'trigger')['install']['median_insert_during_install_ms']} ms"
        ),
    )
    row("trigger load (1 min)", lambda s: _loads(m(s, "trigger")["bulk"]["with"] + m(s, "trigger")["pgbench"]["with"]))
    row("scale wall time", lambda s: f"{s['seconds'] / 60:.1f} min")
    lines.append("")
    if results.get("growth"):
        lines += [
            "## Growth",
            "",
            "| phase | from | to | time ratio | users ratio | exponent b (t ~ users^b) | b between neighbouring scales |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for phase, g in results["growth"].items():
            pairs = ", ".join(f"{p['from_users']:,}->{p['to_users']:,}: {p['exponent']}" for p in g.get("pairwise", []))
            lines.append(
                f"| {phase} | {g['from_seconds']:.2f} s at {g['from_users']:,} | {g['to_seconds']:.2f} s at {g['to_users']:,} "
                f"| {g['time_ratio']}x | {g['users_ratio']}x | {g['exponent']} | {pairs} |"
            )
        lines.append("")
    settings = results.get("postgres_settings", {})
    if settings:
        lines += ["PostgreSQL settings in force: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    return "\n".join(lines)


def _paired_cell(key: str, show) -> Callable[[dict], str]:
    """A trigger figure (median of with/without pairs) with its pairs and the ratio of the two medians."""

    def cell(scale: dict) -> str:
        trigger = scale["measurements"]["trigger"]
        pairs = ", ".join(show(value) for value in trigger.get(f"{key}_pairs", []))
        of_medians = trigger.get(f"{key}_of_medians")
        detail = f" (pairs {pairs}; of the medians {show(of_medians)})" if pairs and of_medians is not None else ""
        return f"**{show(trigger[key])}**{detail}"

    return cell


def merge_results(first: Path, rerun: Path, name: str = "latest", note: str = "") -> Path:
    """One report from a run and a re-run of some of its scales (e.g. the largest, after a fix)."""
    a, b = json.loads(Path(first).read_text()), json.loads(Path(rerun).read_text())
    rerun_users = {s["users"] for s in b["scales"]}
    for s in a["scales"]:
        if s["users"] in rerun_users:
            s["label"] = f"{s['users']:,} users (first run)"
    for s in b["scales"]:
        s["label"] = f"{s['users']:,} users (re-run: {', '.join(s['measurements'])})"
    merged = {
        **a,
        "scales": a["scales"] + b["scales"],
        "reruns": [
            {
                "command": b["command"],
                "started_at": b["started_at"],
                "finished_at": b.get("finished_at"),
                "machine": b["machine"],
                "note": note,
            }
        ],
    }
    merged["growth"] = _growth(merged["scales"])
    merged["targets"] = _targets(merged, merged["parameters"]["users"])
    md, js = _write(merged, Path(first).parent, name)
    return md


def rewrite_markdown(json_path: Path) -> Path:
    """Re-render the markdown of a results JSON (e.g. after a change of the report's layout)."""
    results = json.loads(Path(json_path).read_text())
    md = Path(json_path).with_suffix(".md")
    md.write_text(_markdown(results))
    return md


def _int_list(value: str | None) -> list[int] | None:
    if not value:
        return None
    return [int(part.replace("_", "")) for part in value.split(",") if part.strip()]


def peak_memory_mb(daily_job: dict) -> float:
    """The memory target's figure; results written before PSS was sampled have summed RSS only."""
    return daily_job.get("peak_pss_mb", daily_job["peak_rss_mb"])


def benchmark_options(fn):
    options = [
        click.option("--users", default=DEFAULT_USERS, show_default=True, help="Users of the default scale."),
        click.option(
            "--events",
            default=DEFAULT_EVENTS,
            show_default=True,
            help="Events of the default scale (other scales: proportional).",
        ),
        click.option(
            "--days",
            default=DEFAULT_DAYS,
            show_default=True,
            type=click.IntRange(min=MIN_DAYS),
            help=f"Days of history (at least {MIN_DAYS}: one whole Monday..Sunday week for the segments).",
        ),
        click.option("--scales", default=None, help="Comma-separated user counts, e.g. 10000,100000,1000000 (default: --users)."),
        click.option(
            "--budget-minutes",
            default=25.0,
            show_default=True,
            help="Time budget of each scale's measurements; a scale that runs out reports what it measured.",
        ),
        click.option(
            "--build-budget-minutes", default=30.0, show_default=True, help="Time budget of building each scale's dataset."
        ),
        click.option("--seed", default=42, show_default=True),
        click.option("--rebuild", is_flag=True, help="Rebuild datasets even if --keep-data left matching ones."),
        click.option("--keep-data", is_flag=True, help="Keep the benchmark server's data (reused by the next run)."),
        click.option("--no-emails", is_flag=True, help="Skip the email measurement (10,000 emails: about a minute)."),
        click.option(
            "--name",
            default="latest",
            show_default=True,
            help="Results file name (<name>.md, <name>.json) in the results directory.",
        ),
        click.option(
            "--pgdata",
            type=click.Path(file_okay=False, path_type=Path),
            default=BENCH_PGDATA,
            envvar="RETENTION_BENCH_PGDATA",
            show_default=True,
            show_envvar=True,
            help="Data directory (and socket directory) of the benchmark's own embedded PostgreSQL; "
            "another one keeps this run apart from any other benchmark run.",
        ),
        click.option(
            "--results-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=RESULTS_DIR,
            envvar="RETENTION_BENCH_RESULTS_DIR",
            show_default=True,
            show_envvar=True,
            help="Where <name>.md and <name>.json are written.",
        ),
        click.option(
            "--reps",
            type=click.IntRange(min=1),
            default=None,
            help="Repetitions of every measurement (default: by scale, 1 to 5).",
        ),
        click.option(
            "--pgbench-seconds",
            type=click.IntRange(min=1),
            default=DEFAULT_PGBENCH_SECONDS,
            show_default=True,
            help="Duration of each pgbench sample of the trigger phase.",
        ),
        click.option(
            "--bulk-rows",
            type=click.IntRange(min=1),
            default=DEFAULT_BULK_ROWS,
            show_default=True,
            help="Rows of each bulk insert of the trigger phase.",
        ),
        click.option(
            "--email-count",
            type=click.IntRange(min=1),
            default=DEFAULT_EMAILS,
            show_default=True,
            help="Emails of the email measurement (batches of 100).",
        ),
        click.option(
            "--email-rate",
            type=click.IntRange(min=1),
            default=DEFAULT_EMAIL_RATE,
            show_default=True,
            help="Requests/s the local Resend-like server allows in the email measurement.",
        ),
        click.option(
            "--phases",
            default=None,
            help="Only these phases, comma-separated: daily_partition, backfill, "
            "weekly_segments, dormant_users, daily_job, trigger (for iterating; the full run measures all).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@benchmark_options
def main(
    users,
    events,
    days,
    scales,
    budget_minutes,
    build_budget_minutes,
    seed,
    rebuild,
    keep_data,
    no_emails,
    name,
    pgdata,
    results_dir,
    reps,
    pgbench_seconds,
    bulk_rows,
    email_count,
    email_rate,
    phases,
) -> None:
    """Build the benchmark dataset(s) and measure the pipeline; results in benchmarks/results/ (or --results-dir)."""
    run_benchmarks(
        users=users,
        events=events,
        days=days,
        scales=_int_list(scales),
        budget_minutes=budget_minutes,
        build_budget_minutes=build_budget_minutes,
        seed=seed,
        rebuild=rebuild,
        only_phases=[p.strip() for p in phases.split(",")] if phases else None,
        keep_data=keep_data,
        emails=not no_emails,
        name=name,
        output=results_dir,
        pgdata=pgdata,
        reps=reps,
        pgbench_seconds=pgbench_seconds,
        bulk_rows=bulk_rows,
        email_count=email_count,
        email_rate=email_rate,
    )


if __name__ == "__main__":
    main()
