"""A bad setting or argument, run through the console script as a person runs it: one line on stderr
that names the setting, says what is wrong and what to do; exit code 2; no traceback."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from retention_pipeline import cli
from retention_pipeline.settings import PROJECT_ROOT, STATE_DIR
from retention_pipeline_tests.ui_support import cli_command

CONFIGURATION = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/x"  # nothing listens on port 1: refused at once
WELL_FORMED = "postgresql://retention@db.invalid/app"

# One bad value per variable of the table in docs/configuration.md, with what else the case needs. Secrets are listed
# so the test can check they are never echoed.
BAD_SETTINGS = {
    "RETENTION_DATABASE_URL": ({"RETENTION_DATABASE_URL": "not a url", "DAGSTER_PG_URL": WELL_FORMED}, "not a database URL"),
    "DAGSTER_PG_URL": (
        {"RETENTION_DATABASE_URL": WELL_FORMED, "DAGSTER_PG_URL": "postgresql+psycopg://u@h/dagster"},
        "postgresql+psycopg",
    ),
    "DAGSTER_HOME": ({"DAGSTER_HOME": "relative/dagster_home"}, "absolute"),
    "RETENTION_STATE_DIR": ({"RETENTION_STATE_DIR": str(PROJECT_ROOT / "README.md" / "state")}, "writable"),
    "RETENTION_TIMEZONE": ({"RETENTION_TIMEZONE": "Mars/Olympus"}, "IANA timezone"),
    "RETENTION_PARTITIONS_START": ({"RETENTION_PARTITIONS_START": "2030-13-01"}, "YYYY-MM-DD"),
    "RETENTION_MORNING_CRON": ({"RETENTION_MORNING_CRON": "0 25 * * *"}, "cron expression"),
    "RETENTION_WEEKLY_CRON": ({"RETENTION_WEEKLY_CRON": "every monday"}, "cron expression"),
    "RETENTION_BILLING_CRON": ({"RETENTION_BILLING_CRON": "* * *"}, "cron expression"),
    "RETENTION_NOW": ({"RETENTION_NOW": "yesterday"}, "ISO 8601"),
    "STRIPE_API_KEY": ({"STRIPE_API_KEY": "pk_live_publishable0123"}, "sk_ or rk_"),
    "STRIPE_API_BASE": ({"STRIPE_API_BASE": "localhost:8420"}, "http(s) URL"),
    "RESEND_API_KEY": ({"RESEND_API_KEY": "sk_resend0123456"}, "re_"),
    "RESEND_API_URL": ({"RESEND_API_URL": "api.resend.com"}, "http(s) URL"),
    "RETENTION_UNSUBSCRIBE_SECRET": ({"RETENTION_UNSUBSCRIBE_SECRET": "hunter2"}, "16 characters"),
    "RETENTION_DEBUG": ({"RETENTION_DEBUG": "yes"}, "0 or 1"),
    "RETENTION_CONFIG": (
        {"RETENTION_CONFIG": str(PROJECT_ROOT / "no-such-retention.yaml")},
        "no-such-retention.yaml: cannot read",
    ),
    "RETENTION_CAMPAIGNS_DIR": ({"RETENTION_CAMPAIGNS_DIR": str(PROJECT_ROOT / "no-such-campaigns")}, "is not a directory"),
    "RETENTION_UNSUBSCRIBE_OLD_SECRETS": (
        {"RETENTION_UNSUBSCRIBE_OLD_SECRETS": "retired-key-0123456789,hunter2"},
        "entry 2 is shorter than 16 characters",
    ),
    "SMTP_HOST": ({"SMTP_HOST": "smtp.example.com:587"}, "not a host name"),
    "SMTP_PORT": ({"SMTP_PORT": "70000"}, "1-65535"),
    "SMTP_SECURITY": ({"SMTP_SECURITY": "tls"}, "starttls, ssl or none"),
    "SMTP_USERNAME": ({"SMTP_USERNAME": "AKIAEXAMPLESMTPUSER"}, "SMTP_PASSWORD is not"),
    "SMTP_PASSWORD": ({"SMTP_PASSWORD": "smtp-password-0123"}, "SMTP_USERNAME is not"),
    "SMTP_TLS_CA_FILE": ({"SMTP_TLS_CA_FILE": str(PROJECT_ROOT / "no-such-ca.pem")}, "readable file"),
}
SECRETS = (
    "STRIPE_API_KEY",
    "RESEND_API_KEY",
    "RETENTION_UNSUBSCRIBE_SECRET",
    "RETENTION_UNSUBSCRIBE_OLD_SECRETS",
    "SMTP_USERNAME",
    "SMTP_PASSWORD",
)

# Other real misconfigurations of the same variables, beyond the one case each above.
MORE_BAD_SETTINGS = [
    ({"RETENTION_UNSUBSCRIBE_OLD_SECRETS": "retired-key-0123456789,"}, "RETENTION_UNSUBSCRIBE_OLD_SECRETS", "entry 2 is empty"),
    ({"SMTP_HOST": " smtp.example.com"}, "SMTP_HOST", "not a host name"),
    ({"SMTP_PORT": "smtp"}, "SMTP_PORT", "1-65535"),
    ({"SMTP_TLS_CA_FILE": str(PROJECT_ROOT / "README.md")}, "SMTP_TLS_CA_FILE", "no PEM certificate"),
]

BAD_ARGUMENTS = [
    (["dev", "--port", "99999"], "--port"),
    (["dev", "--port", "0"], "--port"),
    (["simulate", "--days", "0"], "--days"),
    (["simulate", "--days", "-3"], "--days"),
    (["simulate", "--users", "-5"], "--users"),
    (["simulate", "--uplift", "1.5"], "--uplift"),
    (["simulate", "--uplift", "-1.5"], "--uplift"),
    (["simulate", "--uplift", "0.9"], "--uplift"),  # 0.2 + 0.9: a return rate above 1
    (["simulate", "--base-return", "0"], "--base-return"),
    (["simulate", "--base-return", "1.2"], "--base-return"),
    (["demo", "--users", "0"], "--users"),
    (["trigger", "instal"], "instal"),
]


def documented_variables() -> set[str]:
    section = CONFIGURATION.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}


@pytest.fixture
def state_dir():
    path = STATE_DIR / f"test-settings-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_cli(args: list[str], overrides: dict, state_dir) -> subprocess.CompletedProcess:
    documented = documented_variables()
    env = {k: v for k, v in os.environ.items() if k not in documented}
    env = env | {"RETENTION_STATE_DIR": str(state_dir)} | overrides
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120)


def assert_one_line(completed: subprocess.CompletedProcess, *must_contain: str) -> str:
    assert completed.returncode == 2, (completed.returncode, completed.stderr[-3000:])
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr[-3000:]
    for text in must_contain:
        assert text in lines[0], lines[0]
    return lines[0]


def test_every_documented_variable_has_a_bad_value_case():
    assert documented_variables() == set(BAD_SETTINGS), (
        "a variable of docs/configuration.md's table without a case here, or the reverse"
    )


def test_the_cli_help_names_only_documented_variables():
    in_help = set(re.findall(r"\b((?:RETENTION|DAGSTER|STRIPE|RESEND)_[A-Z_]+)\b", cli.__doc__))
    assert in_help <= documented_variables(), in_help - documented_variables()


@pytest.mark.parametrize("variable", BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_it(variable, state_dir):
    overrides, reason = BAD_SETTINGS[variable]
    line = assert_one_line(run_cli(["trigger", "install"], overrides, state_dir), variable, reason)
    if variable in SECRETS:
        assert not any(secret in line for secret in overrides[variable].split(",")), "a secret was echoed"


@pytest.mark.parametrize(("overrides", "variable", "reason"), MORE_BAD_SETTINGS, ids=[str(o) for o, _, _ in MORE_BAD_SETTINGS])
def test_another_bad_value_is_one_line_naming_it(overrides, variable, reason, state_dir):
    line = assert_one_line(run_cli(["trigger", "install"], overrides, state_dir), variable, reason)
    assert "retired-key-0123456789" not in line, "a secret was echoed"


def thresholds_file_with_an_unknown_key(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "retention.yaml"
    path.write_text(
        (PROJECT_ROOT / "retention.yaml").read_text().replace("dormant_users:\n", "dormant_users:\n  dormant_afterdays: 7\n")
    )
    return str(path)


def test_a_thresholds_file_with_an_unknown_key_is_one_line_before_anything_starts(state_dir):
    path = thresholds_file_with_an_unknown_key(state_dir)
    line = assert_one_line(
        run_cli(["trigger", "install"], {"RETENTION_CONFIG": path}, state_dir),
        "RETENTION_CONFIG",
        f"{path}: unknown key(s) ['dormant_afterdays'] in dormant_users",
    )
    assert line.endswith("fix the thresholds file, or point RETENTION_CONFIG at a valid one (unset = retention.yaml).")


def test_a_thresholds_file_error_while_loading_the_definitions_is_one_line(state_dir):
    """As in `demo`, which imports the definitions in-process: here even without the up-front check."""
    path = thresholds_file_with_an_unknown_key(state_dir)
    script = (
        "import retention_pipeline.cli as cli\n"
        "cli.check_environment = lambda: None\n"
        "@cli.main.command('load')\n"
        "def load():\n"
        "    import retention_pipeline.definitions\n"
        "from retention_pipeline.entry import main\n"
        "main(['load'])\n"
    )
    env = os.environ | {"RETENTION_STATE_DIR": str(state_dir), "RETENTION_CONFIG": path}
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert_one_line(completed, "RETENTION_CONFIG", f"{path}: unknown key(s) ['dormant_afterdays'] in dormant_users")


def test_debug_shows_the_traceback(state_dir):
    completed = run_cli(["trigger", "install"], {"RETENTION_NOW": "yesterday", "RETENTION_DEBUG": "1"}, state_dir)
    assert completed.returncode == 2
    assert "Traceback" in completed.stderr and completed.stderr.strip().splitlines()[-1].startswith("error: RETENTION_NOW")


def test_an_unreachable_app_database_is_one_line(state_dir):
    completed = run_cli(["trigger", "install"], {"RETENTION_DATABASE_URL": UNREACHABLE, "DAGSTER_PG_URL": UNREACHABLE}, state_dir)
    assert_one_line(completed, "RETENTION_DATABASE_URL", "cannot connect", "127.0.0.1")


def test_an_unreachable_dagster_database_is_one_line(state_dir, pg_server):
    reachable = f"postgresql://postgres@/postgres?host={pg_server.status.socket_dir}"
    completed = run_cli(
        ["dagster", "instance", "info"], {"RETENTION_DATABASE_URL": reachable, "DAGSTER_PG_URL": UNREACHABLE}, state_dir
    )
    assert_one_line(completed, "DAGSTER_PG_URL", "cannot connect")


def test_a_password_in_an_unreachable_url_is_not_shown(state_dir):
    url = "postgresql://nobody:s3cretpw@127.0.0.1:1/x"
    line = assert_one_line(run_cli(["trigger", "install"], {"RETENTION_DATABASE_URL": url, "DAGSTER_PG_URL": url}, state_dir))
    assert "s3cretpw" not in line


def test_dagster_pg_url_is_required_with_an_app_database(state_dir):
    assert_one_line(run_cli(["trigger", "install"], {"RETENTION_DATABASE_URL": WELL_FORMED}, state_dir), "DAGSTER_PG_URL")


@pytest.mark.parametrize(("args", "option"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_naming_it(args, option, state_dir):
    assert_one_line(run_cli(args, {}, state_dir), option)


def test_dev_refuses_a_port_in_use(state_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line(run_cli(["dev", "--port", str(port)], {}, state_dir), "--port", "in use")


def test_an_unexpected_error_is_one_line_pointing_at_retention_debug(state_dir):
    script = (
        "import click, retention_pipeline.cli as cli\n"
        "@cli.main.command('explode')\n"
        "def explode():\n"
        "    raise KeyError('no such thing')\n"
        "from retention_pipeline.entry import main\n"
        "main(['explode'])\n"
    )
    env = os.environ | {"RETENTION_STATE_DIR": str(state_dir)}
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [
        "error: unexpected KeyError: 'no such thing'; re-run with RETENTION_DEBUG=1 for the traceback, and report it "
        "if it persists."
    ]
