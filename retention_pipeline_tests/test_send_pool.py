"""The `email_provider` pool (issue 15): two runs sending at once share the provider's rate limit for real.

Two run workers (child processes) of `daily_retention_job` start the same moment, each sending one
campaign of about 250 emails in batches of 25, each paced under Resend's 2 requests/s, to one Resend-like server that
allows 2 requests per sliding second for the whole team and answers 429 beyond. Both use one Dagster
instance configured by the project's own dagster.yaml (storage in the embedded PostgreSQL), so the
send ops claim the pool's slots exactly as a run launched by the daemon would: the executor of the run
(in-process here, multiprocess under the daemon; both go through Dagster's InstanceConcurrencyContext)
claims a slot in the instance's storage before the op starts and frees it when the op ends.

The same pair of runs under the same file without its `concurrency.pools` section shows what the test
would catch: the two send ops overlap and the provider answers 429.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.allocation import in_holdout
from retention_pipeline.settings import STATE_DIR
from retention_pipeline_tests import faults
from retention_pipeline_tests.faults import API_KEY, MORNING_AFTER, create_database, forkserver, send_resources
from retention_pipeline_tests.scenario import live_campaign, materialization_metadata

PROJECT_DAGSTER_YAML = faults.PROJECT_ROOT / "dagster.yaml"
ELIGIBLE = 250
BATCH = 25
CAMPAIGNS = ("winback", "springback")
# Each run paces itself a little under the provider's 2 requests/s. At exactly 2/s, two calls 0.51 s apart
# tolerate 20 ms of jitter in arrival, and this loaded 2-core machine exceeds that now and then within ONE
# run (a 429 with no other run sending): not what this test is about. Two runs at 1.8/s together still
# ask for 3.6/s, far over the limit, unless the pool makes them take turns.
PACE = 1.8


N_USERS = faults.users_for_eligible(ELIGIBLE)
# Holdouts hash campaign and user, so each campaign has its own eligible users.
EXPECTED = {
    c: sum(not in_holdout(c, 1, u, faults.EPISODE_START, faults.HOLDOUT_SHARE) for u in range(1, N_USERS + 1)) for c in CAMPAIGNS
}


@pytest.fixture(scope="module")
def pool_world(dormant_world):
    return dormant_world(N_USERS)


def dagster_home(pg_server, dagster_yaml: dict) -> tuple[Path, dict]:
    """A DAGSTER_HOME with the given dagster.yaml, its storage in a fresh database of the embedded server."""
    home = STATE_DIR / "test-dagster-homes" / uuid.uuid4().hex[:8]
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(dagster_yaml))
    storage = create_database(pg_server, f"dagster_pool_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_URL": pg_server.url(storage)}
    return home, env


def child_run(env: dict, db_url: str, api_url: str, campaign: str, start, results) -> None:
    """Target of a run worker: one send run of `campaign` on the instance that DAGSTER_HOME configures."""
    os.environ.update(env)
    os.environ["RETENTION_NOW"] = MORNING_AFTER.isoformat()
    os.environ["RETENTION_UNSUBSCRIBE_SECRET"] = faults.UNSUBSCRIBE_SECRET
    from dagster import DagsterInstance

    start.wait(60)
    with DagsterInstance.get() as instance:
        result = run_job(
            instance,
            "daily_retention_job",
            faults.AS_OF.isoformat(),
            resources=send_resources(db_url, api_url, requests_per_second=PACE, max_batch_size=BATCH),
            run_config=live_campaign(
                {"ops": {"reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": {"campaign": campaign}}}}}}
            ),
            assets=["reengagement_emails"],
            quiet=True,
        )
        metadata = materialization_metadata(result, "reengagement_emails") if result.success else {}
        results.put({"campaign": campaign, "success": result.success, "emails_sent": metadata.get("emails_sent")})
    sys.exit(0 if result.success else 1)


def two_concurrent_runs(pg_server, pool_world: str, dagster_yaml: dict) -> dict:
    home, env = dagster_home(pg_server, dagster_yaml)
    databases = [create_database(pg_server, f"pool_{c}_{uuid.uuid4().hex[:6]}", template=pool_world) for c in CAMPAIGNS]
    try:
        from dagster import DagsterInstance

        os.environ.update(env)  # created once here, so the two workers do not race to create Dagster's tables
        try:
            with DagsterInstance.get() as instance:
                pool_config = instance.get_concurrency_config().pool_config
                # What the pool's first-ever claim on an instance does, done once here: in Dagster 1.13.27
                # two runs making that first claim at the same instant on PostgreSQL crash one of them
                # with a UniqueViolation (dagster-io/dagster#33552; seen in this test). Later claims read
                # the stored limit and do not race.
                instance.event_log_storage.initialize_concurrency_limit_to_default("email_provider")
        finally:
            for key in env:
                os.environ.pop(key)
        ctx = forkserver()
        start, results = ctx.Event(), ctx.Queue()
        with FakeResend(api_key=API_KEY, rate=2) as server:
            workers = [
                ctx.Process(target=child_run, args=(env, pg_server.url(db), server.url, campaign, start, results))
                for db, campaign in zip(databases, CAMPAIGNS, strict=True)
            ]
            for worker in workers:
                worker.start()
            start.set()
            for worker in workers:
                worker.join(300)
            summaries = sorted((results.get(timeout=10) for _ in workers), key=lambda s: s["campaign"])
            requests = list(server.requests)
            accepted = list(server.accepted)
        return {
            "pool_config": pool_config,
            "summaries": summaries,
            "exit_codes": [w.exitcode for w in workers],
            "requests": requests,
            "accepted": accepted,
        }
    finally:
        for db in databases:
            pg_server.drop_database(db)
        shutil.rmtree(home, ignore_errors=True)


def timeline(requests) -> list[tuple]:
    start = min(r.time for r in requests)
    return [(campaign_of(r), r.idempotency_key.rsplit("-", 1)[1], round(r.time - start, 3), r.outcome) for r in requests]


def campaign_of(request_or_email) -> str:
    key = request_or_email.idempotency_key
    return next(c for c in CAMPAIGNS if key and key.startswith(c + "-"))


def overlapping_requests(requests) -> int:
    """Requests of one campaign that arrived while the other campaign's requests were under way."""
    spans = {}
    for r in requests:
        first, last = spans.get(campaign_of(r), (r.time, r.time))
        spans[campaign_of(r)] = (min(first, r.time), max(last, r.time))
    (a_first, a_last), (b_first, b_last) = spans.values()
    return sum(1 for r in requests if max(a_first, b_first) <= r.time <= min(a_last, b_last))


def test_pool_of_the_shipped_dagster_yaml_keeps_two_concurrent_runs_under_the_provider_limit(pg_server, pool_world):
    outcome = two_concurrent_runs(pg_server, pool_world, yaml.safe_load(PROJECT_DAGSTER_YAML.read_text()))
    assert outcome["pool_config"].default_pool_limit == 1
    assert outcome["pool_config"].pool_granularity.value == "op"
    assert outcome["exit_codes"] == [0, 0], outcome["summaries"]
    outcomes = Counter(r.outcome for r in outcome["requests"])
    assert outcomes == {"accepted": sum(math.ceil(n / BATCH) for n in EXPECTED.values())}, timeline(outcome["requests"])
    assert overlapping_requests(outcome["requests"]) == 0  # one run's sends, then the other's
    delivered = Counter((campaign_of(a), a.email["to"][0]) for a in outcome["accepted"])
    assert len(delivered) == sum(EXPECTED.values()) and set(delivered.values()) == {1}
    assert {s["campaign"]: s["emails_sent"] for s in outcome["summaries"]} == EXPECTED


def test_pool_removed_from_dagster_yaml_lets_two_runs_exceed_the_provider_limit(pg_server, pool_world):
    """The check above is not vacuous: without the pool, the same two runs overlap and get 429s."""
    config = yaml.safe_load(PROJECT_DAGSTER_YAML.read_text())
    del config["concurrency"]["pools"]
    outcome = two_concurrent_runs(pg_server, pool_world, config)
    assert outcome["pool_config"].default_pool_limit is None
    assert outcome["exit_codes"] == [0, 0], outcome["summaries"]
    outcomes = Counter(r.outcome for r in outcome["requests"])
    assert outcomes["rate_limited"] > 0 and overlapping_requests(outcome["requests"]) > 0, outcomes
    # The sender's retries still deliver every email once: the pool is about the limit, not correctness.
    assert {s["campaign"]: s["emails_sent"] for s in outcome["summaries"]} == EXPECTED


@pytest.mark.parametrize("path", ["dagster.yaml", "deploy/dagster.k8s.yaml", "deploy/dagster.celery.yaml"])
def test_pool_limit_ships_in_every_instance_file(path):
    """Each file passes Dagster's instance schema and limits every pool (so `email_provider`) to one op at a time."""
    from dagster._core.instance.config import dagster_instance_config

    file = faults.PROJECT_ROOT / path
    config, _ = dagster_instance_config(str(file.parent), file.name)
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    if path.startswith("deploy/"):
        # Runs that die holding the slot (a killed pod) release it once marked failed.
        assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["free_slots_after_run_end_seconds"] > 0
