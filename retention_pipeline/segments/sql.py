"""Set-based SQL of the weekly segments and the dormant users. Dates are local dates in the project timezone."""

# Computes the window's weeks plus the week before it, so every week's `previous_segment` comes from
# the same statement rather than from whatever an earlier run happened to store.
WEEKLY_SEGMENTS_SQL = """
DELETE FROM {rs}.weekly_segments WHERE week_start >= :start_date AND week_start < :end_date;
INSERT INTO {rs}.weekly_segments (week_start, user_id, segment, previous_segment, active_days, event_count,
    previous_event_count, sessions_started, session_minutes, last_activity_date)
WITH weeks AS (
    SELECT d::date AS week_start,
           (d::date::timestamp AT TIME ZONE :tz) AS week_start_ts,
           ((d::date + 7)::timestamp AT TIME ZONE :tz) AS week_end_ts
    FROM generate_series(CAST(:start_date AS date) - 7, CAST(:end_date AS date) - 7, interval '7 days') AS d
), members AS (
    SELECT w.week_start, w.week_start_ts, u.id AS user_id, u.created_at
    FROM weeks w JOIN {rs}.source_users u ON u.created_at < w.week_end_ts
), activity AS (
    SELECT w.week_start, a.user_id,
           count(*) FILTER (WHERE a.activity_date >= w.week_start AND a.event_count > 0) AS active_days,
           COALESCE(sum(a.event_count) FILTER (WHERE a.activity_date >= w.week_start), 0) AS event_count,
           COALESCE(sum(a.event_count) FILTER (WHERE a.activity_date >= w.week_start - 7
                                                 AND a.activity_date < w.week_start), 0) AS previous_event_count,
           COALESCE(sum(a.sessions_started) FILTER (WHERE a.activity_date >= w.week_start), 0) AS sessions_started,
           COALESCE(sum(a.session_minutes) FILTER (WHERE a.activity_date >= w.week_start), 0) AS session_minutes,
           max(a.activity_date) FILTER (WHERE a.event_count > 0) AS last_activity_date
    FROM weeks w
    JOIN {rs}.daily_activity a
      ON a.activity_date >= w.week_start - 7 * :dormant_lookback_weeks AND a.activity_date < w.week_start + 7
    GROUP BY w.week_start, a.user_id
), classified AS (
    SELECT m.week_start, m.user_id,
           CASE
               WHEN m.created_at >= m.week_start_ts THEN 'new'
               WHEN COALESCE(a.active_days, 0) > 0 AND COALESCE(a.previous_event_count, 0) = 0 THEN 'resurrected'
               WHEN a.active_days > 0 AND a.previous_event_count >= :decline_min_events
                    AND a.event_count <= (1 - :decline_ratio) * a.previous_event_count THEN 'declining'
               WHEN a.active_days >= :power_min_active_days THEN 'power'
               WHEN a.active_days >= :active_min_active_days THEN 'active'
               WHEN a.active_days >= 1 THEN 'casual'
               WHEN a.last_activity_date IS NOT NULL THEN 'dormant'
               ELSE 'churned'
           END AS segment,
           COALESCE(a.active_days, 0) AS active_days, COALESCE(a.event_count, 0) AS event_count,
           COALESCE(a.previous_event_count, 0) AS previous_event_count,
           COALESCE(a.sessions_started, 0) AS sessions_started, COALESCE(a.session_minutes, 0) AS session_minutes,
           a.last_activity_date
    FROM members m LEFT JOIN activity a USING (week_start, user_id)
), with_previous AS (
    SELECT c.*, lag(segment) OVER (PARTITION BY user_id ORDER BY week_start) AS previous_segment,
           lag(week_start) OVER (PARTITION BY user_id ORDER BY week_start) AS previous_week_start
    FROM classified c
)
SELECT week_start, user_id, segment,
       CASE WHEN previous_week_start = week_start - 7 THEN previous_segment END,
       active_days, event_count, previous_event_count, sessions_started, session_minutes, last_activity_date
FROM with_previous
WHERE week_start >= :start_date;
"""

SEGMENT_DISTRIBUTION_SQL = """
SELECT week_start, segment, count(*) AS users
FROM {rs}.weekly_segments
WHERE week_start >= :start_date AND week_start < :end_date
GROUP BY week_start, segment
ORDER BY week_start, segment
"""

# One as-of day. The 7-day windows end on (and include) the as-of day: [D-6, D] against [D-13, D-7].
DORMANT_USERS_SQL = """
DELETE FROM {rs}.dormant_users WHERE as_of_date = :as_of;
INSERT INTO {rs}.dormant_users (as_of_date, user_id, email, name, signed_up_at, last_activity_at, days_inactive,
    reason, recent_events, previous_events, last_actions, subscription_status, plan_name, mrr_cents,
    cancel_at_period_end, targeted)
WITH subscriptions AS (
    -- A user's best current subscription decides status and plan; MRR adds up all of them.
    SELECT DISTINCT ON (user_id) user_id, status, COALESCE(product_name, plan_name) AS plan_name,
           sum(mrr_cents) OVER (PARTITION BY user_id) AS mrr_cents,
           bool_or(cancel_at_period_end) OVER (PARTITION BY user_id) AS cancel_at_period_end,
           COALESCE(ended_at, canceled_at) AS ended_at
    FROM {rs}.stripe_subscriptions
    WHERE user_id IS NOT NULL
    ORDER BY user_id,
             array_position(ARRAY['active', 'past_due', 'trialing', 'unpaid', 'incomplete', 'paused'], status) NULLS LAST,
             COALESCE(ended_at, canceled_at) DESC NULLS FIRST, mrr_cents DESC
), activity AS (
    SELECT user_id,
           max(activity_date) AS last_active_date,
           max(last_event_at) AS last_activity_at,
           COALESCE(sum(event_count) FILTER (WHERE activity_date > CAST(:as_of AS date) - 7), 0) AS recent_events,
           COALESCE(sum(event_count) FILTER (WHERE activity_date > CAST(:as_of AS date) - 14
                                               AND activity_date <= CAST(:as_of AS date) - 7), 0) AS previous_events
    FROM {rs}.daily_activity
    WHERE activity_date >= CAST(:as_of AS date) - GREATEST(:lost_after_days, 13)
      AND activity_date <= :as_of
      AND event_count > 0
    GROUP BY user_id
), candidates AS (
    SELECT a.*, CAST(:as_of AS date) - a.last_active_date AS days_inactive,
           CASE
               WHEN CAST(:as_of AS date) - a.last_active_date BETWEEN :dormant_after_days AND :lost_after_days
                   THEN 'inactive'
               WHEN a.previous_events >= :decline_min_events
                    AND a.recent_events <= (1 - :decline_ratio) * a.previous_events
                    AND CAST(:as_of AS date) - a.last_active_date <= :lost_after_days
                   THEN 'declining'
           END AS reason
    FROM activity a
)
SELECT CAST(:as_of AS date), c.user_id, c.email, c.name, c.created_at, c.last_activity_at, c.days_inactive, c.reason,
       c.recent_events, c.previous_events,
       CASE WHEN carried.user_id IS NOT NULL THEN (
            SELECT COALESCE(jsonb_agg(kept.action ORDER BY kept.position), '[]'::jsonb) AS last_actions
            FROM jsonb_array_elements(carried.last_actions) WITH ORDINALITY AS kept(action, position)
            WHERE kept.position <= :last_actions AND (kept.action->>'occurred_at')::timestamptz >= :lookback_ts
       ) ELSE (
            SELECT COALESCE(jsonb_agg(jsonb_build_object(
                       'event_type', x.event_type,
                       'occurred_at', x.occurred_at,
                       'properties', COALESCE((
                           SELECT jsonb_object_agg(p.key, p.value)
                           FROM (SELECT key, value
                                 FROM jsonb_each(CASE WHEN jsonb_typeof(x.properties) = 'object' THEN x.properties
                                                      ELSE '{}'::jsonb END)
                                 WHERE jsonb_typeof(value) IN ('string', 'number', 'boolean') AND length(value::text) <= 200
                                 ORDER BY key LIMIT 8) p), '{}'::jsonb)
                   ) ORDER BY x.occurred_at DESC, x.id DESC), '[]'::jsonb) AS last_actions
            FROM (
                -- The most recent distinct event types, newest first: walk the user's events backwards through
                -- the (user_id, occurred_at) index, each step taking the newest older event of a type not seen
                -- yet. The first event of each type met this way is its latest, so this equals "latest event per
                -- type, newest :last_actions of them", while reading a handful of index entries, not 90 days.
                WITH RECURSIVE picks AS (
                    (SELECT 1 AS n, ARRAY[e.event_type] AS seen, e.id, e.event_type, e.occurred_at, e.properties
                     FROM {rs}.source_events e
                     WHERE e.user_id = c.user_id AND e.occurred_at < :end_ts AND e.occurred_at >= :lookback_ts
                     ORDER BY e.occurred_at DESC, e.id DESC
                     LIMIT 1)
                    UNION ALL
                    (SELECT p.n + 1, p.seen || older.event_type, older.id, older.event_type, older.occurred_at, older.properties
                     FROM picks p
                     CROSS JOIN LATERAL (
                         SELECT e.id, e.event_type, e.occurred_at, e.properties
                         FROM {rs}.source_events e
                         WHERE e.user_id = c.user_id AND e.occurred_at >= :lookback_ts
                           AND e.occurred_at <= p.occurred_at AND (e.occurred_at, e.id) < (p.occurred_at, p.id)
                           AND e.event_type <> ALL (p.seen)
                         ORDER BY e.occurred_at DESC, e.id DESC
                         LIMIT 1
                     ) older
                     WHERE p.n < :last_actions)
                )
                SELECT id, event_type, occurred_at, properties FROM picks
            ) x
       ) END,
       COALESCE(c.status, 'none'), c.plan_name, COALESCE(c.mrr_cents, 0), COALESCE(c.cancel_at_period_end, false),
       COALESCE(c.status, 'none') = ANY(:target_statuses)
           AND (c.ended_at IS NULL OR c.ended_at >= :end_ts - make_interval(days => :exclude_ended_after_days))
FROM (
    SELECT c.user_id, c.last_activity_at, c.days_inactive, c.reason, c.recent_events, c.previous_events,
           u.email, u.name, u.created_at, s.status, s.plan_name, s.mrr_cents, s.cancel_at_period_end, s.ended_at
    FROM candidates c
    JOIN {rs}.source_users u ON u.id = c.user_id
    LEFT JOIN subscriptions s ON s.user_id = c.user_id
    WHERE c.reason IS NOT NULL
      AND u.created_at < ((CAST(:as_of AS date) + 1 - :min_account_age_days)::timestamp AT TIME ZONE :tz)
    -- In the order of their last activity: events are appended in time order, so the per-user lookups
    -- below then sweep the events table instead of jumping around it (which matters once it outgrows
    -- memory: 1,000,000 users, 100,000,000 events).
    ORDER BY c.last_activity_at, c.user_id
) c
-- Yesterday's row of a user whose last activity has not moved: no event came since, so today's last
-- actions are yesterday's minus those that fell out of the lookback window (the oldest, at the end).
-- Only a full list can be carried: a shorter one may have been cut by a smaller `last_actions` setting.
-- Most dormant users stay dormant for weeks, so the CASE above leaves the index walk to the few who
-- became dormant (or active again) since yesterday; at 1,000,000 users that is 378,000 walks a day fewer.
LEFT JOIN {rs}.dormant_users carried
       ON carried.as_of_date = CAST(:as_of AS date) - 1 AND carried.user_id = c.user_id
      AND carried.last_activity_at = c.last_activity_at
      AND jsonb_array_length(carried.last_actions) >= :last_actions;
"""

DORMANT_SUMMARY_SQL = """
SELECT as_of_date, reason, count(*) AS users
FROM {rs}.dormant_users
WHERE as_of_date >= :start_date AND as_of_date < :end_date
GROUP BY as_of_date, reason ORDER BY as_of_date, reason
"""

MRR_AT_RISK_SQL = """
SELECT subscription_status, count(*) AS users, count(*) FILTER (WHERE targeted) AS targeted,
       sum(mrr_cents)::bigint AS mrr_cents, count(*) FILTER (WHERE cancel_at_period_end) AS cancel_at_period_end
FROM {rs}.dormant_users WHERE as_of_date = :as_of
GROUP BY subscription_status ORDER BY sum(mrr_cents) DESC, subscription_status
"""

DORMANT_PREVIEW_SQL = """
SELECT user_id, days_inactive, reason, subscription_status AS status, plan_name AS plan,
       round(mrr_cents / 100.0, 2) AS mrr, targeted,
       (SELECT string_agg(a->>'event_type', ', ') FROM jsonb_array_elements(last_actions) a) AS last_actions
FROM {rs}.dormant_users WHERE as_of_date = :as_of
ORDER BY mrr_cents DESC, days_inactive DESC, user_id LIMIT 10
"""
