"""The trigger's single-row path appends one queue row instead of two (issue 14: the app's insert cost).

A row marked `single_event` is one event, counted in the 15-minute bucket of its own `first_at`; the bucket
rows (user_id NULL) of multi-row inserts stay as they were. Rows queued before this revision are unmarked
and keep their bucket rows, so they drain as before: the upgrade needs no pause of the app. The cheaper
trigger function arrives with the next `retention-pipeline trigger install`. Adding a column with a
constant default changes only the catalog, but it locks the queue until the upgrade commits: the app's
inserts wait for that moment. Frozen: add a new revision instead.

Revision ID: 0005
Revises: 0004
"""

from retention_pipeline.migrations import run_ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_ddl(ACTIVITY)


def downgrade() -> None:
    raise NotImplementedError("restore the backup taken before `retention-pipeline db upgrade`")


ACTIVITY = """
ALTER TABLE {rs}.activity_queue ADD COLUMN IF NOT EXISTS single_event boolean NOT NULL DEFAULT false;
"""
