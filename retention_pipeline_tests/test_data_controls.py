"""Issue 15, data side: thresholds from retention.yaml, partition mappings that follow it, blocking
checks that stop the emails, a trailing window of snapshots for late events, and per-partition metadata
in range runs. Driven through Dagster as a user would: the schedule's run request, the job, the
launchpad's run config, a backfill range; a changed thresholds file is loaded by a fresh process, as a
reloaded code location would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, build_schedule_context, materialize

from retention_pipeline import clock
from retention_pipeline.definitions import defs
from retention_pipeline.jobs import daily_morning_schedule, weekly_segments_schedule
from retention_pipeline.local.fake_resend import FakeResend
from retention_pipeline.local.runner import run_job
from retention_pipeline.outreach.campaign import CampaignConfig
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.thresholds import FILE_VALUES, PATH, thresholds_version
from retention_pipeline_tests.scenario import Scenario, at, days_between, live_campaign

JOB = "daily_retention_job"
D = date(2026, 5, 20)  # the partition day; its scheduled run ticks the next morning
TICK = datetime(2026, 5, 21, 9, 0, tzinfo=UTC)
API_KEY = "re_test_key_123"


def ago(days: int) -> date:
    return D - timedelta(days=days)


# -- helpers ------------------------------------------------------------------------------------------
def partition_metadata(instance: DagsterInstance, asset: str, partition: str) -> dict:
    """The latest materialization's metadata of one partition, as the UI's partition view shows it."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset} {partition} was never materialized"
    metadata = records[0].asset_materialization.metadata
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def scheduled_run(instance: DagsterInstance, tick: datetime, **kwargs):
    """Evaluate the morning schedule at `tick` and execute its run request like the daemon would."""
    request = daily_morning_schedule(build_schedule_context(scheduled_execution_time=tick))
    job = defs.resolve_job_def(JOB)
    return request, job.execute_in_process(
        instance=instance, partition_key=request.partition_key, run_config=request.run_config, **kwargs
    )


def changed_file(tmp_path: Path, **sections) -> Path:
    values = json.loads(json.dumps(FILE_VALUES))
    for section, changes in sections.items():
        values[section].update(changes)
    path = tmp_path / "retention.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def in_fresh_process(
    script: str, config_path: Path, db_url: str | None = None, args: tuple = (), extra_env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `script` in a new Python process that loads the definitions with RETENTION_CONFIG=config_path."""
    env = {
        **os.environ,
        "RETENTION_CONFIG": str(config_path),
        "RETENTION_UNSUBSCRIBE_SECRET": "test-unsubscribe-secret",
        **(extra_env or {}),
    }
    if db_url:
        env["RETENTION_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args], env=env, capture_output=True, text=True, timeout=300
    )


def steady_world(db, instance, users: int = 12, dormant: int = 6, events_on_d: bool = True) -> Scenario:
    """`users` users active every day of the 14 days before D (and on D, unless the ingestion of D broke),
    plus `dormant` last active 20 days before D; the snapshots of the 40 days before D computed (the
    history dormancy reads)."""
    s = Scenario(db)
    for user_id in range(1, users + dormant + 1):
        s.user(user_id, at(ago(120)))
    for user_id in range(1, users + 1):
        s.daily_events(user_id, days_between(ago(14), D if events_on_d else ago(1)), per_day=2)
    for user_id in range(users + 1, users + dormant + 1):
        s.daily_events(user_id, days_between(ago(40), ago(20)))
    assert run_job(
        instance, JOB, ago(40).isoformat(), ago(1).isoformat(), quiet=True, assets=["daily_activity_snapshots"]
    ).success
    return s


# -- thresholds that persist ---------------------------------------------------------------------------
_SCHEDULE_SCRIPT = """
    import json
    from datetime import datetime, timezone
    from dagster import AssetKey, build_schedule_context
    from retention_pipeline.definitions import defs
    from retention_pipeline.jobs import daily_morning_schedule, weekly_segments_schedule
    from retention_pipeline.segments.config import DormancyThresholds
    daily = daily_morning_schedule(build_schedule_context(scheduled_execution_time=datetime(2026, 5, 21, 9, tzinfo=timezone.utc)))
    weekly = weekly_segments_schedule(build_schedule_context(scheduled_execution_time=datetime(2026, 5, 25, 10, tzinfo=timezone.utc)))
    mappings = {name: defs.get_assets_def(name).get_partition_mapping(AssetKey("daily_activity_snapshots")).start_offset
                for name in ("dormant_users", "weekly_engagement_segments")}
    print(json.dumps({"daily": daily.run_config, "weekly": weekly.run_config, "mappings": mappings,
                      "default_dormant_after_days": DormancyThresholds().dormant_after_days}))
"""


def test_threshold_file_change_reaches_the_schedules_run_requests_and_the_defaults(tmp_path):
    path = changed_file(
        tmp_path,
        dormant_users={"dormant_after_days": 10, "lost_after_days": 120},
        weekly_engagement_segments={"power_min_active_days": 5, "dormant_lookback_weeks": 8},
        daily_activity_snapshots={"trailing_days": 5},
    )
    done = in_fresh_process(_SCHEDULE_SCRIPT, path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    dormant = out["daily"]["ops"]["dormant_users"]["config"]
    assert (dormant["dormant_after_days"], dormant["lost_after_days"]) == (10, 120)
    assert out["daily"]["ops"]["daily_activity_snapshots"]["config"]["trailing_days"] == 5
    assert out["weekly"]["ops"]["weekly_engagement_segments"]["config"]["power_min_active_days"] == 5
    # A backfill launched without run config starts from the same values: they are the Config defaults.
    assert out["default_dormant_after_days"] == 10
    # The partition mappings follow the file: the days and weeks of snapshots each asset declares it reads.
    assert out["mappings"] == {"dormant_users": -120, "weekly_engagement_segments": -9}


def test_threshold_file_as_shipped_is_what_the_schedules_send():
    daily = daily_morning_schedule(build_schedule_context(scheduled_execution_time=TICK))
    weekly = weekly_segments_schedule(build_schedule_context(scheduled_execution_time=datetime(2026, 5, 25, 10, tzinfo=UTC)))
    shipped = yaml.safe_load(PATH.read_text())
    assert daily.run_config == {
        "ops": {
            **{name: {"config": shipped[name]} for name in ("daily_activity_snapshots", "dormant_users")},
            "reengagement_emails": {"ops": {"plan_reengagement_sends": {"config": shipped["plan_reengagement_sends"]}}},
        }
    }
    assert weekly.run_config == {"ops": {"weekly_engagement_segments": {"config": shipped["weekly_engagement_segments"]}}}


@pytest.mark.parametrize(
    "section, change, message",
    [
        ("dormant_users", {"dormant_afterdays": 7}, "unknown key(s) ['dormant_afterdays'] in dormant_users"),
        ("dormant_users", {"dormant_after_days": "seven"}, "dormant_users: Invalid DormancyThresholds: dormant_after_days"),
        (
            "weekly_engagement_segments",
            {"decline_ratio": 1.5},
            "weekly_engagement_segments: Invalid SegmentThresholds: decline_ratio",
        ),
        ("daily_activity_snapshots", {"trailing_days": 0}, "daily_activity_snapshots: Invalid SnapshotConfig: trailing_days"),
    ],
)
def test_threshold_file_errors_stop_the_definitions_with_one_line(tmp_path, section, change, message):
    path = changed_file(tmp_path, **{section: change})
    done = in_fresh_process("import retention_pipeline.definitions", path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("retention_pipeline.thresholds.ThresholdsFileError: "), last
    assert f"{path}: " in last and message in last, last


def test_launchpad_threshold_override_is_recorded_in_that_partitions_metadata(app_db_env, instance):
    s = steady_world(app_db_env, instance)
    for user_id in range(1, 13):
        s.daily_events(user_id, [D + timedelta(days=1)])
    file_version = thresholds_version(FILE_VALUES["dormant_users"])
    override = {"ops": {"dormant_users": {"config": {"dormant_after_days": 21}}}}
    assert run_job(
        instance, JOB, D.isoformat(), run_config=override, quiet=True, assets=["daily_activity_snapshots", "dormant_users"]
    ).success
    changed = partition_metadata(instance, "dormant_users", D.isoformat())
    assert changed["thresholds"]["dormant_after_days"] == 21
    assert changed["thresholds_overrides"] == {"dormant_after_days": {"file": 7, "run": 21}}
    assert changed["thresholds_version"] != file_version
    assert changed["dormant_users"] == 0  # 20 days inactive is not dormant at 21

    # The next scheduled run of the next day uses the file again: the override lasted one run.
    _, result = scheduled_run(
        instance, TICK + timedelta(days=1), asset_selection=[AssetKey("daily_activity_snapshots"), AssetKey("dormant_users")]
    )
    assert result.success
    following = partition_metadata(instance, "dormant_users", (D + timedelta(days=1)).isoformat())
    assert following["thresholds_overrides"] == {}
    assert following["thresholds_version"] == file_version
    assert following["dormant_users"] == 6
    # ...and the overridden partition still says which thresholds produced it.
    assert partition_metadata(instance, "dormant_users", D.isoformat())["thresholds_overrides"] != {}


_BACKFILL_SCRIPT = """
    import json, sys
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance
    from retention_pipeline.local.runner import run_job
    first, last = sys.argv[1], sys.argv[2]
    with DagsterInstance.ephemeral() as instance:
        # A backfill as the UI launches it: a range, no run config.
        assert run_job(instance, "daily_retention_job", first, last, quiet=True,
                       assets=["daily_activity_snapshots", "dormant_users"]).success
        versions = {}
        for record in instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("dormant_users")), limit=100).records:
            m = record.asset_materialization
            versions[m.partition] = m.metadata["thresholds_version"].value
    print(json.dumps(versions))
"""


def test_threshold_change_then_backfill_recomputes_history_consistently(app_db_env, instance, tmp_path):
    s = steady_world(app_db_env, instance)
    first, last = ago(4), D
    assert run_job(
        instance, JOB, first.isoformat(), last.isoformat(), quiet=True, assets=["daily_activity_snapshots", "dormant_users"]
    ).success
    assert all(len(s.dormant(day)) == 6 for day in days_between(first, last))

    path = changed_file(tmp_path, dormant_users={"dormant_after_days": 25})
    done = in_fresh_process(_BACKFILL_SCRIPT, path, app_db_env.url, args=(first.isoformat(), last.isoformat()))
    assert done.returncode == 0, done.stderr[-3000:]
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    new_version = thresholds_version({**FILE_VALUES["dormant_users"], "dormant_after_days": 25})
    assert versions == {day.isoformat(): new_version for day in days_between(first, last)}
    # Every day of history now follows the new file (the dormant users were last active 20 days before D,
    # so nobody is 25 days inactive yet)...
    backfilled = {day: s.dormant(day) for day in days_between(first, last)}
    assert all(rows == {} for rows in backfilled.values())
    # ...exactly as a single day computed with the same thresholds would be.
    again = {"ops": {"dormant_users": {"config": {"dormant_after_days": 25}}}}
    assert run_job(instance, JOB, ago(2).isoformat(), run_config=again, quiet=True, assets=["dormant_users"]).success
    assert s.dormant(ago(2)) == backfilled[ago(2)]


# -- campaign settings that persist ------------------------------------------------------------------------
CAMPAIGN = "plan_reengagement_sends"
EMAIL_ASSETS = [AssetKey(name) for name in ("daily_activity_snapshots", "dormant_users", "reengagement_emails")]

_CAMPAIGN_FILE_SCRIPT = """
    import json
    from datetime import datetime, timezone
    from dagster import AssetKey, DagsterInstance, build_schedule_context
    from retention_pipeline.definitions import defs
    from retention_pipeline.jobs import daily_morning_schedule
    from retention_pipeline.outreach.campaign import CampaignConfig
    request = daily_morning_schedule(build_schedule_context(scheduled_execution_time=datetime(2026, 5, 21, 9, tzinfo=timezone.utc)))
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("daily_retention_job").execute_in_process(
            instance=instance, partition_key=request.partition_key, run_config=request.run_config,
            asset_selection=[AssetKey(name) for name in ("daily_activity_snapshots", "dormant_users", "reengagement_emails")])
    emails = next(e.step_materialization_data.materialization.metadata for e in result.get_asset_materialization_events()
                  if e.asset_key == AssetKey("reengagement_emails"))
    print(json.dumps({"request": request.run_config["ops"]["reengagement_emails"],
                      "default_postal_address": CampaignConfig().postal_address,
                      "metadata": {key: emails[key].value for key in ("thresholds", "thresholds_version",
                                                                      "thresholds_overrides", "campaign", "emails_sent")}}))
"""


def test_campaign_file_change_reaches_the_schedules_run_request_and_the_live_sends(app_db_env, instance, resend_sender, tmp_path):
    fake, _ = resend_sender
    s = steady_world(app_db_env, instance)
    identity = {
        "campaign": "spring",
        "sender_name": "Acme File Inc.",
        "postal_address": "7 File Road, Yamlton, YA 00007",
        "from_address": "Acme <hello@acme.example>",
    }
    path = changed_file(tmp_path, **{CAMPAIGN: identity})
    # A live sender (Resend) in the reloaded code location: it refuses to send without the file's postal address.
    env = {"RESEND_API_KEY": API_KEY, "RESEND_API_URL": fake.url, "RETENTION_NOW": TICK.isoformat()}
    done = in_fresh_process(_CAMPAIGN_FILE_SCRIPT, path, app_db_env.url, extra_env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    sent_config = out["request"]["ops"][CAMPAIGN]["config"]
    assert {key: sent_config[key] for key in identity} == identity
    assert out["default_postal_address"] == identity["postal_address"]  # a backfill without run config too
    metadata = out["metadata"]
    file_values = {**FILE_VALUES[CAMPAIGN], **identity}
    assert metadata["thresholds"] == file_values and metadata["thresholds_overrides"] == {}
    assert metadata["thresholds_version"] == thresholds_version(file_values)
    assert metadata["campaign"] == "spring" and metadata["emails_sent"] >= 1
    assert ledger(s).get("sent") == metadata["emails_sent"]
    assert fake.accepted and all(
        identity["postal_address"] in a.email["text"] and a.email["from"] == identity["from_address"] for a in fake.accepted
    )


def test_campaign_file_launchpad_pause_lasts_one_run(app_db_env, instance):
    s = steady_world(app_db_env, instance)
    for user_id in range(1, 13):
        s.daily_events(user_id, [D + timedelta(days=1)])
    file_version = thresholds_version(FILE_VALUES[CAMPAIGN])
    clock.set_now(TICK)
    paused = {"ops": {"reengagement_emails": {"ops": {CAMPAIGN: {"config": {"paused": True}}}}}}
    result = defs.resolve_job_def(JOB).execute_in_process(
        instance=instance, partition_key=D.isoformat(), run_config=paused, asset_selection=EMAIL_ASSETS
    )
    assert result.success
    held = partition_metadata(instance, "reengagement_emails", D.isoformat())
    assert held["thresholds_overrides"] == {"paused": {"file": False, "run": True}}
    assert held["thresholds"]["paused"] is True and held["thresholds_version"] != file_version
    assert held["guards"] == {D.isoformat(): "campaign paused (kill switch)"}
    assert ledger(s) == {}

    # The next morning's scheduled run uses the file again: not paused, the dormant users are emailed.
    clock.set_now(TICK + timedelta(days=1))
    request, result = scheduled_run(instance, TICK + timedelta(days=1), asset_selection=EMAIL_ASSETS)
    assert result.success
    assert request.run_config["ops"]["reengagement_emails"]["ops"][CAMPAIGN]["config"]["paused"] is False
    following = partition_metadata(instance, "reengagement_emails", (D + timedelta(days=1)).isoformat())
    assert following["thresholds_overrides"] == {} and following["thresholds_version"] == file_version
    assert following["guards"] == {} and following["emails_sent"] >= 1
    assert ledger(s).get("sent") == following["emails_sent"]
    # ...and the paused day still says it was paused by the launchpad.
    assert partition_metadata(instance, "reengagement_emails", D.isoformat())["thresholds_overrides"] != {}


def test_campaign_file_as_shipped_validates_and_is_the_campaign_configs_defaults():
    shipped = yaml.safe_load(PATH.read_text())[CAMPAIGN]
    assert set(shipped) == set(CampaignConfig.model_fields)  # every setting is kept in the file
    assert CampaignConfig(**shipped).model_dump() == CampaignConfig().model_dump() == shipped
    assert shipped["postal_address"] == "" and shipped["paused"] is False and shipped["dry_run"] is False


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"holdout_share": 0.9},
            "plan_reengagement_sends: Invalid CampaignConfig: holdout_share: Input should be less than or equal to 0.5",
        ),
        ({"paused": "maybe"}, "plan_reengagement_sends: Invalid CampaignConfig: paused"),
        ({"postal_adress": "1 Main St"}, "unknown key(s) ['postal_adress'] in plan_reengagement_sends"),
        (
            {"steps": [{"step": 2, "delay_days": 0, "variants": ["recap"]}]},
            "plan_reengagement_sends: Invalid CampaignConfig: thresholds: Value error, steps must be numbered 1..n in order, got [2]",
        ),
    ],
)
def test_campaign_file_errors_stop_the_definitions_with_one_line(tmp_path, change, message):
    path = changed_file(tmp_path, **{CAMPAIGN: change})
    done = in_fresh_process("import retention_pipeline.definitions", path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("retention_pipeline.thresholds.ThresholdsFileError: "), last
    assert f"{path}: " in last and message in last, last


# -- partition mappings follow the config ----------------------------------------------------------------
def test_threshold_beyond_the_declared_partition_mapping_is_rejected_clearly(app_db_env, instance):
    snapshots = AssetKey("daily_activity_snapshots")
    assert (
        defs.get_assets_def("dormant_users").get_partition_mapping(snapshots).start_offset
        == -FILE_VALUES["dormant_users"]["lost_after_days"]
    )
    weeks = FILE_VALUES["weekly_engagement_segments"]["dormant_lookback_weeks"]
    assert defs.get_assets_def("weekly_engagement_segments").get_partition_mapping(snapshots).start_offset == -(weeks + 1)
    steady_world(app_db_env, instance)
    too_far = {"ops": {"dormant_users": {"config": {"lost_after_days": FILE_VALUES["dormant_users"]["lost_after_days"] + 1}}}}
    with pytest.raises(Exception) as failure:
        run_job(instance, JOB, D.isoformat(), run_config=too_far, quiet=True, assets=["dormant_users"])
    assert "reads further back than the 90 days the asset declares" in str(failure.value)
    shorter = {"ops": {"dormant_users": {"config": {"lost_after_days": 30}}}}
    assert run_job(
        instance, JOB, D.isoformat(), run_config=shorter, quiet=True, assets=["daily_activity_snapshots", "dormant_users"]
    ).success


# -- checks that gate sends ------------------------------------------------------------------------------
@pytest.fixture
def resend_sender():
    with FakeResend(api_key=API_KEY, rate=50) as fake:
        yield (
            fake,
            ResendSender(api_key=API_KEY, api_url=fake.url, requests_per_second=50, backoff_base_seconds=0.05, timeout_seconds=5),
        )


def daily_run_with_sender(instance, sender, run_config=None):
    """The daily job's assets for D, the morning after, with the test's Resend sender (the job's own
    sender is bound when the definitions load), not raising when a blocking check fails."""
    clock.set_now(TICK)
    return materialize(
        list(defs.assets),
        resources={**defs.resources, "email_sender": sender},
        instance=instance,
        selection=list(defs.resolve_job_def(JOB).asset_layer.selected_asset_keys),
        partition_key=D.isoformat(),
        run_config=live_campaign(run_config),
        raise_on_error=False,
    )


def materialized(result) -> set[str]:
    return {e.step_materialization_data.materialization.asset_key.path[-1] for e in result.get_asset_materialization_events()}


def ledger(s: Scenario) -> dict[str, int]:
    return {r["status"]: r["n"] for r in s.rows("SELECT status, count(*) AS n FROM {rs}.email_sends GROUP BY status")}


def test_blocking_check_stops_the_emails_when_no_events_arrived_yesterday(app_db_env, instance, resend_sender):
    fake, sender = resend_sender
    s = steady_world(app_db_env, instance, events_on_d=False)  # nobody is active on D: the ingestion broke
    result = daily_run_with_sender(instance, sender)
    assert not result.success
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["activity_ingested"]
    assert not evaluation.passed and evaluation.blocking
    assert "ingestion looks broken: no email is sent" in evaluation.description
    assert {"daily_activity_snapshots", "dormant_users"} <= materialized(result)  # the analytics still materialize
    assert "reengagement_emails" not in materialized(result)
    assert ledger(s) == {} and fake.requests == []
    assert len(s.dormant(D)) == 6
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "blocking asset check failed" in failure[0].event_specific_data.error.message


def test_blocking_checks_pass_on_a_healthy_day_and_the_emails_go_out(app_db_env, instance, resend_sender):
    fake, sender = resend_sender
    s = steady_world(app_db_env, instance)
    result = daily_run_with_sender(instance, sender)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations() if e.asset_key.path[-1] == "dormant_users")
    assert "reengagement_emails" in materialized(result)
    statuses = ledger(s)
    assert statuses.get("sent", 0) + statuses.get("holdout", 0) == 6 and statuses.get("sent", 0) >= 1
    assert len(fake.requests) >= 1


def test_blocking_send_ceiling_from_the_launchpad_stops_the_emails(app_db_env, instance, resend_sender):
    fake, sender = resend_sender
    s = steady_world(app_db_env, instance)
    result = daily_run_with_sender(instance, sender, {"ops": {"dormant_users": {"config": {"max_planned_sends": 5}}}})
    assert not result.success
    evaluation = {e.check_name: e for e in result.get_asset_check_evaluations()}["planned_sends_within_ceiling"]
    assert not evaluation.passed and "6 targeted users, above max_planned_sends=5" in evaluation.description
    assert ledger(s) == {} and fake.requests == []
    assert partition_metadata(instance, "dormant_users", D.isoformat())["thresholds_overrides"] == {
        "max_planned_sends": {"file": FILE_VALUES["dormant_users"]["max_planned_sends"], "run": 5}
    }


def test_blocking_dormant_jump_against_the_trailing_median(app_db_env, instance):
    s = steady_world(app_db_env, instance, users=12, dormant=2, events_on_d=False)
    for user_id in range(13 + 2, 13 + 2 + 8):  # active on D only: the events of D keep arriving
        s.user(user_id, at(ago(120)))
        s.daily_events(user_id, [D])
    baseline = (ago(7).isoformat(), ago(1).isoformat())
    assert run_job(instance, JOB, *baseline, quiet=True, assets=["daily_activity_snapshots", "dormant_users"]).success
    assert all(len(s.dormant(day)) == 2 for day in days_between(ago(7), ago(1)))
    # The twelve steady users' last week disappears from the snapshots: on D they all look dormant.
    s.db.execute("DELETE FROM events WHERE user_id <= 12 AND occurred_at >= :t", {"t": at(ago(7), 0)})
    assert run_job(instance, JOB, *baseline, quiet=True, assets=["daily_activity_snapshots"]).success
    job = defs.resolve_job_def(JOB)
    result = job.execute_in_process(
        instance=instance,
        partition_key=D.isoformat(),
        raise_on_error=False,
        asset_selection=[AssetKey(name) for name in ("daily_activity_snapshots", "dormant_users", "reengagement_emails")],
        run_config={"ops": {"dormant_users": {"config": {"max_dormant_jump_min_users": 5}}}},
    )
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["activity_ingested"].passed
    jump = evaluations["dormant_vs_trailing_median"]
    assert not jump.passed and "14 dormant users, above 7 (trailing median 2)" in jump.description
    assert "reengagement_emails" not in materialized(result)


# -- late events: a trailing window of snapshots -----------------------------------------------------------
def test_late_event_two_days_old_is_counted_by_the_next_scheduled_run(app_db_env, instance):
    s = Scenario(app_db_env)
    s.user(1, at(ago(120)))
    s.user(2, at(ago(120)))
    s.daily_events(1, days_between(ago(30), ago(10))[::4])  # sparse: never "declining", only inactive
    s.daily_events(2, days_between(ago(30), D))
    assert run_job(
        instance, JOB, ago(30).isoformat(), ago(1).isoformat(), quiet=True, assets=["daily_activity_snapshots"]
    ).success
    request, result = scheduled_run(instance, TICK)
    assert request.partition_key == D.isoformat() and result.success
    assert set(s.dormant(D)) == {1}
    # An event of D-1 (two days before the next partition) arrives only now.
    s.event(1, at(ago(1), 18), "late_sync")
    s.daily_events(2, [D + timedelta(days=1)])
    request, result = scheduled_run(instance, TICK + timedelta(days=1))
    assert request.partition_key == (D + timedelta(days=1)).isoformat() and result.success
    assert s.daily_activity()[(ago(1), 1)]["event_count"] == 1
    assert 1 not in s.dormant(D + timedelta(days=1))
    # The recomputed day says so on its own partition, with its own figures.
    recomputed = partition_metadata(instance, "daily_activity_snapshots", ago(1).isoformat())
    assert recomputed["recomputed_by_partition"] == (D + timedelta(days=1)).isoformat()
    assert (recomputed["events"], recomputed["active_users"]) == (2, 2)


def test_trailing_days_bound_how_late_an_event_may_arrive(app_db_env, instance):
    s = Scenario(app_db_env)
    s.user(1, at(ago(120)))
    s.daily_events(1, days_between(ago(30), ago(8)))
    s.event(1, at(ago(2), 9), "late_sync")  # inside the default window (D-2 .. D)
    s.event(1, at(ago(3), 9), "older_sync")  # outside it
    request = daily_morning_schedule(build_schedule_context(scheduled_execution_time=TICK))
    assert request.run_config["ops"]["daily_activity_snapshots"]["config"]["trailing_days"] == 3
    assert run_job(
        instance, JOB, D.isoformat(), run_config=request.run_config, quiet=True, assets=["daily_activity_snapshots"]
    ).success
    assert {day for day, _ in s.daily_activity()} == {ago(2)}
    one_day = {"ops": {"daily_activity_snapshots": {"config": {"trailing_days": 1}}}}
    s.db.execute("DELETE FROM {rs}.daily_activity")
    assert run_job(instance, JOB, D.isoformat(), run_config=one_day, quiet=True, assets=["daily_activity_snapshots"]).success
    assert s.daily_activity() == {}


# -- honest range runs ------------------------------------------------------------------------------------
def test_range_metadata_is_each_partitions_own_for_snapshots_and_dormant_users(app_db_env, instance):
    s = Scenario(app_db_env)
    for user_id in range(1, 11):
        s.user(user_id, at(ago(120)))
        # User n is active up to n+5 days before D: the dormant list grows day by day.
        s.daily_events(user_id, days_between(ago(40), ago(user_id + 5)), per_day=user_id)
    first = ago(9)
    assert run_job(
        instance, JOB, first.isoformat(), D.isoformat(), quiet=True, assets=["daily_activity_snapshots", "dormant_users"]
    ).success
    for day in days_between(first, D):
        snapshot = partition_metadata(instance, "daily_activity_snapshots", day.isoformat())
        events = s.rows(
            "SELECT COALESCE(sum(event_count), 0) AS n FROM {rs}.daily_activity WHERE activity_date = :d", {"d": day}
        )[0]["n"]
        assert snapshot["events"] == events
        dormant = partition_metadata(instance, "dormant_users", day.isoformat())
        assert dormant["as_of"] == day.isoformat()
        assert dormant["dormant_users"] == len(s.dormant(day))
        assert "sql_seconds" not in snapshot or day == D  # the run's timing sits on its last partition only
    plotted = [partition_metadata(instance, "dormant_users", day.isoformat())["dormant_users"] for day in days_between(first, D)]
    assert len(set(plotted)) > 3, plotted  # a real curve, not one value stamped on every partition


def test_per_partition_outcomes_and_performance_compute_every_day_of_a_range(app_db_env, instance):
    steady_world(app_db_env, instance)
    first = ago(6)
    clock.set_now(TICK + timedelta(days=30))  # an old range: a backfill, which never sends
    assert run_job(instance, JOB, first.isoformat(), D.isoformat(), quiet=True).success
    for day in days_between(first, D):
        for asset in ("reengagement_outcomes", "campaign_performance"):
            assert partition_metadata(instance, asset, day.isoformat())["as_of"] == day.isoformat()
        # The emails' window totals cannot be split by day here: no plotted number, one JSON of the window.
        emails = partition_metadata(instance, "reengagement_emails", day.isoformat())
        assert "emails_sent" not in emails and "holdout" not in emails
        assert emails["window_figures"]["days"] == f"{first.isoformat()} .. {D.isoformat()}"
