"""The production rehearsal: the README's production section, run as written on one PostgreSQL with separate
roles, a code server, `dagster-daemon` and `dagster-webserver`; the daemon's morning tick runs the daily job
against data the app's web role inserted, and the emails reach a local Resend-like server exactly once."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from retention_pipeline.billing.localstripe_server import LOCALSTRIPE_API_KEY, LocalStripe
from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR
from retention_pipeline.testing.resend_server import FakeResend
from retention_pipeline_tests import rehearsal
from retention_pipeline_tests.rehearsal import (
    APP_DATABASE,
    APP_ROLE,
    APP_WEB_ROLE,
    DAGSTER_DATABASE,
    DAGSTER_ROLE,
    PIPELINE_ROLE,
    AppHistory,
    ConnectionWatch,
    Services,
    StandIns,
)
from retention_pipeline_tests.ui_support import GraphQL, free_port, wait_for

SCHEDULE = "daily_morning_schedule"
JOB = "daily_retention_job"
RESEND_KEY = "re_rehearsal_key"
LOG_DIR = PROJECT_ROOT / "test-artifacts" / "rehearsal"

# The rehearsal gets only what the README exports (plus the stand-ins): nothing of the caller's settings.
_FOREIGN_PREFIXES = ("RETENTION_", "DAGSTER_", "RESEND_", "STRIPE_")

_REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
_LAUNCH = """
mutation ($params: ExecutionParams!) {
  launchPipelineExecution(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on PipelineNotFoundError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""


def _wait_past_midnight() -> None:
    """The schedule asks for yesterday by the real clock: the whole rehearsal must see one 'yesterday'."""
    now = datetime.now(timezone.utc)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), timezone.utc)
    if midnight - now < timedelta(minutes=10):
        time.sleep((midnight - now).total_seconds() + 5)


def _instance(dagster_home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))


def _schedule_ticks(instance: DagsterInstance) -> list:
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
              if s.instigator_name == SCHEDULE]
    if not states:
        return []
    return sorted((t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)),
                  key=lambda tick: tick.timestamp)


def _finished_run(instance: DagsterInstance, run_id: str, services: Services, timeout: float):
    def finished():
        services.assert_running()
        run = instance.get_run_by_id(run_id)
        return run if run is not None and run.is_finished else None

    run = wait_for(finished, timeout, 2.0, f"run {run_id} to finish")
    if run.status != DagsterRunStatus.SUCCESS:
        failures = [e.message for e in instance.all_logs(run_id) if e.is_dagster_event and e.dagster_event.is_failure]
        raise AssertionError(f"run {run_id} ended {run.status}: {failures[-5:]}")
    return run


def _run_once_block(blocks: dict[str, str], stand_ins: StandIns, env: dict, after_trigger_install) -> dict[str, float]:
    """Each line of the README's `# once` block, after its environment block, in bash; `after_trigger_install`
    is the app going on writing once the trigger is there. Returns each command's seconds."""
    environment = stand_ins.apply(blocks["environment"])
    took = {}
    for line in rehearsal.command_lines(stand_ins.apply(blocks["once"])):
        started = time.monotonic()
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", f"{environment}\n{line}"], cwd=PROJECT_ROOT,
                                env=env, capture_output=True, text=True, timeout=600)
        took[line[:60]] = time.monotonic() - started
        (LOG_DIR / "once.log").open("a").write(f"$ {line}\n{result.stdout}{result.stderr}\n")
        assert result.returncode == 0, f"`{line}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}"
        if "trigger install" in line:
            after_trigger_install()
    return took


def _fetch(socket_dir: Path, database: str, user: str, query: str, params=None) -> list[tuple]:
    conn = rehearsal.connect(socket_dir, database, user)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall()
    finally:
        conn.close()


def _ledger(socket_dir: Path, day) -> list[tuple]:
    return _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE, "SELECT user_id, email, status, provider_message_id "
                  "FROM retention.email_sends WHERE as_of_date = %s", (day,))


def _recipients(fake: FakeResend) -> Counter:
    counts = Counter()
    for accepted in fake.accepted:
        to = accepted.email["to"]
        counts.update(to if isinstance(to, list) else [to])
    return counts


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_production_rehearsal(pg_server, monkeypatch):
    started = time.monotonic()
    _wait_past_midnight()
    socket_dir = pg_server.status.socket_dir
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    dagster_home = STATE_DIR / "rehearsal" / "dagster_home"
    shutil.rmtree(dagster_home.parent, ignore_errors=True)

    blocks = rehearsal.production_blocks()
    day = datetime.now(timezone.utc).date() - timedelta(days=1)  # what the morning tick asks for
    history = AppHistory.build(day)

    rehearsal.drop_everything(socket_dir)
    watch = ConnectionWatch(socket_dir)
    services = None
    try:
        # The app, as it was before the pipeline: owner, web role, tables, its history.
        rehearsal.create_existing_app(socket_dir)
        history.load_before_pipeline(socket_dir)

        # README block 1: the DBA's roles, then the owner's grants.
        rehearsal.run_sql(socket_dir, "postgres", "postgres", rehearsal.sql_statements(blocks["dba_sql"]))
        rehearsal.run_sql(socket_dir, APP_DATABASE, APP_ROLE, rehearsal.sql_statements(blocks["owner_sql"]))
        watch.start()  # from here on, only the roles under test touch the app's and Dagster's databases

        with FakeResend(api_key=RESEND_KEY, rate=2) as fake, \
                LocalStripe(state_file=dagster_home.parent / "localstripe.pickle") as stripe_server:
            stand_ins = StandIns(
                socket_dir=socket_dir, dagster_home=dagster_home, resend_key=RESEND_KEY,
                stripe_key=LOCALSTRIPE_API_KEY, unsubscribe_secret=secrets.token_urlsafe(24),
                code_server_port=free_port(), webserver_port=free_port(),
                extra_env={"RESEND_API_URL": fake.url, "STRIPE_API_BASE": stripe_server.api_base},
            )
            stand_ins.check_all_used(blocks)
            env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)} | stand_ins.extra_env

            # README blocks 2 and 3, with the app's web process writing once the trigger is in place.
            written_at = datetime.now(timezone.utc)
            once = _run_once_block(blocks, stand_ins, env,
                                   lambda: history.write_as_web_process(socket_dir, written_at))

            # README block 4: the three services, each its own process group.
            environment = stand_ins.apply(blocks["environment"])
            services = Services(env, LOG_DIR)
            for name, line in zip(("code-server", "daemon", "webserver"),
                                  rehearsal.command_lines(stand_ins.apply(blocks["services"]))):
                services.start(name, rehearsal.shell_with_environment(environment, line))
            graphql = GraphQL(f"http://127.0.0.1:{stand_ins.webserver_port}/graphql")
            wait_for(lambda: _webserver_answers(stand_ins, services), 180, 2.0, "the webserver")
            wait_for(lambda: _code_location_loaded(graphql, services), 180, 2.0, "the code location in the webserver")
            services_up = time.monotonic()

            # The test reads Dagster's storage as the dagster role, like the services.
            monkeypatch.setenv("DAGSTER_PG_URL", stand_ins.apply(
                "postgresql://dagster:dagster-secret@db.internal/dagster"))
            instance = _instance(dagster_home)

            def first_tick_with_run():
                services.assert_running()
                return next((t for t in _schedule_ticks(instance) if t.run_ids), None)

            tick = wait_for(first_tick_with_run, 240, 2.0, f"a tick of {SCHEDULE} that launches a run")
            assert tick.status == TickStatus.SUCCESS, tick
            run = _finished_run(instance, tick.run_ids[0], services, 600)
            assert run.job_name == JOB and run.tags.get("dagster/partition") == day.isoformat(), run.tags
            first_run_done = time.monotonic()

            # user_activity is current: the trigger saw every event the web role inserted.
            activity = _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE,
                              "SELECT user_id, last_activity_at, event_count FROM retention.user_activity ORDER BY 1")
            truth = _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE,
                           "SELECT user_id, max(occurred_at), count(*) FROM events WHERE user_id IS NOT NULL "
                           "GROUP BY 1 ORDER BY 1")
            assert activity == truth, "user_activity differs from the events table"
            health = _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE, "SELECT failures, last_error FROM retention.trigger_health")
            assert not [row for row in health if row[0]], f"the trigger failed: {health}"

            # Each email of the ledger reached the Resend-like server exactly once; nothing else did.
            ledger = _ledger(socket_dir, day)
            sent = {row[1]: row for row in ledger if row[2] == "sent"}
            assert sent, f"the morning run sent no email; ledger {Counter(r[2] for r in ledger)}"
            assert _recipients(fake) == Counter(sent), "emails received differ from the ledger's sent rows"
            assert {a.id for a in fake.accepted} == {row[3] for row in sent.values()}
            assert not [r for r in ledger if r[2] not in ("sent", "holdout")], ledger

            # The user who came back today (an INSERT by the web role) was dormant on the day but got nothing.
            dormant = {r[0] for r in _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE,
                                            "SELECT user_id FROM retention.dormant_users WHERE as_of_date = %s", (day,))}
            assert history.returning_user in dormant
            assert history.returning_user not in {r[0] for r in ledger}
            emails = instance.get_latest_materialization_event(AssetKey("reengagement_emails"))
            skipped = emails.asset_materialization.metadata["skipped_by_reason"].value
            assert skipped.get("returned", 0) >= 1, skipped

            # Again: the same partition relaunched through the webserver, and the next tick: nothing new.
            received = len(fake.accepted)
            rerun_id = _launch_through_webserver(graphql, day.isoformat())
            _finished_run(instance, rerun_id, services, 600)

            def later_tick():
                services.assert_running()
                return next((t for t in _schedule_ticks(instance) if t.timestamp > tick.timestamp
                             and t.status != TickStatus.STARTED), None)

            second = wait_for(later_tick, 150, 2.0, "the next tick")
            assert second.status in (TickStatus.SKIPPED, TickStatus.SUCCESS) and not second.run_ids, second
            assert len(fake.accepted) == received, "a re-run or a later tick sent emails again"
            assert sorted(_ledger(socket_dir, day)) == sorted(ledger), "the ledger changed"

            # Clean shutdown: SIGTERM to each service's group, nothing of ours left.
            stop_times = services.stop()
            leftovers = services.leftovers(dagster_home)
            assert not leftovers, f"processes left running: {[(p.pid, p.cmdline()) for p in leftovers]}"
            services = None
        watch.stop()

        # Nobody connected to the app's or Dagster's database as a superuser; the expected roles did.
        assert watch.error is None, watch.error
        superusers = [key for key, superuser in watch.seen.items() if superuser]
        assert not superusers, f"superuser connections: {superusers}"
        assert (APP_DATABASE, PIPELINE_ROLE) in watch.seen and (DAGSTER_DATABASE, DAGSTER_ROLE) in watch.seen, watch.seen
        assert set(watch.seen) <= {(APP_DATABASE, r) for r in (APP_ROLE, APP_WEB_ROLE, PIPELINE_ROLE)} | {
            (DAGSTER_DATABASE, DAGSTER_ROLE)}, watch.seen
        _assert_ownership(socket_dir)
    finally:
        if services is not None:
            services.stop()
            services.kill_all()
        watch.stop()
        rehearsal.drop_everything(socket_dir)

    timings = {"total": time.monotonic() - started, **once, **{f"stop {k}": v for k, v in stop_times.items()},
               "services up -> first run done": first_run_done - services_up}
    (LOG_DIR / "timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings, indent=1))


def _code_location_loaded(graphql: GraphQL, services: Services) -> bool:
    services.assert_running()
    return bool(graphql(_REPOSITORIES)["repositoriesOrError"].get("nodes"))


def _webserver_answers(stand_ins: StandIns, services: Services) -> bool:
    services.assert_running()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stand_ins.webserver_port}/server_info", timeout=5) as response:
            return bool(json.load(response).get("dagster_webserver_version"))
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return False


def _launch_through_webserver(graphql: GraphQL, partition: str) -> str:
    nodes = graphql(_REPOSITORIES)["repositoriesOrError"]["nodes"]
    assert len(nodes) == 1, nodes
    params = {
        "selector": {"repositoryLocationName": nodes[0]["location"]["name"], "repositoryName": nodes[0]["name"],
                     "pipelineName": JOB},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    result = graphql(_LAUNCH, {"params": params})["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def _assert_ownership(socket_dir: Path) -> None:
    """The pipeline's schema and everything in it belong to its role; Dagster's tables to Dagster's."""
    owners = _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE, """
        SELECT 'schema', n.nspname, pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = 'retention'
        UNION ALL
        SELECT 'relation', c.relname, pg_get_userbyid(c.relowner)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'retention'
        UNION ALL
        SELECT 'function', p.proname, pg_get_userbyid(p.proowner)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'retention'""")
    assert any(kind == "schema" for kind, _, _ in owners) and any(kind == "function" for kind, _, _ in owners)
    assert {owner for _, _, owner in owners} == {PIPELINE_ROLE}, [o for o in owners if o[2] != PIPELINE_ROLE]
    app_tables = _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE,
                        "SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relname IN ('users', 'events', "
                        "'auth_sessions') AND relnamespace = 'public'::regnamespace")
    assert {owner for _, owner in app_tables} == {APP_ROLE} and len(app_tables) == 3, app_tables
    dagster_tables = _fetch(socket_dir, DAGSTER_DATABASE, DAGSTER_ROLE,
                            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'")
    assert dagster_tables and {owner for _, owner in dagster_tables} == {DAGSTER_ROLE}, dagster_tables
    roles = _fetch(socket_dir, APP_DATABASE, PIPELINE_ROLE,
                   "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(%s)", (list(rehearsal.ROLES),))
    assert len(roles) == 4 and not any(superuser for _, superuser in roles), roles
