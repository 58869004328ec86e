"""SQL of the outcomes. Everything is as of the end of the partition day, never the wall clock."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row

from retention_pipeline.resources import AppDatabase
from retention_pipeline.settings import PROJECT_TIMEZONE

# Each assignment (an email, whatever became of it, or a holdout member) against each attribution window. The window is
# (reference_at, reference_at + N days]: activity before the send never counts as its success.
# Events are read per user through the (user_id, occurred_at) index, exact to the second, which the
# day-grained snapshots cannot be for "returned later the same day". Final rows are never touched
# again, and an evaluation as of an earlier day never overwrites a later one.
EVALUATE_OUTCOMES_SQL = """
INSERT INTO {rs}.reengagement_outcomes AS o (send_id, window_days, campaign, step, variant, treated, delivered,
    segment_reason, user_id, mrr_cents, reference_at, window_end, returned, first_returned_at, events, active_days, final,
    evaluated_as_of)
SELECT s.send_id, w.window_days, s.campaign, s.step, s.variant, s.treated, s.delivered, s.segment_reason, s.user_id,
       s.mrr_cents, r.reference_at, r.reference_at + make_interval(days => w.window_days),
       ev.success_at IS NOT NULL, ev.success_at, ev.events, ev.active_days,
       r.reference_at + make_interval(days => w.window_days) <= :end_ts,
       :as_of
FROM {rs}.assignments s
CROSS JOIN LATERAL (SELECT s.reference_at) r
CROSS JOIN unnest(CAST(:windows AS integer[])) AS w(window_days)
-- The campaign's success definition (no row: any event, one is enough). Events and active days count
-- qualifying events only; the return is the moment the min_events-th of them happened.
LEFT JOIN {rs}.campaign_success cs ON cs.campaign = s.campaign
CROSS JOIN LATERAL (
    SELECT (array_agg(e.occurred_at ORDER BY e.occurred_at))[COALESCE(cs.min_events, 1)] AS success_at, count(*) AS events,
           count(DISTINCT (e.occurred_at AT TIME ZONE :tz)::date) AS active_days
    FROM {rs}.source_events e
    WHERE e.user_id = s.user_id
      AND e.occurred_at > r.reference_at
      AND e.occurred_at <= LEAST(r.reference_at + make_interval(days => w.window_days), :end_ts)
      AND (cs.event_types IS NULL OR e.event_type = ANY(cs.event_types))
) ev
-- As assigned: failed and unknown sends stay treated. A pending row waits until its send is settled,
-- which fixes its reference time.
WHERE s.status <> 'pending'
  AND r.reference_at < :end_ts
  AND NOT EXISTS (SELECT 1 FROM {rs}.reengagement_outcomes f
                  WHERE f.send_id = s.send_id AND f.window_days = w.window_days AND f.final)
ON CONFLICT (send_id, window_days) DO UPDATE SET
    returned = EXCLUDED.returned, first_returned_at = EXCLUDED.first_returned_at, events = EXCLUDED.events,
    active_days = EXCLUDED.active_days, final = EXCLUDED.final, evaluated_as_of = EXCLUDED.evaluated_as_of
WHERE NOT o.final AND EXCLUDED.evaluated_as_of >= o.evaluated_as_of
"""

OUTCOME_SUMMARY_SQL = """
SELECT window_days, count(*) FILTER (WHERE final) AS final_rows, count(*) FILTER (WHERE NOT final) AS open_rows,
       count(*) FILTER (WHERE final AND treated) AS treated, count(*) FILTER (WHERE final AND treated AND returned) AS treated_returned,
       count(*) FILTER (WHERE final AND NOT treated) AS holdout, count(*) FILTER (WHERE final AND NOT treated AND returned) AS holdout_returned
FROM {rs}.reengagement_outcomes
WHERE reference_at < :end_ts
GROUP BY window_days ORDER BY window_days
"""

# Closed windows only: an open window would count users who have not yet had the chance to return.
# By send day too: the allocation between variants changes from day to day, so variants are compared
# within days (the adjusted lift) as well as pooled.
PERFORMANCE_COUNTS_SQL = """
SELECT campaign, step, variant, COALESCE(segment_reason, 'unknown') AS segment, window_days, treated,
       (reference_at AT TIME ZONE :tz)::date AS day,
       count(*) AS users, count(*) FILTER (WHERE returned) AS returned,
       COALESCE(sum(mrr_cents) FILTER (WHERE returned AND treated), 0)::bigint AS recovered_mrr_cents,
       -- Per protocol (secondary): delivered emails only; rows from before `delivered` existed were all sent.
       count(*) FILTER (WHERE delivered IS NOT FALSE) AS delivered_users,
       count(*) FILTER (WHERE delivered IS NOT FALSE AND returned) AS delivered_returned
FROM {rs}.reengagement_outcomes
WHERE final AND window_end <= :end_ts
GROUP BY campaign, step, variant, COALESCE(segment_reason, 'unknown'), window_days, treated, (reference_at AT TIME ZONE :tz)::date
"""

# The same closed rows summed per user, then per group (every variant and 'all', every segment and 'all'):
# a user's rows in one arm are one cluster, whose sums give the arm's design effect (outcomes.stats).
USER_SUMS_SQL = """
WITH closed AS (
    SELECT campaign, step, window_days, treated, variant, COALESCE(segment_reason, 'unknown') AS segment, user_id, returned
    FROM {rs}.reengagement_outcomes
    WHERE final AND window_end <= :end_ts
), per_user AS (
    SELECT campaign, step, window_days, treated,
           CASE WHEN GROUPING(variant) = 1 THEN 'all' ELSE variant END AS variant,
           CASE WHEN GROUPING(segment) = 1 THEN 'all' ELSE segment END AS segment,
           count(*) AS n, count(*) FILTER (WHERE returned) AS x
    FROM closed
    GROUP BY campaign, step, window_days, treated, user_id, GROUPING SETS ((variant, segment), (variant), (segment), ())
)
SELECT campaign, step, window_days, treated, variant, segment, sum(n)::bigint AS rows, sum(x)::bigint AS returned,
       count(*) AS users, sum(n * n)::bigint AS rows_squared, sum(x * x)::bigint AS returned_squared,
       sum(x * n)::bigint AS returned_times_rows
FROM per_user
GROUP BY campaign, step, window_days, treated, variant, segment
"""

REPLACE_PERFORMANCE_SQL = "DELETE FROM {rs}.campaign_performance WHERE as_of_date = :as_of"

INSERT_PERFORMANCE_SQL = """
INSERT INTO {rs}.campaign_performance (as_of_date, campaign, step, variant, segment, window_days, treated,
    treated_returned, holdout, holdout_returned, treated_rate, holdout_rate, lift, lift_ci_low, lift_ci_high,
    p_value, recovered_mrr_cents, adjusted_lift, adjusted_ci_low, adjusted_ci_high, per_protocol_treated,
    per_protocol_treated_returned, per_protocol_lift)
VALUES (:as_of_date, :campaign, :step, :variant, :segment, :window_days, :treated, :treated_returned, :holdout,
    :holdout_returned, :treated_rate, :holdout_rate, :lift, :lift_ci_low, :lift_ci_high, :p_value, :recovered_mrr_cents,
    :adjusted_lift, :adjusted_ci_low, :adjusted_ci_high, :per_protocol_treated, :per_protocol_treated_returned,
    :per_protocol_lift)
"""

# What the daily allocation of a step looks at: closed windows by send day (the allocation period), so
# comparisons are made within a day and a mix that shifts between days cannot bias them.
STEP_OUTCOMES_BY_DAY_SQL = """
SELECT (reference_at AT TIME ZONE :tz)::date AS day, variant, treated, count(*) AS users,
       count(*) FILTER (WHERE returned) AS returned
FROM {rs}.reengagement_outcomes
WHERE campaign = :campaign AND step = :step AND window_days = :window_days AND final AND window_end <= :end_ts
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def step_outcomes_by_day(app_db: AppDatabase, campaign: str, step: int, window_days: int, before: datetime) -> list[Row]:
    """The outcomes feedback the outreach domain reads: one step's windows closed before `before`, by send day."""
    return app_db.fetch_all(
        STEP_OUTCOMES_BY_DAY_SQL,
        {"campaign": campaign, "step": step, "window_days": window_days, "end_ts": before, "tz": PROJECT_TIMEZONE},
    )


# Revenue kept, as assigned: every paying user (MRR at assignment > 0) of every settled assignment (a send
# attempt, a suppressed address, or the holdout), at each horizon that has passed by the as-of day. Kept = in the first
# subscription snapshot taken on or after the horizon's day, the user has a subscription that still
# runs, or that ended (or was canceled) only after that day began. No snapshot yet: not counted (awaiting).
# Snapshots up to the morning after the as-of day count: that is when the day's run reads them.
REVENUE_KEPT_SQL = """
WITH snapshots AS (
    SELECT DISTINCT snapshot_date FROM {rs}.stripe_subscription_history WHERE snapshot_date <= CAST(:as_of AS date) + 1
), due AS (
    SELECT s.campaign, s.step, s.user_id, s.treated, s.mrr_cents, h.horizon_days,
           s.as_of_date + h.horizon_days AS due_date
    FROM {rs}.assignments s
    CROSS JOIN unnest(CAST(:horizons AS integer[])) AS h(horizon_days)
    WHERE s.status <> 'pending' AND s.mrr_cents > 0
      AND s.as_of_date + h.horizon_days <= :as_of
), judged AS (
    SELECT d.*, snap.snapshot_date,
           EXISTS (SELECT 1 FROM {rs}.stripe_subscription_history sh
                   WHERE sh.snapshot_date = snap.snapshot_date AND sh.user_id = d.user_id
                     AND COALESCE(sh.ended_at,
                                  CASE WHEN sh.status IN ('canceled', 'incomplete_expired') THEN sh.canceled_at END,
                                  CASE WHEN sh.status IN ('canceled', 'incomplete_expired') THEN '-infinity'::timestamptz
                                       ELSE 'infinity'::timestamptz END)
                         > (d.due_date::timestamp AT TIME ZONE :tz)) AS kept
    FROM due d
    LEFT JOIN LATERAL (SELECT min(sn.snapshot_date) AS snapshot_date FROM snapshots sn WHERE sn.snapshot_date >= d.due_date) snap ON true
-- Per user first: a user's assignments in one arm share one subscription, so they are one cluster.
), per_user AS (
    SELECT campaign, step, horizon_days, treated,
           count(*) FILTER (WHERE snapshot_date IS NOT NULL) AS n,
           count(*) FILTER (WHERE snapshot_date IS NOT NULL AND kept) AS x,
           COALESCE(sum(mrr_cents) FILTER (WHERE snapshot_date IS NOT NULL), 0) AS mrr_cents,
           count(*) FILTER (WHERE snapshot_date IS NULL) AS awaiting
    FROM judged
    GROUP BY campaign, step, horizon_days, treated, user_id
)
SELECT campaign, step, horizon_days, treated, sum(n)::bigint AS users, sum(x)::bigint AS kept,
       sum(mrr_cents)::bigint AS mrr_cents, sum(awaiting)::bigint AS awaiting,
       count(*) FILTER (WHERE n > 0) AS clusters, sum(n * n)::bigint AS rows_squared,
       sum(x * x)::bigint AS kept_squared, sum(x * n)::bigint AS kept_times_rows
FROM per_user
GROUP BY campaign, step, horizon_days, treated
"""

REPLACE_REVENUE_SQL = "DELETE FROM {rs}.campaign_revenue WHERE as_of_date = :as_of"

INSERT_REVENUE_SQL = """
INSERT INTO {rs}.campaign_revenue (as_of_date, campaign, step, horizon_days, treated, treated_kept, holdout, holdout_kept,
    awaiting, mrr_at_risk_cents, retention_lift, retention_lift_ci_low, retention_lift_ci_high, incremental_mrr_cents,
    incremental_mrr_ci_low_cents, incremental_mrr_ci_high_cents)
VALUES (:as_of_date, :campaign, :step, :horizon_days, :treated, :treated_kept, :holdout, :holdout_kept, :awaiting,
    :mrr_at_risk_cents, :retention_lift, :retention_lift_ci_low, :retention_lift_ci_high, :incremental_mrr_cents,
    :incremental_mrr_ci_low_cents, :incremental_mrr_ci_high_cents)
"""
