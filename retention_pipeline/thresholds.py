"""The thresholds file (retention.yaml): read once when the definitions load, checked section by section.

Its sections are the Config defaults of the assets they are named after, and the run config the
schedules send, so a launchpad edit lasts one run and the file is what every other run uses."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from dagster import Config, Failure, MetadataValue
from pydantic import ValidationError

from retention_pipeline.errors import SettingsError
from retention_pipeline.settings import PROJECT_ROOT

SECTIONS = ("daily_activity_snapshots", "weekly_engagement_segments", "dormant_users", "plan_reengagement_sends")

# A section named after an op inside a graph asset: its run config nests under that asset.
_GRAPH_ASSET_OF = {"plan_reengagement_sends": "reengagement_emails"}


class ThresholdsFileError(SettingsError):
    """The thresholds file cannot be used; the message is one line that names the file, the key and RETENTION_CONFIG.

    A SettingsError, so the console script shows it as that line with exit code 2 wherever it is raised."""

    def __init__(self, problem: str) -> None:
        super().__init__(
            f"RETENTION_CONFIG: {problem}; fix the thresholds file, or point RETENTION_CONFIG at a valid one "
            "(unset = retention.yaml)."
        )


def thresholds_path() -> Path:
    return Path(os.environ.get("RETENTION_CONFIG") or PROJECT_ROOT / "retention.yaml")


def _load(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ThresholdsFileError(f"{path}: cannot read the thresholds file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ThresholdsFileError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ThresholdsFileError(f"{path}: expected a mapping of sections {list(SECTIONS)}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ThresholdsFileError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    for name in SECTIONS:
        if not isinstance(data.get(name), dict):
            raise ThresholdsFileError(f"{path}: section {name} is missing or not a mapping")
    return data


PATH = thresholds_path()
FILE_VALUES = _load(PATH)


def file_default(section: str, key: str) -> Any:
    """The file's value of one field, used as that Config field's default."""
    try:
        return FILE_VALUES[section][key]
    except KeyError:
        raise ThresholdsFileError(f"{PATH}: {section}.{key} is missing") from None


def check_section(config_class: type[Config], section: str) -> None:
    """Validate a whole section with the Config class it feeds: unknown keys, types, ranges, cross-field rules."""
    values = FILE_VALUES[section]
    unknown = sorted(set(values) - set(config_class.model_fields))
    if unknown:
        raise ThresholdsFileError(f"{PATH}: unknown key(s) {unknown} in {section}; known: {sorted(config_class.model_fields)}")
    try:
        config_class(**values)
    except (Failure, ValidationError) as exc:
        detail = exc.description if isinstance(exc, Failure) else str(exc)
        raise ThresholdsFileError(f"{PATH}: {section}: {' '.join(str(detail).split())}") from None


def run_config(*sections: str) -> dict:
    """The run config that applies the file's sections, as a schedule sends it."""
    ops: dict[str, dict] = {}
    for name in sections:
        graph_asset = _GRAPH_ASSET_OF.get(name)
        nested = ops.setdefault(graph_asset, {"ops": {}})["ops"] if graph_asset else ops
        nested[name] = {"config": FILE_VALUES[name]}
    return {"ops": ops}


def thresholds_version(values: dict) -> str:
    """A short, stable fingerprint of a set of thresholds: equal values, equal version."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def thresholds_metadata(config: Config, section: str) -> dict[str, MetadataValue]:
    """What a materialization records: the thresholds used, their version, and what differed from the file."""
    return used_values_metadata(config.model_dump(), section)


def used_values_metadata(used: dict, section: str) -> dict[str, MetadataValue]:
    """thresholds_metadata of values dumped from a Config, for an op that records what an earlier op used."""
    overrides = {
        key: {"file": FILE_VALUES[section].get(key), "run": value}
        for key, value in used.items()
        if FILE_VALUES[section].get(key) != value
    }
    return {
        "thresholds": MetadataValue.json(used),
        "thresholds_version": MetadataValue.text(thresholds_version(used)),
        "thresholds_overrides": MetadataValue.json(overrides),
    }


def reject_clearly(cls, data: Any, handler):
    """Turn invalid thresholds into a Dagster Failure that names every bad field and is not retried:
    the assets' database retry policy would otherwise retry a typo three times and end the run with
    nothing but "Exceeded max_retries". Config is built before the asset body, so nothing is written."""
    try:
        return handler(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'thresholds'}: {error['msg']}"
            + (f" (got {error['input']!r})" if error["loc"] else "")
            for error in exc.errors()
        )
        raise Failure(description=f"Invalid {cls.__name__}: {problems}", allow_retries=False) from exc
