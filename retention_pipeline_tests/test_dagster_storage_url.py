"""DAGSTER_PG_URL in every documented form works in every way Dagster is started: the CLI, the daemon,
the webserver, and the instance configs of every deployment (dagster.yaml, deploy/*.yaml, the chart)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR
from retention_pipeline_tests.ui_support import cli_command, free_port

BIN = Path(sys.executable).parent

# The forms the README's "Environment variables" table documents for DAGSTER_PG_URL. A bare
# `postgresql://` means psycopg 3 to SQLAlchemy 2.1; the project's storage classes pin it to psycopg2.
URL_FORMS = {
    "postgresql": "postgresql://postgres@/{db}?host={socket}",
    "postgresql+psycopg2": "postgresql+psycopg2://postgres@/{db}?host={socket}",
}

INSTANCE_CONFIGS = ["dagster.yaml", "deploy/dagster.k8s.yaml", "deploy/dagster.celery.yaml"]
STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


@pytest.fixture
def dagster_home():
    path = STATE_DIR / f"test-home-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def storage_url(form: str, pg_server, database: str) -> str:
    return URL_FORMS[form].format(db=database, socket=pg_server.status.socket_dir)


def dagster_env(home: Path, url: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RETENTION_DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")}
    return env | {"DAGSTER_HOME": str(home), "DAGSTER_PG_URL": url}


def write_storage_sections(config_file: str, home: Path) -> None:
    """The file's storage sections alone: the k8s and Docker run launchers need clusters this test has not."""
    config = yaml.safe_load((PROJECT_ROOT / config_file).read_text())
    storage = {key: config[key] for key in STORAGE_KEYS if key in config}
    assert storage, f"{config_file} configures no storage"
    (home / "dagster.yaml").write_text(yaml.safe_dump(storage))


def assert_storage_works(instance: DagsterInstance) -> None:
    assert instance.get_runs() == []
    assert instance.event_log_storage.get_logs_for_run("no-such-run") == []
    # What dagster-webserver does at start: with psycopg 3 this closed every connection it made.
    for storage in (instance.run_storage, instance.event_log_storage, instance.schedule_storage):
        storage.optimize_for_webserver(statement_timeout=5000, pool_recycle=3600, max_overflow=0)
    assert instance.get_runs() == []
    assert instance.all_instigator_state() == []


@pytest.mark.parametrize("config_file", INSTANCE_CONFIGS)
@pytest.mark.parametrize("form", URL_FORMS)
def test_every_instance_config_loads_every_url_form(config_file, form, pg_server, pg_database, dagster_home, monkeypatch):
    write_storage_sections(config_file, dagster_home)
    monkeypatch.setenv("DAGSTER_PG_URL", storage_url(form, pg_server, pg_database))
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert_storage_works(instance)


def test_the_charts_storage_settings_reach_psycopg2(pg_server, pg_database, dagster_home):
    """deploy/helm/values.yaml's postgresql values, rendered as the chart renders them (postgres_db)."""
    values = yaml.safe_load_all((PROJECT_ROOT / "deploy/helm/values.yaml").read_text())
    postgresql = next(v for v in values if v)["postgresql"]
    rendered = {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": "postgres",
                    "hostname": "localhost",
                    "db_name": pg_database,
                    "port": 5432,
                    # The chart's host is a TCP name; the embedded server listens on its socket only.
                    "params": {"host": str(pg_server.status.socket_dir)},
                    "scheme": postgresql["postgresqlScheme"],
                }
            }
        }
    }
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(rendered))
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert_storage_works(instance)


@pytest.mark.parametrize("form", URL_FORMS)
def test_the_dagster_cli_and_the_projects_cli_accept_every_url_form(form, pg_server, pg_database, dagster_home):
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = dagster_env(dagster_home, storage_url(form, pg_server, pg_database))
    plain = subprocess.run([str(BIN / "dagster"), "instance", "info"], env=env, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    assert "retention_pipeline.dagster_storage" in plain.stdout
    # The project's CLI with the user's own databases (its `dagster` command runs in a child process).
    env["RETENTION_DATABASE_URL"] = storage_url(form, pg_server, pg_database)
    ours = subprocess.run(cli_command("dagster", "instance", "info"), env=env, capture_output=True, text=True, timeout=120)
    assert ours.returncode == 0, ours.stderr
    assert "PostgresRunStorage" in ours.stdout


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_webserver_and_daemon_run_on_a_bare_postgresql_url(pg_server, pg_database, dagster_home, monkeypatch):
    """`dagster dev` is these two processes; the deploy configs start them the same way."""
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = dagster_env(dagster_home, storage_url("postgresql", pg_server, pg_database))
    env["RETENTION_DATABASE_URL"] = env["DAGSTER_PG_URL"]
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
    port = free_port()
    workspace = ["-w", str(PROJECT_ROOT / "workspace.yaml")]
    webserver = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), *workspace],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", *workspace],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        answer, heartbeats = None, {}
        with DagsterInstance.from_config(str(dagster_home)) as instance:
            while time.monotonic() < deadline and (answer is None or not heartbeats):
                assert webserver.poll() is None and daemon.poll() is None, "webserver or daemon exited"
                try:
                    answer = answer or _graphql(
                        port,
                        "{ runsOrError { __typename } instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }",
                    )
                except OSError:
                    pass
                heartbeats = instance.get_daemon_heartbeats()
                time.sleep(1)
        assert answer is not None, "the webserver never answered"
        assert answer["data"]["runsOrError"]["__typename"] == "Runs", answer
        assert "SCHEDULER" in heartbeats, "the daemon never wrote a heartbeat to its storage"
    finally:
        for process in (webserver, daemon):
            process.terminate()
        for process in (webserver, daemon):
            try:
                _, err = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
            assert "No module named 'psycopg'" not in err and "connection is closed" not in err, err[-2000:]
