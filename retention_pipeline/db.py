"""Database plumbing: identifier validation, URL normalisation, engines with a statement timeout."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from retention_pipeline.errors import SettingsError

# Letters, digits and underscores, at most 63 characters (PostgreSQL's limit). Names are always
# quoted, so mixed case means exactly that case. Anything else (spaces, quotes, semicolons, `$`, which
# would end a `$fn$`-quoted function body) is rejected rather than escaped: a configured name that
# needs escaping is far more likely an injection attempt or a typo than a real table.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class InvalidIdentifierError(ValueError):
    """A configured table, column or schema name is not a plain SQL identifier."""


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return `name` if it is a plain identifier, optionally schema-qualified (`app.events`)."""
    parts = name.split(".") if isinstance(name, str) else [name]
    if not isinstance(name, str) or len(parts) > 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise InvalidIdentifierError(
            f"{what} {name!r} is not a plain SQL identifier: use letters, digits and underscores "
            "(optionally 'schema.table'), starting with a letter or underscore, at most 63 characters; "
            "the name is matched exactly, case included."
        )
    return name


def quote_identifier(name: str) -> str:
    """Quote a validated identifier for SQL, keeping a schema qualifier as its own quoted part."""
    validate_identifier(name)
    return ".".join(f'"{part}"' for part in name.split("."))


def sqlalchemy_url(url: str) -> str:
    """Pin a bare postgresql:// URL to psycopg2: SQLAlchemy 2.1 maps the bare scheme to psycopg v3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL with its password hidden, for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)


def check_reachable(setting: str, url: str, timeout_seconds: int = 10) -> None:
    """Connect once, so an unreachable server is reported as the setting to fix, not as a failed run."""
    engine = sa.create_engine(sqlalchemy_url(url), connect_args={"connect_timeout": timeout_seconds})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
        raise SettingsError(
            f"{setting}: cannot connect to {redact_url(url)} ({reason}); check host, port, user, password and "
            "database name, and that the server accepts connections from this machine."
        ) from None
    finally:
        engine.dispose()


def create_db_engine(url: str, statement_timeout_seconds: int = 600, application_name: str = "retention_pipeline") -> Engine:
    """An engine whose every session runs under a statement timeout, so no query can hang a run forever."""
    options = (
        f"-c statement_timeout={int(statement_timeout_seconds * 1000)} -c lock_timeout={int(statement_timeout_seconds * 1000)}"
    )
    return sa.create_engine(
        sqlalchemy_url(url),
        connect_args={"options": options, "application_name": application_name},
        pool_pre_ping=True,
    )


def run_script(conn, script: str) -> None:
    """Run parameterless DDL on the connection's open transaction, bypassing bind-parameter parsing
    (PL/pgSQL bodies contain `%` and `:` that drivers would take for placeholders)."""
    with conn.connection.cursor() as cursor:
        cursor.execute(script)
