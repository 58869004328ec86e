"""The code location's surface, as loaded, against a reviewed snapshot: any change to an asset, check,
job, schedule or resource shows up in the diff of `snapshots/definitions.json`.

After an intended change: `RETENTION_UPDATE_SNAPSHOT=1 uv run pytest retention_pipeline_tests/test_definitions_snapshot.py`
rewrites the file; review and commit it with the change."""

import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "definitions.json"


def _partitions(definition) -> str | None:
    partitions = getattr(definition, "partitions_def", None)
    if partitions is None:
        return None
    cron = getattr(partitions, "cron_schedule", None)
    timezone = getattr(partitions, "timezone", None)
    return f"{type(partitions).__name__}({cron}, {timezone})" if cron else type(partitions).__name__


def surface() -> dict:
    from retention_pipeline.definitions import defs

    repository = defs.get_repository_def()
    graph = repository.asset_graph
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "description": node.description,
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": _partitions(node),
            "depends_on": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(check.name for check in node.check_keys),
        }
    checks = {}
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        spec = graph.get_check_spec(check_key)
        checks[f"{check_key.asset_key.to_user_string()}:{check_key.name}"] = {
            "description": spec.description,
            "blocking": spec.blocking,
        }
    jobs = {
        job.name: {"description": job.description, "partitions": _partitions(job)}
        for job in sorted(repository.get_all_jobs(), key=lambda j: j.name)
        if not job.name.startswith("__")
    }
    schedules = {
        s.name: {
            "cron": s.cron_schedule,
            "timezone": s.execution_timezone,
            "job": s.job_name,
            "default_status": s.default_status.value,
        }
        for s in sorted(repository.schedule_defs, key=lambda s: s.name)
    }
    resources = {name: type(resource).__name__ for name, resource in sorted((defs.resources or {}).items())}
    return {"assets": assets, "asset_checks": checks, "jobs": jobs, "schedules": schedules, "resources": resources}


def test_the_loaded_definitions_match_the_reviewed_snapshot():
    current = json.dumps(surface(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("RETENTION_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with RETENTION_UPDATE_SNAPSHOT=1 to write {SNAPSHOT.name}"
    assert current == SNAPSHOT.read_text(), (
        "the code location's surface changed: review the diff, then rerun with RETENTION_UPDATE_SNAPSHOT=1"
    )
