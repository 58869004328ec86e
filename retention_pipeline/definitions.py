"""The code location: every asset, check, job, schedule and resource of the retention loop."""

import os

from dagster import Definitions, EnvVar

from retention_pipeline.activity.assets import daily_activity_snapshots
from retention_pipeline.billing.assets import stripe_subscriptions
from retention_pipeline.billing.resource import StripeResource
from retention_pipeline.jobs import (
    billing_snapshot_job,
    billing_snapshot_schedule,
    daily_morning_schedule,
    daily_retention_job,
    weekly_segments_job,
    weekly_segments_schedule,
)
from retention_pipeline.outcomes.assets import campaign_performance, reengagement_outcomes
from retention_pipeline.outreach.assets import reengagement_emails
from retention_pipeline.outreach.campaigns import file_campaigns
from retention_pipeline.outreach.checks import unmapped_event_types_check
from retention_pipeline.outreach.links import UnsubscribeLinks
from retention_pipeline.outreach.senders import EmailSender, OutboxSender, ResendSender
from retention_pipeline.outreach.senders.smtp import smtp_sender_from_env
from retention_pipeline.resources import AppDatabase, deployed_app_db
from retention_pipeline.segments.assets import dormant_users, weekly_engagement_segments
from retention_pipeline.settings import STATE_DIR

# Where the pipeline reads and writes is the deployment's choice, made here and in the environment; a
# run may change only the statement timeout (deployed_app_db). Other table names: `source=SourceTables(...)`.
# The campaign files are checked when the code location loads: a bad one stops it with one line per problem.
CAMPAIGNS = file_campaigns()

app_db = deployed_app_db(AppDatabase(url=EnvVar("RETENTION_DATABASE_URL")))


def email_sender() -> EmailSender:
    """Resend when RESEND_API_KEY is set (it wins over SMTP_HOST); else SMTP when SMTP_HOST is set; otherwise
    the outbox, which only shows what would be sent."""
    if os.environ.get("RESEND_API_KEY"):
        return ResendSender(api_key=EnvVar("RESEND_API_KEY"), api_url=os.environ.get("RESEND_API_URL", "https://api.resend.com"))
    if os.environ.get("SMTP_HOST"):
        return smtp_sender_from_env()
    return OutboxSender(app_db=app_db, outbox_dir=str(STATE_DIR / "outbox"))


defs = Definitions(
    assets=[
        daily_activity_snapshots,
        stripe_subscriptions,
        weekly_engagement_segments,
        dormant_users,
        reengagement_emails,
        reengagement_outcomes,
        campaign_performance,
    ],
    asset_checks=[unmapped_event_types_check],
    jobs=[daily_retention_job, billing_snapshot_job, weekly_segments_job],
    schedules=[billing_snapshot_schedule, daily_morning_schedule, weekly_segments_schedule],
    resources={
        "app_db": app_db,
        # STRIPE_API_BASE points at a Stripe-compatible server (the demo's localstripe); unset = Stripe.
        "stripe": StripeResource(api_key=EnvVar("STRIPE_API_KEY"), api_base=os.environ.get("STRIPE_API_BASE", "")),
        "email_sender": email_sender(),
        "unsubscribe_links": UnsubscribeLinks(secret=EnvVar("RETENTION_UNSUBSCRIBE_SECRET")),
    },
)
