"""SQL of the send ledger. Eligibility is set-based; rendering and sending happen per small batch."""

from retention_pipeline.outreach.tables import ASSIGNED_STATUSES

# Candidates for one step on one as-of day, with the first reason (if any) not to email them. They stay
# in PostgreSQL (a temporary table); Python reads the skip counts and streams the eligible ones.
# A base (the campaign's `audience.from`) yields `today`: one row per user of the as-of day, with their episode;
# everything after it (audience, follow-up, skips, suppression) is the same for every campaign.
CANDIDATES_SQL = """
CREATE TEMPORARY TABLE plan_candidates ON COMMIT DROP AS
{base}), due AS (
    SELECT t.*
    FROM today t
    -- The campaign's audience (audience.audience_sql), at every step: a user who left it gets no follow-up.
    WHERE ({audience})
    -- The follow-up follows the previous step's assignment in both arms alike (a failed or unknown send
    -- like a delivered one or a holdout row).
      AND (:step = 1 OR EXISTS (
        SELECT 1 FROM {rs}.email_sends prev
        WHERE prev.campaign = :campaign AND prev.step = :step - 1 AND prev.user_id = t.user_id
          AND prev.episode_start = t.episode_start
          AND prev.status IN {assigned}
          AND prev.as_of_date <= CAST(:as_of AS date) - :delay_days))
)
SELECT user_id, episode_start, days_inactive, segment_reason, last_activity_at, mrr_cents, skip_reason,
       -- What an email needs, only for those who get one: at 1,000,000 users most of the 378,000 dormant
       -- ones are skipped (already emailed in this episode).
       -- (`preview` renders users the ledger already holds too: :render_recorded.)
       CASE WHEN skip_reason IS NULL OR (:render_recorded AND skip_reason = 'already_recorded') THEN email END AS email,
       CASE WHEN skip_reason IS NULL OR (:render_recorded AND skip_reason = 'already_recorded') THEN name END AS name,
       CASE WHEN skip_reason IS NULL OR (:render_recorded AND skip_reason = 'already_recorded')
            THEN COALESCE(last_actions, {recent_actions}) END AS last_actions,
       CASE WHEN skip_reason IS NULL OR (:render_recorded AND skip_reason = 'already_recorded') THEN plan_name END AS plan_name,
       subscription_status, cancel_at_period_end,
       -- Suppression is not a skip: earlier emails produce it (unsubscribes, bounces, complaints, leaving a
       -- topic), and only the email arm gets them. The assignment is drawn and recorded first; a suppressed
       -- one stays in its arm, recorded with the reason (email_sends.suppression) and never sent, in both
       -- arms alike. A transactional campaign's email ignores topic unsubscribes (not global suppression).
       CASE WHEN skip_reason IS NULL OR (:render_recorded AND skip_reason = 'already_recorded') THEN COALESCE(
           (SELECT sup.reason FROM {rs}.email_suppressions sup WHERE sup.email = lower(checked.email)),
           CASE WHEN NOT :transactional AND EXISTS (SELECT 1 FROM {rs}.email_topic_suppressions ts
                                                   WHERE ts.email = lower(checked.email) AND ts.topic = :topic)
                THEN 'unsubscribed_from_topic' END) END AS suppression
FROM (
SELECT d.user_id, d.episode_start, d.email, d.name, d.days_inactive, d.reason AS segment_reason,
       d.last_activity_at, d.last_actions, d.plan_name, d.mrr_cents, d.subscription_status, d.cancel_at_period_end,
       CASE
           WHEN EXISTS (SELECT 1 FROM {rs}.email_sends s
                        WHERE s.campaign = :campaign AND s.step = :step AND s.user_id = d.user_id
                          AND s.episode_start = d.episode_start) THEN 'already_recorded'
           WHEN NOT d.targeted THEN 'not_targeted'
           -- No spaces or control characters anywhere: such an address could not be sent (or signed into an
           -- unsubscribe token) and would fail the whole batch or plan.
           WHEN d.email IS NULL OR length(d.email) > 254
                OR d.email !~ '^[^@[:space:][:cntrl:]<>",;]+@[^@[:space:][:cntrl:]<>",;]+\\.[^@[:space:][:cntrl:]<>",;]+$' THEN 'invalid_email'
           -- Came back since the snapshot. The trigger's table answers at once; the events check keeps
           -- a replay under a set clock from seeing returns that happened after its "now". Dormancy campaigns
           -- only: a lifecycle campaign's user need not have been away.
           WHEN NOT :lifecycle AND ua.last_activity_at > d.last_activity_at AND EXISTS (
                    SELECT 1 FROM {rs}.source_events e
                    WHERE e.user_id = d.user_id AND e.occurred_at > d.last_activity_at AND e.occurred_at <= :now)
               THEN 'returned'
           -- Frequency cap across every campaign: a holdout row is a virtual send and a failed one still an
           -- assignment, so the cap holds back both arms alike (counting only real sends skipped every treated
           -- user and none of the holdout: a biased lift). Campaigns are planned one after the other in
           -- priority order, each in its own committed transaction, so a later one sees an earlier one's rows.
           WHEN EXISTS (SELECT 1 FROM {rs}.assignments c
                        WHERE c.user_id = d.user_id AND c.as_of_date > CAST(:as_of AS date) - :cooldown_days) THEN 'frequency_cap'
           -- A dry run writes no ledger: its own preview of the day stands in for the earlier campaigns' and steps'
           -- rows, so it shows what the live run would send (not this step's previous preview, replaced below).
           WHEN :dry_run AND EXISTS (SELECT 1 FROM {rs}.email_dry_runs dr
                                     WHERE dr.user_id = d.user_id AND dr.as_of_date = :as_of
                                       AND NOT (dr.campaign = :campaign AND dr.step = :step)) THEN 'frequency_cap'
       END AS skip_reason
FROM due d
LEFT JOIN {rs}.user_activity ua ON ua.user_id = d.user_id
) checked
""".replace("{assigned}", ASSIGNED_STATUSES)

# The dormancy episode of a user is the run of consecutive as-of days ending today on which the user
# is in dormant_users: coming back (dropping out of the list for a day) ends it.
DORMANT_BASE = """
WITH recent_days AS (
    -- The recent days of every user dormant today (the EXISTS probes the primary key per row).
    SELECT du.*,
           du.as_of_date - (row_number() OVER (PARTITION BY du.user_id ORDER BY du.as_of_date))::int AS island
    FROM {rs}.dormant_users du
    WHERE du.as_of_date BETWEEN CAST(:as_of AS date) - :episode_lookback_days AND :as_of
      AND EXISTS (SELECT 1 FROM {rs}.dormant_users t WHERE t.as_of_date = :as_of AND t.user_id = du.user_id)
), today AS (
    -- Consecutive days share an island, and today ends the user's last one, so the episode started
    -- (days in that island - 1) days ago. Window passes only, no join of the days with themselves:
    -- such a join goes quadratic when the planner misjudges today's rows (statistics not analyzed yet
    -- after the morning's dormant_users); 38,000 dormant users then took minutes.
    SELECT d.*, CAST(:as_of AS date) - (d.island_days - 1)::int AS episode_start
    FROM (SELECT r.*, count(*) OVER (PARTITION BY r.user_id, r.island) AS island_days FROM recent_days r) d
    WHERE d.as_of_date = :as_of
"""

# A day's snapshot was taken if it was recorded, or if it kept rows (history written before stripe_snapshot_days,
# or by hand): an account without subscriptions keeps no rows, yet its snapshot was taken.
_SNAPSHOT_TAKEN = """(EXISTS (SELECT 1 FROM {rs}.stripe_snapshot_days t WHERE t.snapshot_date = DAY)
     OR EXISTS (SELECT 1 FROM {rs}.stripe_subscription_history s WHERE s.snapshot_date = DAY))"""

# The as-of day D's subscriptions are the snapshot dated D + 1: the billing schedule takes it the morning after,
# just before the daily run of D reads it (a backfill of D reads that snapshot, never the latest). The lifecycle
# episode of a user is the run of consecutive snapshots, ending with that one, on which one of the user's
# subscriptions matched the campaign's lifecycle condition: a user who recovers (a snapshot without a match) and
# falls back in starts a new episode. A day without any snapshot (the billing job did not run) is no day of the
# sequence: it neither ends nor starts an episode, so a missed morning never sends anyone a second email.
LIFECYCLE_BASE = """
WITH snapshot_days AS (
    -- At most 121 probes of the history's primary key, not a scan of it.
    SELECT d::date AS snapshot_date, row_number() OVER (ORDER BY d) AS day_number
    FROM generate_series(CAST(:snapshot_date AS date) - :episode_lookback_days, CAST(:snapshot_date AS date),
                         interval '1 day') AS d
    WHERE SNAPSHOT_TAKEN_ON_D
), matched AS (
    -- Each snapshot on which a user who matches today matched, with that snapshot's best matching subscription.
    -- One pass over the lookback's days of the history (25,000 subscriptions x 120 days kept: 0.3 s; a per-user
    -- walk of the (user_id, snapshot_date) index was no faster there: the history is stored day by day).
    SELECT DISTINCT ON (h.user_id, h.snapshot_date) h.user_id, h.snapshot_date, sd.day_number, h.status,
           COALESCE(h.product_name, h.plan_name) AS plan_name, h.mrr_cents, h.cancel_at_period_end
    FROM {rs}.stripe_subscription_history h
    JOIN snapshot_days sd ON sd.snapshot_date = h.snapshot_date
    -- The range again, on the table: the history is kept for good and is not read beyond the lookback.
    WHERE h.snapshot_date BETWEEN CAST(:snapshot_date AS date) - :episode_lookback_days AND :snapshot_date
      AND ({lifecycle})
      AND h.user_id IN (SELECT h.user_id FROM {rs}.stripe_subscription_history h
                        WHERE h.snapshot_date = :snapshot_date AND h.user_id IS NOT NULL AND ({lifecycle}))
    ORDER BY h.user_id, h.snapshot_date, h.mrr_cents DESC, h.subscription_id
), episodes AS (
    -- As for dormancy, window passes only: snapshots in a row share an island, the episode is today's island,
    -- and it starts on the as-of day its first snapshot stands for.
    SELECT i.*, min(i.snapshot_date) OVER (PARTITION BY i.user_id, i.island) - 1 AS episode_start
    FROM (SELECT m.*, m.day_number - row_number() OVER (PARTITION BY m.user_id ORDER BY m.snapshot_date) AS island
          FROM matched m) i
), today AS (
    -- Active or dormant: a dormant user's row of the day gives the dormancy reason and last actions; for anyone
    -- else the last activity up to the as-of day's end is one probe of the events' (user_id, occurred_at) index.
    SELECT e.user_id, e.episode_start, u.email, u.name, COALESCE(du.reason, 'not_dormant') AS reason,
           COALESCE(du.last_activity_at, seen.last_activity_at) AS last_activity_at,
           COALESCE(du.days_inactive, CAST(:as_of AS date) - (seen.last_activity_at AT TIME ZONE :tz)::date) AS days_inactive,
           du.last_actions, e.plan_name, e.mrr_cents, e.status AS subscription_status, e.cancel_at_period_end,
           -- The dormancy targeting policy is about dormant users; the lifecycle condition chose these.
           true AS targeted
    FROM episodes e
    JOIN {rs}.source_users u ON u.id = e.user_id
    LEFT JOIN {rs}.dormant_users du ON du.as_of_date = :as_of AND du.user_id = e.user_id
    LEFT JOIN LATERAL (SELECT max(ev.occurred_at) AS last_activity_at FROM {rs}.source_events ev
                       WHERE du.user_id IS NULL AND ev.user_id = e.user_id AND ev.occurred_at < :as_of_end) seen ON true
    WHERE e.snapshot_date = :snapshot_date
""".replace("SNAPSHOT_TAKEN_ON_D", _SNAPSHOT_TAKEN.replace("DAY", "d::date"))

# The latest actions of a user who is not in dormant_users that day (a lifecycle campaign's active user), shaped
# as dormant_users.last_actions: the newest event of each of the latest distinct event types, scalar properties
# only. Evaluated only for users who get an email, from at most their last 50 events before the day's end.
RECENT_ACTIONS_SQL = """(
    SELECT COALESCE(jsonb_agg(jsonb_build_object(
               'event_type', a.event_type, 'occurred_at', a.occurred_at,
               'properties', COALESCE((
                   SELECT jsonb_object_agg(p.key, p.value)
                   FROM (SELECT key, value
                         FROM jsonb_each(CASE WHEN jsonb_typeof(a.properties) = 'object' THEN a.properties
                                              ELSE '{}'::jsonb END)
                         WHERE jsonb_typeof(value) IN ('string', 'number', 'boolean') AND length(value::text) <= 200
                         ORDER BY key LIMIT 8) p), '{}'::jsonb)
           ) ORDER BY a.occurred_at DESC), '[]'::jsonb)
    FROM (SELECT * FROM (SELECT DISTINCT ON (r.event_type) r.event_type, r.occurred_at, r.properties
                         FROM (SELECT ev.event_type, ev.occurred_at, ev.properties FROM {rs}.source_events ev
                               WHERE ev.user_id = checked.user_id AND ev.occurred_at < :as_of_end
                               ORDER BY ev.occurred_at DESC LIMIT 50) r
                         ORDER BY r.event_type, r.occurred_at DESC) latest
          ORDER BY latest.occurred_at DESC LIMIT :last_actions) a)"""

SKIP_COUNTS_SQL = "SELECT skip_reason, count(*) AS users FROM plan_candidates WHERE skip_reason IS NOT NULL GROUP BY 1"

ELIGIBLE_SQL = "SELECT * FROM plan_candidates WHERE skip_reason IS NULL ORDER BY user_id"

# A chunk of ledger rows per statement (one round trip, not one per email), passed as a JSON array.
INSERT_LEDGER_SQL = """
INSERT INTO {rs}.email_sends (campaign, step, user_id, episode_start, as_of_date, variant, status, email,
    segment_reason, mrr_cents, subject, payload, created_at, unsubscribe_ref, unsubscribe_topic, suppression)
SELECT campaign, step, user_id, episode_start, as_of_date, variant, status, email,
       segment_reason, mrr_cents, subject, payload, created_at, unsubscribe_ref, unsubscribe_topic, suppression
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(campaign text, step smallint, user_id bigint, episode_start date,
    as_of_date date, variant text, status text, email text, segment_reason text, mrr_cents bigint, subject text,
    payload jsonb, created_at timestamptz, unsubscribe_ref text, unsubscribe_topic text, suppression text)
ORDER BY user_id
ON CONFLICT (campaign, step, user_id, episode_start) DO NOTHING
RETURNING id, status, suppression IS NOT NULL AS suppressed
"""

# A dry run replaces its preview of the campaign, step and day; the ledger is not touched.
CLEAR_DRY_RUN_SQL = "DELETE FROM {rs}.email_dry_runs WHERE campaign = :campaign AND step = :step AND as_of_date = :as_of"

INSERT_DRY_RUN_SQL = """
INSERT INTO {rs}.email_dry_runs (campaign, step, user_id, as_of_date, episode_start, variant, status, email,
    segment_reason, mrr_cents, subject, payload, created_at, suppression)
SELECT campaign, step, user_id, as_of_date, episode_start, variant,
       CASE status WHEN 'holdout' THEN 'would_hold_out' WHEN 'suppressed' THEN 'would_suppress' ELSE 'would_send' END,
       email, segment_reason, mrr_cents,
       subject, payload, created_at, suppression
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(campaign text, step smallint, user_id bigint, episode_start date,
    as_of_date date, variant text, status text, email text, segment_reason text, mrr_cents bigint, subject text,
    payload jsonb, created_at timestamptz, suppression text)
ORDER BY user_id
ON CONFLICT DO NOTHING
RETURNING status, suppression IS NOT NULL AS suppressed
"""

DRY_RUN_SUMMARY_SQL = """
SELECT status, count(*) AS emails FROM {rs}.email_dry_runs
WHERE campaign = ANY(:campaigns) AND as_of_date >= :start_date AND as_of_date < :end_date
GROUP BY status
"""

ASSIGN_BATCH_SQL = "UPDATE {rs}.email_sends SET batch_key = :batch_key WHERE id = ANY(:ids)"

PENDING_BATCHES_SQL = """
SELECT batch_key, min(created_at) AS created_at, count(*) AS emails
FROM {rs}.email_sends
WHERE status = 'pending' AND campaign = ANY(:campaigns)
GROUP BY batch_key ORDER BY min(id)
"""

BATCH_ROWS_SQL = """
SELECT id, email, payload FROM {rs}.email_sends
WHERE batch_key = :batch_key AND status = 'pending' ORDER BY id
"""

MARK_SENT_SQL = """
UPDATE {rs}.email_sends SET status = 'sent', provider_message_id = :provider_id, sent_at = :sent_at,
    attempts = attempts + :attempts, error = NULL
WHERE id = :id AND status = 'pending'
"""

MARK_FAILED_SQL = """
UPDATE {rs}.email_sends SET status = :status, error = :error, attempts = attempts + :attempts
WHERE batch_key = :batch_key AND status = 'pending'
"""

LEDGER_SUMMARY_SQL = """
SELECT campaign, step, variant, status, count(*) AS emails
FROM {rs}.email_sends
WHERE campaign = ANY(:campaigns) AND as_of_date >= :start_date AND as_of_date < :end_date
GROUP BY campaign, step, variant, status ORDER BY campaign, step, variant, status
"""

RECORD_ALLOCATION_SQL = """
INSERT INTO {rs}.allocation_decisions (as_of_date, campaign, step, variant, share, treated, returned, p_best,
    step_paused, reason, decided_at, decision)
VALUES (:as_of_date, :campaign, :step, :variant, :share, :treated, :returned, :p_best, :step_paused, :reason, :decided_at,
    :decision)
ON CONFLICT (as_of_date, campaign, step, variant) DO UPDATE SET share = EXCLUDED.share, treated = EXCLUDED.treated,
    returned = EXCLUDED.returned, p_best = EXCLUDED.p_best, step_paused = EXCLUDED.step_paused,
    reason = EXCLUDED.reason, decided_at = EXCLUDED.decided_at, decision = EXCLUDED.decision
"""

# A day's decision replaces that day's rows (a re-run may decide differently, e.g. after a resume).
CLEAR_ALLOCATION_SQL = (
    "DELETE FROM {rs}.allocation_decisions WHERE as_of_date = :as_of_date AND campaign = :campaign AND step = :step"
)

# The decision in force before this day: pauses and winners stand until a reviewer resumes the step.
PREVIOUS_DECISION_SQL = """
SELECT decision, reason,
       (SELECT w.variant FROM {rs}.allocation_decisions w
        WHERE w.campaign = d.campaign AND w.step = d.step AND w.as_of_date = d.as_of_date
        ORDER BY w.share DESC, w.variant LIMIT 1) AS winner
FROM {rs}.allocation_decisions d
WHERE d.campaign = :campaign AND d.step = :step
  AND d.as_of_date = (SELECT max(as_of_date) FROM {rs}.allocation_decisions
                      WHERE campaign = :campaign AND step = :step AND as_of_date < :as_of)
LIMIT 1
"""

RECORD_SUCCESS_DEFINITION_SQL = """
INSERT INTO {rs}.campaign_success (campaign, event_types, min_events, updated_at)
VALUES (:campaign, :event_types, :min_events, :updated_at)
ON CONFLICT (campaign) DO UPDATE SET event_types = EXCLUDED.event_types, min_events = EXCLUDED.min_events,
    updated_at = EXCLUDED.updated_at
WHERE ({rs}.campaign_success.event_types, {rs}.campaign_success.min_events)
      IS DISTINCT FROM (EXCLUDED.event_types, EXCLUDED.min_events)
"""

SNAPSHOT_TAKEN_SQL = "SELECT " + _SNAPSHOT_TAKEN.replace("DAY", "CAST(:snapshot_date AS date)")
