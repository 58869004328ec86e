"""The production rehearsal: the production section of docs/deployment.md, run as written on one PostgreSQL with separate
roles, a code server, `dagster-daemon` and `dagster-webserver`; the daemon's morning tick runs the daily job
against data the app's web role inserted, and the emails reach a local Resend-like server exactly once."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._grpc.client import DagsterGrpcClient

from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.localstripe import LOCALSTRIPE_API_KEY, LocalStripe
from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR
from retention_pipeline_tests import rehearsal
from retention_pipeline_tests.faults import wait_until
from retention_pipeline_tests.rehearsal import (
    APP_DATABASE,
    APP_ROLE,
    APP_WRITER_ROLE,
    DAGSTER_DATABASE,
    DAGSTER_ROLE,
    PIPELINE_ROLE,
    AppHistory,
    ConnectionWatch,
    Services,
    StandIns,
)
from retention_pipeline_tests.ui_support import GraphQL, free_port

SCHEDULE = "daily_morning_schedule"
JOB = "daily_retention_job"
RESEND_KEY = "re_rehearsal_key"
LOG_DIR = PROJECT_ROOT / "test-artifacts" / "rehearsal"

# The rehearsal gets only what docs/deployment.md exports (plus the stand-ins): nothing of the caller's settings.
_FOREIGN_PREFIXES = ("RETENTION_", "DAGSTER_", "RESEND_", "STRIPE_")

_STOP_SCHEDULE = """
mutation ($origin: String, $selector: String) {
  stopRunningSchedule(scheduleOriginId: $origin, scheduleSelectorId: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}"""
_START_SCHEDULE = """
mutation ($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}"""
_REPOSITORIES = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
# Longer than the rehearsal takes on a busy 2-core machine (about 20 minutes with the load at 14).
_SAME_DAY_BUDGET = timedelta(minutes=30)


def _wait_past_midnight() -> None:
    """Both ticks ask for yesterday by the real clock, and the send guard compares the partition with today:
    the whole rehearsal must see one 'yesterday', so it does not start shortly before midnight."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    if midnight - now < _SAME_DAY_BUDGET:
        time.sleep((midnight - now).total_seconds() + 5)


def _instance(dagster_home: Path) -> DagsterInstance:
    return DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))


def _schedule_ticks(instance: DagsterInstance) -> list:
    states = [s for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE) if s.instigator_name == SCHEDULE]
    if not states:
        return []
    return sorted(
        (t for s in states for t in instance.get_ticks(s.instigator_origin_id, s.selector_id)), key=lambda tick: tick.timestamp
    )


def _finished_run(instance: DagsterInstance, run_id: str, services: Services, timeout: float):
    def finished():
        services.assert_running()
        run = instance.get_run_by_id(run_id)
        return run if run is not None and run.is_finished else None

    run = wait_until(finished, timeout, f"run {run_id} to finish", interval=2.0)
    if run.status != DagsterRunStatus.SUCCESS:
        failures = [e.message for e in instance.all_logs(run_id) if e.is_dagster_event and e.dagster_event.is_failure]
        raise AssertionError(f"run {run_id} ended {run.status}: {failures[-5:]}")
    return run


def _run_block(blocks: dict[str, str], name: str, stand_ins: StandIns, env: dict, after=None) -> dict[str, float]:
    """Each command of a docs/deployment.md block in bash, after the environment block's exports, from the project's
    root; `after(line)` runs between commands (the app going on with its writes). Returns seconds each."""
    environment = stand_ins.apply(blocks["environment"])
    took = {}
    for as_written in rehearsal.command_lines(blocks[name]):
        line = stand_ins.apply(as_written)
        started = time.monotonic()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", f"{environment}\n{line}"],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        took[" ".join(as_written.split()[:4])] = round(time.monotonic() - started, 1)
        with (LOG_DIR / "commands.log").open("a") as log:
            log.write(f"$ {line}\n{result.stdout}{result.stderr}\n")
        assert result.returncode == 0, f"`{line}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr[-4000:]}"
        if after is not None:
            after(line)
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
    return _fetch(
        socket_dir,
        APP_DATABASE,
        PIPELINE_ROLE,
        "SELECT user_id, email, status, provider_message_id FROM retention.email_sends WHERE as_of_date = %s",
        (day,),
    )


def _recipients(fake: FakeResend) -> Counter:
    counts = Counter()
    for accepted in fake.accepted:
        to = accepted.email["to"]
        counts.update(to if isinstance(to, list) else [to])
    return counts


def test_the_readme_production_section_is_what_the_rehearsal_runs(tmp_path):
    """Fast, and in every run of the suite: the five blocks are there, every stand-in replaces something, the
    SQL file the page runs for Dagster's storage is the one it shows, and nothing but the stand-ins changes."""
    blocks = rehearsal.production_blocks()
    stand_ins = StandIns(
        socket_dir=Path("/run/pg"),
        dagster_home=tmp_path,
        config_path=tmp_path / "retention.yaml",
        resend_key="re_x",
        stripe_key="sk_x",
        unsubscribe_secret="s",
        code_server_port=4100,
        webserver_port=3100,
    )
    stand_ins.check_all_used(blocks)
    storage_sql = (PROJECT_ROOT / "deploy" / "dagster-storage.sql").read_text()
    assert f"```sql\n{storage_sql}```" in rehearsal.production_section()
    assert "-f deploy/dagster-storage.sql" in blocks["roles"]
    services = rehearsal.command_lines(stand_ins.apply(blocks["services"]))
    assert [line.split()[2] for line in services] == ["dagster", "dagster-daemon", "dagster-webserver"], services
    assert "dagster code-server start" in services[0] and "dagster-daemon run" in services[1], services
    assert all("--grpc-port 4100" in line for line in services[1:]) and "-p 4100" in services[0]
    assert rehearsal.exported(blocks["environment"], "DAGSTER_PG_URL").startswith("postgresql://dagster:")
    assert rehearsal.exported(blocks["environment"], "RETENTION_CONFIG") == "/srv/retention/retention.yaml"


def test_the_readmes_campaign_file_step_fills_the_footer_identity_of_the_shipped_file(tmp_path):
    """The once block's commands that write the deployment's retention.yaml, run as written on the shipped
    file: the copy validates and carries a sender and a postal address, and nothing else differs."""
    blocks = rehearsal.production_blocks()
    config_path = tmp_path / "retention.yaml"
    stand_ins = StandIns(
        socket_dir=Path("/run/pg"),
        dagster_home=tmp_path / "dagster_home",
        config_path=config_path,
        resend_key="re_x",
        stripe_key="sk_x",
        unsubscribe_secret="s",
        code_server_port=4100,
        webserver_port=3100,
    )
    writes = [line for line in rehearsal.command_lines(stand_ins.apply(blocks["once"])) if "$RETENTION_CONFIG" in line]
    assert len(writes) == 2 and writes[0].startswith("sed "), writes
    environment = stand_ins.apply(blocks["environment"])
    for line in writes:
        subprocess.run(["bash", "-euo", "pipefail", "-c", f"{environment}\n{line}"], cwd=PROJECT_ROOT, check=True)
    shipped = yaml.safe_load((PROJECT_ROOT / "retention.yaml").read_text())
    copy = yaml.safe_load(config_path.read_text())
    campaign = copy["plan_reengagement_sends"]
    assert campaign["postal_address"].strip() and campaign["sender_name"].strip(), campaign
    assert copy == {
        **shipped,
        "plan_reengagement_sends": {
            **shipped["plan_reengagement_sends"],
            **{key: campaign[key] for key in ("sender_name", "postal_address")},
        },
    }
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "from retention_pipeline.outreach.campaign import CampaignConfig; print(CampaignConfig().postal_address)",
        ],
        env={**os.environ, "RETENTION_CONFIG": str(config_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == campaign["postal_address"], loaded.stderr[-2000:]


# What dagster's code server, daemon and webserver do at start: SIGTERM does whatever SIGINT does.
_DAGSTER_LIKE_SERVICE = (
    "from dagster._utils.interrupts import setup_interrupt_handlers; setup_interrupt_handlers(); "
    "import time; print('up', flush=True); time.sleep(600)"
)


def test_services_start_with_default_signal_actions_even_from_a_run_that_ignores_sigint(tmp_path):
    """Started from a test run that ignores SIGINT (a suite run in the background of a script), a service
    still stops on SIGTERM, as under a service manager. The control: the same process started without the
    reset inherits the ignored SIGINT, and so ignores SIGTERM too."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    services = rehearsal.Services(dict(os.environ), tmp_path)
    try:
        control = subprocess.Popen([sys.executable, "-c", _DAGSTER_LIKE_SERVICE], stdout=subprocess.PIPE, text=True)
        service = services.start("dagster-like", [sys.executable, "-c", _DAGSTER_LIKE_SERVICE])
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert control.stdout.readline().strip() == "up"
        assert signal.SIGTERM in rehearsal.ignored_signals(control.pid)
        wait_until(lambda: "up" in service.log_path.read_text(), timeout=60, what="the service to start")
        assert not {signal.SIGINT, signal.SIGTERM} & rehearsal.ignored_signals(service.process.pid)
        services.assert_running()
        took = services.stop(timeout=60)
        assert set(took) == {"dagster-like"} and service.process.returncode is not None
    finally:
        control.kill()
        control.wait()
        services.kill_all()


@pytest.mark.slow
@pytest.mark.timeout(4500)  # up to 30 min of waiting out midnight, then the rehearsal
def test_production_rehearsal(pg_server, monkeypatch):
    started = time.monotonic()
    _wait_past_midnight()
    socket_dir = pg_server.status.socket_dir
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True)
    dagster_home = STATE_DIR / "rehearsal" / "dagster_home"
    shutil.rmtree(dagster_home.parent, ignore_errors=True)
    dagster_home.parent.mkdir(parents=True)

    blocks = rehearsal.production_blocks()
    day = datetime.now(UTC).date() - timedelta(days=1)  # what the morning tick asks for
    history = AppHistory.build(day)

    rehearsal.drop_everything(socket_dir)
    watch = ConnectionWatch(socket_dir)
    services = None
    try:
        with (
            FakeResend(api_key=RESEND_KEY, rate=2) as fake,
            LocalStripe(state_file=dagster_home.parent / "localstripe.pickle") as stripe_server,
        ):
            stand_ins = StandIns(
                socket_dir=socket_dir,
                dagster_home=dagster_home,
                config_path=dagster_home.parent / "retention.yaml",
                resend_key=RESEND_KEY,
                stripe_key=LOCALSTRIPE_API_KEY,
                unsubscribe_secret=secrets.token_urlsafe(24),
                code_server_port=free_port(),
                webserver_port=free_port(),
                extra_env={"RESEND_API_URL": fake.url, "STRIPE_API_BASE": stripe_server.api_base},
            )
            stand_ins.check_all_used(blocks)
            env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)} | stand_ins.extra_env
            took = {}

            # docs/deployment.md: the roles; then the app as it was before the pipeline; then the grants.
            took |= _run_block(blocks, "roles", stand_ins, env)
            rehearsal.create_existing_app(socket_dir)
            history.load_before_pipeline(socket_dir)
            took |= _run_block(blocks, "grants", stand_ins, env)
            watch.start()  # from here on, only the roles under test touch the app's and Dagster's databases

            # docs/deployment.md: once; the app's web process goes on writing as soon as the trigger is in place.
            written_at = datetime.now(UTC)

            def app_writes_after_install(line: str) -> None:
                if "trigger install" in line:
                    history.write_as_web_process(socket_dir, written_at)

            took |= _run_block(blocks, "once", stand_ins, env, after=app_writes_after_install)

            # docs/deployment.md: the services, each its own process group; the code server first, as a deployment
            # would wait for its readiness probe.
            environment = stand_ins.apply(blocks["environment"])
            services = Services(env, LOG_DIR)
            lines = rehearsal.command_lines(stand_ins.apply(blocks["services"]))
            assert len(lines) == 3 and "code-server" in lines[0], lines
            services_started = time.monotonic()
            services.start("code-server", rehearsal.shell_with_environment(environment, lines[0]))
            wait_until(lambda: _code_server_ready(stand_ins, services), 240, "the code server", interval=2.0)
            services.start("daemon", rehearsal.shell_with_environment(environment, lines[1]))
            services.start("webserver", rehearsal.shell_with_environment(environment, lines[2]))
            graphql = GraphQL(f"http://127.0.0.1:{stand_ins.webserver_port}/graphql")
            wait_until(lambda: _webserver_answers(stand_ins, services), 240, "the webserver", interval=2.0)
            wait_until(lambda: _code_location_loaded(graphql, services), 120, "the code location in the webserver", interval=2.0)
            took["services up"] = round(time.monotonic() - services_started, 1)

            # The test reads Dagster's storage as the dagster role, like the services.
            monkeypatch.setenv("DAGSTER_PG_URL", rehearsal.exported(environment, "DAGSTER_PG_URL"))
            instance = _instance(dagster_home)

            # The first morning's tick; the schedule is then stopped in the webserver, as an operator pauses it,
            # so that the second morning (below) comes only after the first run has finished.
            first = wait_until(
                lambda: _tick_with_run(instance, services, after=0),
                300,
                f"a tick of {SCHEDULE} that launches a run",
                interval=2.0,
            )
            _set_schedule(graphql, instance, running=False)
            run = _finished_run(instance, first.run_ids[0], services, 1200)
            took["first tick -> run done"] = round(run_end(instance, run) - first.timestamp, 1)
            assert first.status == TickStatus.SUCCESS, first
            assert run.job_name == JOB and run.tags.get("dagster/partition") == day.isoformat(), run.tags
            failed_checks = _failed_checks(instance, run.run_id)
            assert not failed_checks, f"asset checks failed: {failed_checks}"

            # user_activity is current: the trigger saw every event the web role inserted.
            activity = _fetch(
                socket_dir,
                APP_DATABASE,
                PIPELINE_ROLE,
                "SELECT user_id, last_activity_at, event_count FROM retention.user_activity ORDER BY 1",
            )
            truth = _fetch(
                socket_dir,
                APP_DATABASE,
                PIPELINE_ROLE,
                "SELECT user_id, max(occurred_at), count(*) FROM events WHERE user_id IS NOT NULL GROUP BY 1 ORDER BY 1",
            )
            assert activity == truth, (
                f"user_activity differs from the events table: {len(activity)} users tracked, "
                f"{len(truth)} in events; first differences "
                f"{sorted(set(activity) ^ set(truth))[:4]}"
            )

            # Each email of the ledger reached the Resend-like server exactly once, in one request per batch.
            ledger = _ledger(socket_dir, day)
            sent = {row[1]: row for row in ledger if row[2] == "sent"}
            assert sent, f"the morning run sent no email; ledger {Counter(r[2] for r in ledger)}"
            assert not [r for r in ledger if r[2] not in ("sent", "holdout")], ledger
            assert _recipients(fake) == Counter({address: 1 for address in sent}), "emails received differ from the ledger"
            # The live sends carry the footer identity of the deployment's retention.yaml (RETENTION_CONFIG).
            identity = yaml.safe_load(stand_ins.config_path.read_text())["plan_reengagement_sends"]
            assert identity["postal_address"], identity
            assert all(
                identity["postal_address"] in a.email["text"] and identity["sender_name"] in a.email["text"]
                for a in fake.accepted
            ), fake.accepted[0].email["text"]
            assert _emails_metadata(instance, run.run_id)["thresholds"]["postal_address"] == identity["postal_address"]
            assert {a.id for a in fake.accepted} == {row[3] for row in sent.values()}
            batches = Counter(r.idempotency_key for r in fake.requests if r.path.startswith("/emails/batch"))
            assert batches and set(batches.values()) == {1}, f"a batch reached the provider twice: {batches}"
            emails = _emails_metadata(instance, run.run_id)
            assert emails["send_results_this_run"] == {"sent": len(sent)}, emails

            # The user who came back today (an INSERT by the web role) was dormant on the day but got nothing.
            dormant = {
                r[0]
                for r in _fetch(
                    socket_dir,
                    APP_DATABASE,
                    PIPELINE_ROLE,
                    "SELECT user_id FROM retention.dormant_users WHERE as_of_date = %s",
                    (day,),
                )
            }
            assert history.returning_user in dormant
            assert history.returning_user not in {r[0] for r in ledger}
            assert emails["skipped_by_reason"].get("returned", 0) >= 1, emails

            # A second morning for the same day (the schedule started again in the webserver): the run succeeds
            # and sends nothing.
            requests_before = len(fake.requests)
            restarted_at = time.time()
            _set_schedule(graphql, instance, running=True)
            second = wait_until(
                lambda: _tick_with_run(instance, services, after=restarted_at),
                300,
                f"a tick of {SCHEDULE} after it was started again",
                interval=2.0,
            )
            stopped_at = _set_schedule(graphql, instance, running=False)
            again = _finished_run(instance, second.run_ids[0], services, 1200)
            assert again.tags.get("dagster/partition") == day.isoformat(), again.tags
            assert not _failed_checks(instance, again.run_id)
            second_emails = _emails_metadata(instance, again.run_id)
            assert not second_emails["send_results_this_run"], second_emails
            # Not held back by a guard (a stale partition, a pause): each user was already in the ledger.
            assert not second_emails["guards"] and second_emails["already_recorded"] == len(ledger), second_emails
            assert len(fake.requests) == requests_before, "the second morning called the provider"
            assert sorted(_ledger(socket_dir, day)) == sorted(ledger), "the second morning changed the ledger"

            late = [t for t in _schedule_ticks(instance) if t.timestamp > stopped_at + 5 and t.run_ids]
            assert not late, f"the stopped schedule launched runs: {late}"

            # Clean shutdown: SIGTERM to each service's group, nothing of ours left.
            took |= {f"stop {name}": round(s, 1) for name, s in services.stop().items()}
            leftovers = services.leftovers(dagster_home)
            assert not leftovers, f"processes left running: {[(p.pid, p.cmdline()) for p in leftovers]}"
            services = None
        watch.stop()

        # Nobody connected to the app's or Dagster's database as a superuser; the expected roles did.
        assert watch.error is None, watch.error
        superusers = [key for key, superuser in watch.seen.items() if superuser]
        assert not superusers, f"superuser connections: {superusers}"
        assert (APP_DATABASE, PIPELINE_ROLE) in watch.seen and (DAGSTER_DATABASE, DAGSTER_ROLE) in watch.seen, watch.seen
        assert set(watch.seen) <= {(APP_DATABASE, r) for r in (APP_ROLE, APP_WRITER_ROLE, PIPELINE_ROLE)} | {
            (DAGSTER_DATABASE, DAGSTER_ROLE)
        }, watch.seen
        _assert_ownership(socket_dir)
    finally:
        if services is not None:  # a failure above: the services' logs are in test-artifacts/rehearsal
            services.kill_all()
        watch.stop()
        rehearsal.drop_everything(socket_dir)

    took["total"] = round(time.monotonic() - started, 1)
    (LOG_DIR / "timings.json").write_text(json.dumps(took, indent=1))
    print(json.dumps(took, indent=1))


def _failed_checks(instance: DagsterInstance, run_id: str) -> list[str]:
    evaluations = [
        e.dagster_event.event_specific_data for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    assert evaluations, f"run {run_id} evaluated no asset check"
    return [f"{e.asset_key.to_user_string()}:{e.check_name}" for e in evaluations if not e.passed]


def _tick_with_run(instance: DagsterInstance, services: Services, after: float):
    services.assert_running()
    return next((t for t in _schedule_ticks(instance) if t.timestamp > after and t.run_ids), None)


def _emails_metadata(instance: DagsterInstance, run_id: str) -> dict:
    events = [
        e
        for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
        if e.asset_materialization.asset_key == AssetKey("reengagement_emails")
    ]
    assert len(events) == 1, f"run {run_id}: {len(events)} materializations of reengagement_emails"
    return {key: value.value for key, value in events[0].asset_materialization.metadata.items()}


def _set_schedule(graphql: GraphQL, instance: DagsterInstance, running: bool) -> float:
    """Start or stop the morning schedule through the webserver, as the UI's toggle does; returns when."""
    if running:
        repository = graphql(_REPOSITORIES)["repositoriesOrError"]["nodes"][0]
        selector = {
            "repositoryLocationName": repository["location"]["name"],
            "repositoryName": repository["name"],
            "scheduleName": SCHEDULE,
        }
        outcome = graphql(_START_SCHEDULE, {"selector": selector})["startSchedule"]
    else:
        state = next(
            s for s in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE) if s.instigator_name == SCHEDULE
        )
        outcome = graphql(_STOP_SCHEDULE, {"origin": state.instigator_origin_id, "selector": state.selector_id})[
            "stopRunningSchedule"
        ]
    assert outcome.get("scheduleState", {}).get("status") == ("RUNNING" if running else "STOPPED"), outcome
    return time.time()


def run_end(instance: DagsterInstance, run) -> float:
    return instance.get_run_record_by_id(run.run_id).end_time


def _code_server_ready(stand_ins: StandIns, services: Services) -> bool:
    services.assert_running()
    client = DagsterGrpcClient(port=stand_ins.code_server_port, host="127.0.0.1")
    try:
        client.ping("rehearsal")
        return "retention_pipeline" in client.list_repositories()
    except DagsterUserCodeUnreachableError:
        return False


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


def _assert_ownership(socket_dir: Path) -> None:
    """The pipeline's schema and everything in it belong to its role; Dagster's tables to Dagster's."""
    owners = _fetch(
        socket_dir,
        APP_DATABASE,
        PIPELINE_ROLE,
        """
        SELECT 'schema', n.nspname, pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = 'retention'
        UNION ALL
        SELECT 'relation', c.relname, pg_get_userbyid(c.relowner)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'retention'
        UNION ALL
        SELECT 'function', p.proname, pg_get_userbyid(p.proowner)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'retention'""",
    )
    assert any(kind == "schema" for kind, _, _ in owners) and any(kind == "function" for kind, _, _ in owners)
    assert {owner for _, _, owner in owners} == {PIPELINE_ROLE}, [o for o in owners if o[2] != PIPELINE_ROLE]
    app_tables = _fetch(
        socket_dir,
        APP_DATABASE,
        PIPELINE_ROLE,
        "SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relname IN ('users', 'events', "
        "'auth_sessions') AND relnamespace = 'public'::regnamespace",
    )
    assert {owner for _, owner in app_tables} == {APP_ROLE} and len(app_tables) == 3, app_tables
    dagster_tables = _fetch(
        socket_dir,
        DAGSTER_DATABASE,
        DAGSTER_ROLE,
        "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'",
    )
    assert dagster_tables and {owner for _, owner in dagster_tables} == {DAGSTER_ROLE}, dagster_tables
    roles = _fetch(
        socket_dir,
        APP_DATABASE,
        PIPELINE_ROLE,
        "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(%s)",
        (list(rehearsal.ROLES),),
    )
    assert len(roles) == 4 and not any(superuser for _, superuser in roles), roles
