"""Project-wide settings, read from the environment once so every module agrees on them.

Every variable of the README's "Environment variables" table is checked here. A bad one raises
SettingsError whose message is one line: the variable, what is wrong with it, what to do. The values
every module needs at import (timezone, first partition) are checked at import;
`check_environment()` checks the rest before the CLI starts anything. The console script turns a
SettingsError into that line and exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from retention_pipeline.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# SQLAlchemy schemes that reach PostgreSQL through psycopg2, the driver installed; db.sqlalchemy_url
# and retention_pipeline.dagster_storage pin the bare ones to it.
DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")
DATABASE_URL_EXAMPLE = "postgresql://user:password@host:5432/dbname"

# Below this an HMAC key can be guessed; `openssl rand -base64 32` gives 44 characters.
MIN_SECRET_LENGTH = 16


def _env(name: str) -> str | None:
    """The variable's value; set but empty counts as unset, as everywhere in the project."""
    return os.environ.get(name) or None


def _timezone_from_env() -> str:
    name = os.environ.get("RETENTION_TIMEZONE", "UTC")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SettingsError(
            f"RETENTION_TIMEZONE={name!r} is not a known IANA timezone; use a name like 'UTC' or 'Europe/Berlin'."
        ) from exc
    return name


def _partitions_start_from_env() -> str:
    value = os.environ.get("RETENTION_PARTITIONS_START", "2025-01-01")
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError(value)
        date.fromisoformat(value)
    except ValueError as exc:
        raise SettingsError(
            f"RETENTION_PARTITIONS_START={value!r} is not a calendar date YYYY-MM-DD; "
            "set the first day to compute, e.g. 2025-01-01."
        ) from exc
    return value


def _check_state_dir(path: Path) -> None:
    """Only the CLI writes there; a code server on a read-only image never does, so this is not an import check."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        what = (
            "is not a writable directory" if existing == path else f"cannot be created ({existing} is not a writable directory)"
        )
        raise SettingsError(
            f"RETENTION_STATE_DIR={str(path)!r} {what}; point it at a writable folder, or unset it for .retention/."
        )


# One timezone for every partition, schedule and "day" the project computes.
PROJECT_TIMEZONE: str = _timezone_from_env()

# First daily partition; weekly partitions start on the first Monday on or after it.
PARTITIONS_START_DATE: str = _partitions_start_from_env()

# Everything local and git-ignored: embedded PostgreSQL data, DAGSTER_HOME, the email outbox.
STATE_DIR: Path = Path(_env("RETENTION_STATE_DIR") or PROJECT_ROOT / ".retention").resolve()

# The schedules' ticks, in PROJECT_TIMEZONE (checked by cron_from_env, which needs Dagster's parser).
CRON_DEFAULTS = {
    "RETENTION_MORNING_CRON": "0 9 * * *",  # the daily run
    "RETENTION_BILLING_CRON": "30 8 * * *",  # the Stripe snapshot, before the daily run reads it
    "RETENTION_WEEKLY_CRON": "0 10 * * 1",  # Monday's segments, after Sunday's snapshot exists
}


def cron_from_env(name: str) -> str:
    """A schedule's cron string, checked with the parser Dagster schedules it with."""
    from dagster._utils.schedules import is_valid_cron_string

    value = _env(name) or CRON_DEFAULTS[name]
    if not is_valid_cron_string(value):
        raise SettingsError(
            f"{name}={value!r} is not a cron expression Dagster accepts; use five fields "
            f"(minute hour day-of-month month day-of-week), e.g. {CRON_DEFAULTS[name]!r}."
        )
    return value


def parse_now(value: str) -> datetime:
    """RETENTION_NOW as an aware datetime (UTC when it names no offset)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise SettingsError(
            f"RETENTION_NOW={value!r} is not an ISO 8601 time; use e.g. 2026-06-17T08:00:00+00:00, "
            "or unset it for the real clock."
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def database_url_from_env(name: str) -> str | None:
    """A PostgreSQL URL from the environment, checked for form only (db.check_reachable connects)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    value = _env(name)
    if value is None:
        return None
    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as exc:
        # The value is not echoed: it may hold a password.
        raise SettingsError(f"{name} is not a database URL; use the form {DATABASE_URL_EXAMPLE}.") from exc
    if url.drivername not in DATABASE_SCHEMES:
        raise SettingsError(
            f"{name} uses the scheme {url.drivername!r}; use postgresql:// or postgresql+psycopg2:// "
            f"(psycopg2 is the installed driver), e.g. {DATABASE_URL_EXAMPLE}."
        )
    return value


def _dagster_home_from_env() -> None:
    value = _env("DAGSTER_HOME")
    if value is None:
        return
    home = Path(value)
    if not home.is_absolute():
        raise SettingsError(f"DAGSTER_HOME={value!r} is not an absolute path; Dagster needs one, e.g. {Path(value).resolve()}.")
    if not (home / "dagster.yaml").is_file():
        raise SettingsError(
            f"DAGSTER_HOME={value!r} has no dagster.yaml; copy the project's dagster.yaml there, or unset DAGSTER_HOME."
        )


def _http_url_from_env(name: str, what: str) -> None:
    value = _env(name)
    if value is None:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}={value!r} is not an http(s) URL; set the base URL of {what}, or unset it.")


def _secret_from_env(name: str, prefixes: tuple[str, ...], what: str) -> None:
    """Shape only, and the value never shows in the message."""
    value = _env(name)
    if value is None:
        return
    if value.strip() != value or not value.startswith(prefixes):
        raise SettingsError(
            f"{name} does not look like {what} (it should start with {' or '.join(prefixes)}, no spaces); "
            "copy it again from the provider's dashboard, or unset it."
        )


def _unsubscribe_secret_from_env() -> None:
    value = _env("RETENTION_UNSUBSCRIBE_SECRET")
    if value is not None and len(value) < MIN_SECRET_LENGTH:
        raise SettingsError(
            f"RETENTION_UNSUBSCRIBE_SECRET is shorter than {MIN_SECRET_LENGTH} characters, too easy to guess; "
            "use e.g. `openssl rand -base64 32` (the Flask app must use the same value)."
        )


def _old_unsubscribe_secrets_from_env() -> None:
    """Each retired key once was RETENTION_UNSUBSCRIBE_SECRET; an empty entry is usually a variable that expanded to nothing."""
    value = _env("RETENTION_UNSUBSCRIBE_OLD_SECRETS")
    if value is None:
        return
    for position, secret in enumerate(value.split(","), start=1):
        if not secret.strip():
            problem = "is empty (a stray comma, or a variable in the list that is unset)"
        elif len(secret.strip()) < MIN_SECRET_LENGTH:
            problem = f"is shorter than {MIN_SECRET_LENGTH} characters, so it cannot be a retired RETENTION_UNSUBSCRIBE_SECRET"
        else:
            continue
        raise SettingsError(
            f"RETENTION_UNSUBSCRIBE_OLD_SECRETS: entry {position} {problem}; list the retired keys comma-separated, or unset it."
        )


def _thresholds_file_from_env() -> None:
    """Loading the Config classes checks the whole file (RETENTION_CONFIG) as the definitions will; ThresholdsFileError
    is a SettingsError."""
    import retention_pipeline.activity.config  # noqa: F401
    import retention_pipeline.segments.config  # noqa: F401


def _campaigns_from_env() -> None:
    """RETENTION_CAMPAIGNS_DIR (default: the repository's campaigns/): every campaign file there is checked as the
    code location will load it; CampaignFilesError (a SettingsError) lists one line per problem."""
    from retention_pipeline.outreach.campaigns import file_campaigns

    file_campaigns()


def _smtp_from_env() -> None:
    """The SMTP sender's settings (outreach.senders.smtp.smtp_sender_from_env); a password is never shown."""
    host = _env("SMTP_HOST")
    if host is not None and not _is_host(host):
        raise SettingsError(
            f"SMTP_HOST={host!r} is not a host name; set only the relay's name, e.g. email-smtp.eu-west-1.amazonaws.com "
            "(the port goes in SMTP_PORT), or unset it."
        )
    port = _env("SMTP_PORT")
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise SettingsError(f"SMTP_PORT={port!r} is not a port 1-65535; use 587 (starttls) or 465 (ssl), or unset it for 587.")
    security = _env("SMTP_SECURITY")
    if security is not None and security not in ("starttls", "ssl", "none"):
        raise SettingsError(
            f"SMTP_SECURITY={security!r} is not starttls, ssl or none; use starttls for port 587, ssl for 465, "
            "or unset it for starttls."
        )
    if bool(_env("SMTP_USERNAME")) != bool(_env("SMTP_PASSWORD")):
        given, missing = ("SMTP_USERNAME", "SMTP_PASSWORD") if _env("SMTP_USERNAME") else ("SMTP_PASSWORD", "SMTP_USERNAME")
        raise SettingsError(f"{given} is set but {missing} is not; set both for a relay that needs a login, or neither.")
    ca_file = _env("SMTP_TLS_CA_FILE")
    if ca_file is not None:
        _check_ca_file(ca_file)


def _is_host(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?", value) is not None


def _check_ca_file(path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise SettingsError(
            f"SMTP_TLS_CA_FILE={path!r} is not a readable file; point it at the relay's CA bundle (PEM), "
            "or unset it for the system CAs."
        )
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise SettingsError(
            f"SMTP_TLS_CA_FILE={path!r} holds no PEM certificate ({exc.reason}); point it at the relay's "
            "CA bundle, or unset it for the system CAs."
        ) from exc


def _flag_from_env(name: str) -> None:
    value = _env(name)
    if value is not None and value not in ("0", "1"):
        raise SettingsError(f"{name}={value!r} is not 0 or 1; set {name}=1 to turn it on, or unset it.")


def check_environment() -> None:
    """Check every variable the README documents; the first bad one raises SettingsError."""
    _flag_from_env("RETENTION_DEBUG")
    _check_state_dir(STATE_DIR)
    app_url = database_url_from_env("RETENTION_DATABASE_URL")
    dagster_url = database_url_from_env("DAGSTER_PG_URL")
    if app_url and not dagster_url:
        raise SettingsError(
            "RETENTION_DATABASE_URL is set but DAGSTER_PG_URL is not. Dagster keeps its run history in its own "
            "PostgreSQL database: create one (e.g. `createdb dagster`) and set DAGSTER_PG_URL to its URL."
        )
    _dagster_home_from_env()
    for name in CRON_DEFAULTS:
        if _env(name):
            cron_from_env(name)
    if _env("RETENTION_NOW"):
        parse_now(os.environ["RETENTION_NOW"])
    _secret_from_env("STRIPE_API_KEY", ("sk_", "rk_"), "a Stripe secret or restricted key")
    _http_url_from_env("STRIPE_API_BASE", "a Stripe-compatible server")
    _secret_from_env("RESEND_API_KEY", ("re_",), "a Resend API key")
    _http_url_from_env("RESEND_API_URL", "the Resend API")
    _unsubscribe_secret_from_env()
    _old_unsubscribe_secrets_from_env()
    _smtp_from_env()
    _thresholds_file_from_env()
    _campaigns_from_env()
