"""The README and docs/ against the code: every field a user can set is documented with its real default and
description, every shell command they show is run by a test, and every link they make leads somewhere."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined

from retention_pipeline.activity.config import SnapshotConfig
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.outcomes.assets import OutcomeConfig, PerformanceConfig
from retention_pipeline.outreach.campaign import CampaignConfig, CampaignStep
from retention_pipeline.outreach.senders import ResendSender
from retention_pipeline.outreach.senders.smtp import SmtpSender
from retention_pipeline.resources import AppDatabase, SourceTables
from retention_pipeline.segments.config import DormancyThresholds, SegmentThresholds

PROJECT_ROOT = Path(__file__).resolve().parent.parent
README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
CONFIGURATION = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
DEPLOYMENT = (PROJECT_ROOT / "docs" / "deployment.md").read_text()

CONFIG_CLASSES = [
    SnapshotConfig,
    SegmentThresholds,
    DormancyThresholds,
    CampaignConfig,
    CampaignStep,
    OutcomeConfig,
    PerformanceConfig,
    AppDatabase,
    SourceTables,
    StripeResource,
    ResendSender,
    SmtpSender,
]


# -- configuration.md ---------------------------------------------------------------------------------------
def reference_tables(text: str) -> dict[str, dict[str, tuple[str, str]]]:
    """Each `**... (ClassName)**` table of the configuration reference: field -> (default, meaning)."""
    tables = {}
    for section in re.finditer(r"^\*\*[^*\n]*\((\w+)\)\*\*\n(.*?)(?=^\*\*|\Z)", text, flags=re.S | re.M):
        rows = {}
        for line in section.group(2).splitlines():
            row = re.match(r"\| `(\w+)` \| (.*?) \| (.*) \|$", line)
            if row:
                rows[row.group(1)] = (row.group(2), row.group(3))
        tables[section.group(1)] = rows
    return tables


def shown_default(field) -> str | None:
    """The default as the reference writes it; None for composite defaults the table describes in words."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, str):
        return f"`{default}`" if default else '`""`'
    if isinstance(default, int | float):
        return str(default)
    if isinstance(default, list) and all(isinstance(item, str | int) for item in default):
        return json.dumps(default)
    return None


@pytest.mark.parametrize("config_class", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_config_field_is_documented_with_its_default_and_description(config_class):
    rows = reference_tables(CONFIGURATION).get(config_class.__name__)
    assert rows is not None, f"docs/configuration.md has no table headed (…{config_class.__name__})"
    assert set(rows) == set(config_class.model_fields), (
        f"{config_class.__name__}: fields missing from docs/configuration.md {set(config_class.model_fields) - set(rows)}, "
        f"or documented but gone {set(rows) - set(config_class.model_fields)}"
    )
    for name, field in config_class.model_fields.items():
        default, meaning = rows[name]
        assert field.description, f"{config_class.__name__}.{name} has no description for the launchpad"
        expected = shown_default(field)
        assert expected is None or default == expected, (
            f"{config_class.__name__}.{name}: the docs say {default}, the code {expected}"
        )
        assert meaning.replace("`", "").startswith(field.description.replace("`", "")), (
            f"{config_class.__name__}.{name}: the docs' meaning does not start with the field's description {field.description!r}"
        )


@pytest.mark.parametrize("script", ["roles.sql", "retention-grants.sql"])
def test_the_deployment_docs_role_sql_is_the_file_the_tests_run(script):
    """retention_pipeline_tests/roles.py runs these files through psql; docs/deployment.md shows them verbatim."""
    from retention_pipeline_tests.roles import DEPLOY

    text = (DEPLOY / script).read_text()
    assert f"```sql\n{text}```" in DEPLOYMENT, f"docs/deployment.md does not show deploy/{script} as written"
    assert f"-f deploy/{script}" in text


# -- commands ---------------------------------------------------------------------------------------------------
def shell_blocks(path: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def commands(block: str) -> list[str]:
    """A block's commands, trailing comments and blank lines dropped."""
    found = []
    for line in block.splitlines():
        command = re.split(r"\s{2,}#", line)[0].strip()
        if command and not command.startswith("#"):
            found.append(command)
    return found


def documented_commands() -> set[str]:
    """Every command of every bash block of the README and docs/, except the production section's blocks,
    which the production rehearsal runs as written (rehearsal.production_blocks finds each of them)."""
    from retention_pipeline_tests import rehearsal

    production = {command for block in rehearsal.production_blocks().values() for command in commands(block)}
    return {command for path in [README, *DOCS] for block in shell_blocks(path) for command in commands(block)} - production


# Run here, exactly as written, with pytest's own interpreter for `uv run` (the suite already runs inside it)
# and --collect-only, so the selection is checked without running the tests twice.
PYTEST_SELECTIONS = {
    'uv run pytest -m "not slow"': lambda ids: (
        any("test_docs.py::" in i for i in ids) and not any(i.startswith(SLOW_TEST) for i in ids)
    ),
    "uv run pytest retention_pipeline_tests/test_docs.py": lambda ids: (
        ids and all(i.startswith("retention_pipeline_tests/test_docs.py::") for i in ids)
    ),
    "uv run pytest retention_pipeline_tests/test_reliability_*.py": lambda ids: (
        ids and all("/test_reliability_" in i for i in ids)
    ),
    # docs/testing.md
    'time uv run pytest -m "not slow" --durations=40 --basetemp=$PWD/.retention/pt': lambda ids: (
        any("test_docs.py::" in i for i in ids) and not any(i.startswith(SLOW_TEST) for i in ids)
    ),
    "uv run pytest retention_pipeline_tests/test_emails.py -x": lambda ids: (
        ids and all(i.startswith("retention_pipeline_tests/test_emails.py::") for i in ids)
    ),
    "uv run pytest -n 0 retention_pipeline_tests/test_emails.py": lambda ids: (
        ids and all(i.startswith("retention_pipeline_tests/test_emails.py::") for i in ids)
    ),
}
SLOW_TEST = "retention_pipeline_tests/test_production_rehearsal.py::test_production_rehearsal"
RUN_HERE = {
    "uv run retention-pipeline benchmark --help": "test_the_documented_help_command_runs",
    "uv run python -m retention_pipeline_tests.faults render": "test_the_reliability_render_command_fills_the_figures_block",
}
# Run by another test (or CI), with the stand-ins that test names: (file, the text in it that runs the command).
RUN_ELSEWHERE = {
    "uv run retention-pipeline demo": ("retention_pipeline_tests/test_cli.py", 'cli_command("demo")'),
    "uv run pytest": (".ci/run", "\nuv run pytest\n"),
    "uv run retention-pipeline db current": ("retention_pipeline_tests/test_schema_migrations.py", '"db", "current"'),
    # Into the package's versions/ folder, removed again by the test.
    'uv run retention-pipeline db revision -m "campaign tables"': (
        "retention_pipeline_tests/test_schema_migrations.py",
        'cli_command("db", "revision", "-m", "campaign tables")',
    ),
    # On a free port instead of 3000.
    "uv run retention-pipeline dev": ("retention_pipeline_tests/ui_support.py", 'cli_command("dev", "--port"'),
    # At a tiny scale: a 15- or 75-minute run has no place in the suite.
    "uv run python -m benchmarks.run": ("retention_pipeline_tests/test_benchmark_smoke.py", '"-m",\n        "benchmarks.run",'),
    "uv run python -m benchmarks.run --scales 10000,100000,1000000 --budget-minutes 45": (
        "retention_pipeline_tests/test_benchmark_smoke.py",
        '"--budget-minutes"',
    ),
}


def test_every_documented_command_is_run_by_a_test():
    covered = set(PYTEST_SELECTIONS) | set(RUN_HERE) | set(RUN_ELSEWHERE)
    documented = documented_commands()
    assert documented <= covered, f"commands the docs show that no test runs: {sorted(documented - covered)}"
    assert covered <= documented, f"commands no longer in the docs: {sorted(covered - documented)}"
    for command, (path, evidence) in RUN_ELSEWHERE.items():
        assert evidence in (PROJECT_ROOT / path).read_text(), f"{path} no longer runs {command!r}"
    this_file = Path(__file__).read_text()
    for test_name in RUN_HERE.values():
        assert f"def {test_name}(" in this_file


def without_uv_run(command: str) -> list[str]:
    argv = shlex.split(command)
    assert argv[:2] == ["uv", "run"], command
    return argv[2:]


@pytest.mark.parametrize("command", PYTEST_SELECTIONS)
def test_the_documented_pytest_selections_select_what_they_say(command):
    # As written, through bash (which expands the glob), with this interpreter's pytest for `uv run pytest`.
    shell = (
        command.replace("uv run pytest", f"{shlex.quote(sys.executable)} -m pytest", 1) + " --collect-only -q -p no:cacheprovider"
    )
    collected = subprocess.run(["bash", "-c", shell], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert PYTEST_SELECTIONS[command](ids), f"{command} collected {len(ids)} tests: {ids[:5]} ..."


def test_the_documented_help_command_runs():
    from retention_pipeline_tests.ui_support import cli_command

    completed = subprocess.run(
        cli_command(*without_uv_run("uv run retention-pipeline benchmark --help")[1:]),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "--scales" in completed.stdout and "--budget-minutes" in completed.stdout


def test_the_reliability_render_command_fills_the_figures_block(tmp_path):
    """The command as written; the summary it reads and the page it writes are copies (RELIABILITY_SUMMARY,
    RELIABILITY_REPORT), so the committed figures stay."""
    report = tmp_path / "reliability.md"
    original = (PROJECT_ROOT / "docs" / "reliability.md").read_text()
    report.write_text(original)
    summary = tmp_path / "reliability.json"
    summary.write_text(json.dumps({"crash_trials": {}}))
    argv = without_uv_run("uv run python -m retention_pipeline_tests.faults render")
    completed = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"RELIABILITY_SUMMARY": str(summary), "RELIABILITY_REPORT": str(report)},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    rendered = report.read_text()
    assert "| exactly once across a SIGKILL mid-send | 0 trials |" in rendered
    start, end = "<!-- reliability-figures:start -->", "<!-- reliability-figures:end -->"
    assert rendered.split(start)[0] == original.split(start)[0] and rendered.split(end)[1] == original.split(end)[1]


# -- links and length -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_leads_to_a_file(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_the_readme_is_at_most_300_lines():
    assert len(README.read_text().splitlines()) <= 300
