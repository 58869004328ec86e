"""Lifecycle campaigns read the kept Stripe snapshots: each day's product name and trial end (issue 18).

Days kept before this revision have neither (NULL): their plan reads as the plan's nickname, and no trial ends
on them. Frozen: add a new revision instead.

Revision ID: 0004
Revises: 0003
"""

from retention_pipeline.migrations import run_ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_ddl(BILLING)


def downgrade() -> None:
    raise NotImplementedError("restore the backup taken before `retention-pipeline db upgrade`")


BILLING = """
ALTER TABLE {rs}.stripe_subscription_history ADD COLUMN IF NOT EXISTS product_name text;
ALTER TABLE {rs}.stripe_subscription_history ADD COLUMN IF NOT EXISTS trial_end timestamptz;
"""
