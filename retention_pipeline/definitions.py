"""The code location: every asset, check, job, schedule and resource of the retention loop."""

from __future__ import annotations

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
from retention_pipeline.resources import AppDatabase
from retention_pipeline.segments.assets import dormant_users, weekly_engagement_segments

defs = Definitions(
    assets=[daily_activity_snapshots, stripe_subscriptions, weekly_engagement_segments, dormant_users],
    jobs=[daily_retention_job, billing_snapshot_job, weekly_segments_job],
    schedules=[billing_snapshot_schedule, daily_morning_schedule, weekly_segments_schedule],
    resources={
        "app_db": AppDatabase(url=EnvVar("RETENTION_DATABASE_URL")),
        # STRIPE_API_BASE points at a Stripe-compatible server (the demo's localstripe); unset = Stripe.
        "stripe": StripeResource(api_key=EnvVar("STRIPE_API_KEY"), api_base=os.environ.get("STRIPE_API_BASE", "")),
    },
)
