"""`retention-pipeline db upgrade|current|revision`: the project schema's revisions (docs/upgrading.md)."""

from __future__ import annotations

import contextlib
import os

import click

from retention_pipeline.cli import environment, main


@main.group()
def db() -> None:
    """Upgrade the project's schema in the app database to this release, or show its revision."""


@contextlib.contextmanager
def _deployed_database():
    """The app database as the code location sees it: RETENTION_DATABASE_URL (no local harness needed, so a
    production install of the wheel upgrades its schema) or the embedded default; the schema and source
    names definitions.py sets."""
    from retention_pipeline.db import check_reachable
    from retention_pipeline.definitions import deployment
    from retention_pipeline.resources import AppDatabase

    def deployed(url: str) -> AppDatabase:
        return AppDatabase(url=url, retention_schema=deployment.retention_schema, source=deployment.source)

    url = os.environ.get("RETENTION_DATABASE_URL")
    if url:
        check_reachable("RETENTION_DATABASE_URL", url)
        yield deployed(url)
        return
    with environment() as env:
        yield deployed(env.app_database_url)


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema revisions the database lacks, in one transaction (creates the schema on a new
    database). Back the database up first: revisions are not undone."""
    from retention_pipeline.schema import install_schema, installed_revision_label

    with _deployed_database() as app_db:
        before = installed_revision_label(app_db)
        _, after = install_schema(app_db)
    schema = app_db.retention_schema
    if before is None:
        click.echo(f"Created the {schema} schema at revision {after} (head).")
    elif before == f"revision {after}":
        click.echo(f"The {schema} schema is already at revision {after} (head); nothing to do.")
    else:
        click.echo(f"Upgraded the {schema} schema from {before} to revision {after} (head).")


@db.command("current")
def db_current() -> None:
    """Show the schema's revision, and whether this release needs `db upgrade`."""
    from retention_pipeline.schema import describe_schema

    with _deployed_database() as app_db:
        click.echo(f"The {app_db.retention_schema} schema is {describe_schema(app_db)}.")


@db.command("revision")
@click.option("-m", "--message", required=True, help='What the revision changes, e.g. "campaign tables".')
def db_revision(message: str) -> None:
    """Write a new, empty revision file after the head, for a developer to fill (docs/upgrading.md)."""
    from retention_pipeline.schema import new_revision

    path = new_revision(message)
    click.echo(f"Wrote {path}: put the change in its upgrade(), and the same change in the domain's tables.py.")
