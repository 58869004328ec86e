"""Where the pipeline reads and writes comes from the deployment, never from a run's config: the
launchpad cannot point a run at another database, schema or table. The statement timeout can be set."""

import pytest
from dagster import DagsterInvalidConfigError, build_resources, validate_run_config

from retention_pipeline.definitions import defs

JOBS = ["daily_retention_job", "billing_snapshot_job", "weekly_segments_job"]
REDIRECTS = {
    "url": {"url": "postgresql://attacker@evil.example/app"},
    "retention_schema": {"retention_schema": "public"},
    "source": {"source": {"events_table": "other_events"}},
}


def app_db_config(config: dict) -> dict:
    return {"resources": {"app_db": {"config": config}}}


@pytest.mark.parametrize("job_name", JOBS)
@pytest.mark.parametrize("field", REDIRECTS)
def test_run_config_cannot_redirect_app_db(job_name, field):
    with pytest.raises(DagsterInvalidConfigError, match=f'unexpected config entry "{field}"'):
        validate_run_config(defs.resolve_job_def(job_name), app_db_config(REDIRECTS[field]))


def test_a_redirecting_launch_is_rejected_before_the_run_starts(instance, app_db_env):
    job = defs.resolve_job_def("billing_snapshot_job")
    with pytest.raises(DagsterInvalidConfigError, match='unexpected config entry "url"'):
        job.execute_in_process(instance=instance, run_config=app_db_config(REDIRECTS["url"]))
    assert instance.get_runs() == [], "a run was created"


def test_the_statement_timeout_can_be_set_per_run_and_the_rest_comes_from_the_environment(app_db_env):
    config = app_db_config({"statement_timeout_seconds": 45})
    validate_run_config(defs.resolve_job_def("daily_retention_job"), config)
    with build_resources(
        {"app_db": defs.resources["app_db"]}, resource_config={"app_db": config["resources"]["app_db"]}
    ) as built:
        db = built.app_db
        assert db.url == app_db_env.url and db.statement_timeout_seconds == 45
        assert db.scalar("SHOW statement_timeout") == "45s"
    with build_resources({"app_db": defs.resources["app_db"]}) as built:
        assert built.app_db.statement_timeout_seconds == 600
