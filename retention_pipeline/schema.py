"""The project's own schema: each domain's tables in dependency order, installed and upgraded by Alembic.

Two paths lead to the same schema (a test compares them object by object):
- a database without the schema gets every domain's `tables.py` as it is now, stamped with the head
  revision (Alembic's "building an up to date database from scratch");
- an existing install runs the revisions of `migrations/versions/` it lacks. One that predates
  migrations (releases 9c71876 .. 1999d15 kept no version) starts from the first revision, whose
  statements find their objects already there.

The source views map the configured (validated, quoted) table and column names onto canonical ones,
so every other query reads `{rs}.source_events` etc. They follow the deployment's configuration, not a
revision, so they are re-created whenever it changes (the schema's comment holds their fingerprint).
Installing is serialised by an advisory lock and happens in one transaction, because several run
workers may start at once.
"""

from __future__ import annotations

import functools
import hashlib
from argparse import Namespace
from importlib.resources import files

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from dagster import Failure
from sqlalchemy.engine import Connection

from retention_pipeline.activity.tables import ACTIVITY_TABLES_DDL
from retention_pipeline.billing.tables import BILLING_TABLES_DDL
from retention_pipeline.db import run_script
from retention_pipeline.outcomes.tables import OUTCOME_TABLES_DDL
from retention_pipeline.outreach.tables import OUTREACH_TABLES_DDL
from retention_pipeline.resources import AppDatabase
from retention_pipeline.segments.tables import SEGMENT_TABLES_DDL

# Arbitrary constant that identifies "schema installation" among advisory locks.
_INSTALL_LOCK_KEY = 7_302_455_118

# Dependency order: outcomes read outreach's ledger, outreach reads segments and billing.
TABLES_DDL = ACTIVITY_TABLES_DDL + SEGMENT_TABLES_DDL + BILLING_TABLES_DDL + OUTREACH_TABLES_DDL + OUTCOME_TABLES_DDL

UPGRADE_COMMAND = "retention-pipeline db upgrade"


class SchemaVersionError(RuntimeError):
    """The schema is not at the revision this code needs; the message says what to run."""


def _source_views_ddl(db: AppDatabase) -> str:
    s = db.source
    return f"""
DROP VIEW IF EXISTS {{rs}}.source_users, {{rs}}.source_events, {{rs}}.source_auth_sessions;
CREATE VIEW {{rs}}.source_users AS
    SELECT {s.q("users_id")}::bigint AS id, {s.q("users_email")}::text AS email, {s.q("users_name")}::text AS name,
           {s.q("users_created_at")}::timestamptz AS created_at,
           {s.q("users_stripe_customer_id")}::text AS stripe_customer_id
    FROM {s.q("users_table")};
CREATE VIEW {{rs}}.source_events AS
    SELECT {s.q("events_id")}::bigint AS id, {s.q("events_user_id")}::bigint AS user_id,
           {s.q("events_event_type")}::text AS event_type, {s.q("events_occurred_at")}::timestamptz AS occurred_at,
           {s.q("events_properties")}::jsonb AS properties
    FROM {s.q("events_table")};
CREATE VIEW {{rs}}.source_auth_sessions AS
    SELECT {s.q("sessions_id")}::bigint AS id, {s.q("sessions_user_id")}::bigint AS user_id,
           {s.q("sessions_started_at")}::timestamptz AS started_at,
           {s.q("sessions_last_seen_at")}::timestamptz AS last_seen_at
    FROM {s.q("sessions_table")};
"""


def _alembic_config(conn: Connection | None = None, schema: str | None = None) -> Config:
    """Alembic's configuration, built here: the revisions ship inside the package, no alembic.ini."""
    # quiet: the commands print their own one line.
    config = Config(cmd_opts=Namespace(quiet=True))
    config.set_main_option("script_location", str(files("retention_pipeline") / "migrations"))
    # Revision files are named by their number and message: 0003_campaign_tables.py.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = conn
    config.attributes["schema"] = schema
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str:
    return _scripts().get_current_head()


def known_revision(revision: str) -> bool:
    return revision in {script.revision for script in _scripts().walk_revisions()}


def schema_revision(db: AppDatabase) -> tuple[bool, str | None]:
    """(the schema exists, its revision); None for no version table (not installed, or from before migrations)."""
    with db.engine().connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regnamespace(:name) IS NOT NULL"), {"name": db.schema_sql}).scalar_one()
        return exists, _current_revision(conn, db) if exists else None


def _has_version_table(conn: Connection, db: AppDatabase) -> bool:
    return conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": db.render("{rs}.alembic_version")}).scalar_one()


def install_schema(db: AppDatabase, revision: str = "head") -> tuple[str | None, str]:
    """Create or upgrade the project schema to `revision`, then (re)create the source views if the
    configuration changed them. Returns (revision before, revision after); idempotent.

    Everything happens in one transaction under the install lock: a failed upgrade leaves the schema
    as it was, and a second worker waits, then finds the work done.
    """
    _refuse_unknown_revision(db, schema_revision(db)[1])
    with db.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INSTALL_LOCK_KEY})
        conn.execute(sa.text(db.render("CREATE SCHEMA IF NOT EXISTS {rs}")))
        before = _current_revision(conn, db)
        config = _alembic_config(conn, db.retention_schema)
        if before is None and revision == "head" and not _has_tables(conn, db):
            run_script(conn, db.render(TABLES_DDL))
            command.stamp(config, "head")
        else:
            command.upgrade(config, revision)
        after = _current_revision(conn, db)
        _install_source_views(conn, db)
    return before, after


def _current_revision(conn: Connection, db: AppDatabase) -> str | None:
    if not _has_version_table(conn, db):
        return None
    return conn.execute(sa.text(db.render("SELECT version_num FROM {rs}.alembic_version"))).scalar()


def _has_tables(conn: Connection, db: AppDatabase) -> bool:
    return conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace(:name) AND relkind = 'r')"),
        {"name": db.schema_sql},
    ).scalar_one()


def _refuse_unknown_revision(db: AppDatabase, revision: str | None) -> None:
    if revision is not None and not known_revision(revision):
        raise SchemaVersionError(
            f"the {db.retention_schema} schema is at revision {revision}, which this release of retention-pipeline "
            f"does not know (a newer release upgraded it; this one goes up to {head_revision()}): run that release "
            "or a newer one; downgrades are not supported."
        )


def _views_fingerprint(db: AppDatabase) -> str:
    return "retention_pipeline " + hashlib.sha256(db.render(_source_views_ddl(db)).encode()).hexdigest()[:16]


def _stored_fingerprint(conn: Connection, db: AppDatabase) -> str | None:
    return conn.execute(
        sa.text("SELECT obj_description(to_regnamespace(:name), 'pg_namespace')"), {"name": db.schema_sql}
    ).scalar()


def _install_source_views(conn: Connection, db: AppDatabase) -> None:
    """Re-creating views takes an exclusive lock that would queue behind any long-running backfill, so
    unchanged views are left alone."""
    fingerprint = _views_fingerprint(db)
    if _stored_fingerprint(conn, db) != fingerprint:
        run_script(conn, db.render(_source_views_ddl(db)))
        conn.execute(sa.text(db.render("COMMENT ON SCHEMA {rs} IS ") + "'" + fingerprint + "'"))


def require_current_schema(db: AppDatabase) -> None:
    """What every asset runs first: install a missing schema (a new deployment: nothing to migrate, nothing
    to lose), refuse one at another revision (upgrading is the operator's step: `retention-pipeline db
    upgrade`), re-create the source views if the configuration changed them. A refusal is not retried."""
    try:
        _require_current_schema(db)
    except SchemaVersionError as refused:
        raise Failure(description=str(refused), allow_retries=False) from None


def _require_current_schema(db: AppDatabase) -> None:
    exists, revision = schema_revision(db)
    _refuse_unknown_revision(db, revision)
    if revision == head_revision():
        with db.engine().connect() as conn:
            if _stored_fingerprint(conn, db) == _views_fingerprint(db):
                return
    elif exists and (revision is not None or _schema_has_tables(db)):
        found = f"at revision {revision}" if revision is not None else "from before schema versions (release 9c71876 .. 1999d15)"
        raise SchemaVersionError(
            f"the {db.retention_schema} schema is {found}, and this code needs revision {head_revision()}: "
            f"run `{UPGRADE_COMMAND}` (after a backup of the database)."
        )
    install_schema(db)


def _schema_has_tables(db: AppDatabase) -> bool:
    with db.engine().connect() as conn:
        return _has_tables(conn, db)


def installed_revision_label(db: AppDatabase) -> str | None:
    """'revision 0001', or the unversioned schema of an older release; None when nothing is installed."""
    exists, revision = schema_revision(db)
    if revision is not None:
        return f"revision {revision}"
    if exists and _schema_has_tables(db):
        return "the unversioned schema of releases 9c71876 .. 1999d15"
    return None


def describe_schema(db: AppDatabase) -> str:
    """The schema's state in words, for `db current`."""
    label = installed_revision_label(db)
    head = head_revision()
    if label is None:
        return f"not installed yet: `{UPGRADE_COMMAND}` creates it at revision {head}"
    if label == f"revision {head}":
        return f"at revision {head} (head)"
    revision = label.removeprefix("revision ")
    if label.startswith("revision ") and not known_revision(revision):
        return f"at revision {revision}, newer than this release knows (its head is {head})"
    return f"at {label}, behind the head {head}: run `{UPGRADE_COMMAND}`"


def new_revision(message: str) -> str:
    """Write the next revision file (numbered after the head) from the package's template; returns its path."""
    number = f"{int(head_revision()) + 1:04d}"
    script = command.revision(_alembic_config(), message=message, rev_id=number)
    _scripts.cache_clear()
    return script.path
