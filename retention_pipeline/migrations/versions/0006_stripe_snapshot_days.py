"""Each kept Stripe snapshot's day, also when the account had no subscriptions (issue 18: lifecycle campaigns).

A lifecycle campaign plans nobody on a day whose snapshot was never taken. A snapshot of an account without
subscriptions keeps no history rows, so the history alone could not tell it from a missing one. Days kept
before this revision are read from their history rows. Frozen: add a new revision instead.

Revision ID: 0006
Revises: 0005
"""

from retention_pipeline.migrations import run_ddl

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_ddl(BILLING)


def downgrade() -> None:
    raise NotImplementedError("restore the backup taken before `retention-pipeline db upgrade`")


BILLING = """
CREATE TABLE IF NOT EXISTS {rs}.stripe_snapshot_days (
    snapshot_date  date PRIMARY KEY,
    subscriptions  bigint NOT NULL,
    snapshot_at    timestamptz NOT NULL
);
"""
