"""Alembic revisions of the project schema (`versions/`), run in code by `retention_pipeline.schema`.

A revision is plain PostgreSQL with `{rs}` where the schema goes: the schema's name is the deployment's
(`AppDatabase.retention_schema`), so no revision names it.
"""

from __future__ import annotations

from alembic import op

from retention_pipeline.db import quote_identifier, run_script


def run_ddl(template: str) -> None:
    """Run a revision's SQL in the upgrade's transaction, `{rs}` filled with the configured schema."""
    schema = op.get_context().config.attributes["schema"]
    run_script(op.get_bind(), template.replace("{rs}", quote_identifier(schema)))
