"""SQL of the outcomes. Everything is as of the end of the partition day, never the wall clock."""

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
       ev.first_at IS NOT NULL, ev.first_at, ev.events, ev.active_days,
       r.reference_at + make_interval(days => w.window_days) <= :end_ts,
       :as_of
FROM {rs}.assignments s
CROSS JOIN LATERAL (SELECT s.reference_at) r
CROSS JOIN unnest(CAST(:windows AS integer[])) AS w(window_days)
CROSS JOIN LATERAL (
    SELECT min(e.occurred_at) AS first_at, count(*) AS events,
           count(DISTINCT (e.occurred_at AT TIME ZONE :tz)::date) AS active_days
    FROM {rs}.source_events e
    WHERE e.user_id = s.user_id
      AND e.occurred_at > r.reference_at
      AND e.occurred_at <= LEAST(r.reference_at + make_interval(days => w.window_days), :end_ts)
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
PERFORMANCE_COUNTS_SQL = """
SELECT campaign, step, variant, COALESCE(segment_reason, 'unknown') AS segment, window_days, treated,
       count(*) AS users, count(*) FILTER (WHERE returned) AS returned,
       COALESCE(sum(mrr_cents) FILTER (WHERE returned AND treated), 0)::bigint AS recovered_mrr_cents,
       -- Per protocol (secondary): delivered emails only; rows from before `delivered` existed were all sent.
       count(*) FILTER (WHERE delivered IS NOT FALSE) AS delivered_users,
       count(*) FILTER (WHERE delivered IS NOT FALSE AND returned) AS delivered_returned
FROM {rs}.reengagement_outcomes
WHERE final AND window_end <= :end_ts
GROUP BY campaign, step, variant, COALESCE(segment_reason, 'unknown'), window_days, treated
"""

REPLACE_PERFORMANCE_SQL = "DELETE FROM {rs}.campaign_performance WHERE as_of_date = :as_of"

INSERT_PERFORMANCE_SQL = """
INSERT INTO {rs}.campaign_performance (as_of_date, campaign, step, variant, segment, window_days, treated,
    treated_returned, holdout, holdout_returned, treated_rate, holdout_rate, lift, lift_ci_low, lift_ci_high,
    p_value, recovered_mrr_cents, per_protocol_treated, per_protocol_treated_returned, per_protocol_lift)
VALUES (:as_of_date, :campaign, :step, :variant, :segment, :window_days, :treated, :treated_returned, :holdout,
    :holdout_returned, :treated_rate, :holdout_rate, :lift, :lift_ci_low, :lift_ci_high, :p_value, :recovered_mrr_cents,
    :per_protocol_treated, :per_protocol_treated_returned, :per_protocol_lift)
"""

LATEST_STEP_PERFORMANCE_SQL = """
SELECT variant, treated, treated_returned, holdout, holdout_returned, lift, lift_ci_low, lift_ci_high
FROM {rs}.campaign_performance
WHERE campaign = :campaign AND step = :step AND segment = 'all' AND window_days = :window_days
  AND as_of_date = (SELECT max(as_of_date) FROM {rs}.campaign_performance
                    WHERE campaign = :campaign AND as_of_date < :as_of)
"""
