"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from retention_pipeline.migrations import run_ddl

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PostgreSQL, `{rs}` for the schema. Make the same change to the domain's tables.py (what a fresh
    # install creates); test_schema_migrations fails until both give the same schema.
    run_ddl("""
""")


def downgrade() -> None:
    raise NotImplementedError("restore the backup taken before `retention-pipeline db upgrade`")
