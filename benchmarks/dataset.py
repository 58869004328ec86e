"""A synthetic app dataset built inside PostgreSQL with set-based SQL (generate_series, no Python rows).

Shape (defaults: 100,000 users, 10,000,000 events over 90 days):
- users: 75% signed up in the year before the window, 25% during it (active from the next day on);
- a per-user rate of events per active day drawn from a Pareto distribution (alpha 1.2, capped at
  400x the minimum), scaled so the events add up to the requested total: many casual users active on
  a fraction of days, a heavy tail of power users with dozens to hundreds of events a day;
- 35% of users stop at a random day of the window (churn), 12% decline by 10% a day over the last
  30 days; each (user, day) count is floor(rate * trend * 2U + U'), whose mean is rate * trend;
- 0.5% of events are anonymous (NULL user), as the app's pre-login page views are;
- one auth session per active user-day, from a few minutes before the first event to a few
  minutes after the last (5% never seen again: NULL last_seen_at);
- a Stripe subscription (`retention.stripe_subscriptions`) for the 25% of users who pay.

Events are generated day by day, each day sorted by time, so ids grow with time and the table is
physically ordered like a real append-only events table. Indexes are the ones the demo creates
(`demo_data.create_app_tables`), built after the load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time

from retention_pipeline.local import demo_data

ORPHAN_SHARE = 0.005
CHURN_SHARE = 0.35
DECLINE_SHARE = 0.12
NEW_USER_SHARE = 0.25
PAYING_SHARE = 0.25
PARETO_ALPHA = 1.2
RATE_CAP = 400.0
DECLINE_FACTOR = 0.9


@dataclass(frozen=True)
class DatasetSpec:
    users: int
    events: int
    days: int
    as_of: date
    seed: int = 42

    @property
    def first_day(self) -> date:
        return self.as_of - timedelta(days=self.days - 1)

    @property
    def database(self) -> str:
        return f"bench_{self.users}"


_TABLES_NO_INDEXES = """
DROP TABLE IF EXISTS public.events, public.auth_sessions, public.users CASCADE;
DROP SCHEMA IF EXISTS bench CASCADE;
DROP SCHEMA IF EXISTS retention CASCADE;
CREATE SCHEMA bench;
CREATE TABLE public.users (id bigint NOT NULL, email text NOT NULL, name text NULL, created_at timestamptz NOT NULL,
                           stripe_customer_id text NULL);
CREATE TABLE public.events (id bigint NOT NULL, user_id bigint NULL, event_type text NOT NULL,
                            occurred_at timestamptz NOT NULL, properties jsonb NULL);
CREATE TABLE public.auth_sessions (id bigint NOT NULL, user_id bigint NOT NULL, started_at timestamptz NOT NULL,
                                   last_seen_at timestamptz NULL);
CREATE TABLE bench.params (users integer, events bigint, days integer, seed integer, as_of date,
                           base_max_event_id bigint, base_max_session_id bigint, built_at timestamptz,
                           build_seconds double precision, complete boolean NOT NULL DEFAULT false);
"""

_PROFILE_SQL = """
CREATE UNLOGGED TABLE bench.profile AS
WITH base AS (
    SELECT g AS user_id,
           CASE WHEN random() < %(new_share)s THEN floor(random() * %(days)s)::int
                ELSE -1 - floor(random() * 365)::int END AS created_day,
           random() AS r_churn, random() AS r_churn_day, random() AS r_rate,
           random() AS r_decline, random() AS r_decline_day, random() AS r_pay, random() AS r_signup
    FROM generate_series(1, %(users)s) AS g
), spans AS (
    SELECT b.*, GREATEST(created_day + 1, 0) AS start_day
    FROM base b
)
SELECT user_id, created_day, start_day,
       CASE WHEN r_churn < %(churn_share)s AND start_day < %(days)s
            THEN start_day + floor(r_churn_day * (%(days)s - start_day))::int
            ELSE %(days)s - 1 END AS end_day,
       LEAST(power(1.0 - r_rate, -1.0 / %(alpha)s), %(rate_cap)s) AS rate_raw,
       CASE WHEN r_decline < %(decline_share)s THEN %(days)s - 30 + floor(r_decline_day * 30)::int
            ELSE 1000000 END AS decline_start,
       r_pay < %(paying_share)s AS paying,
       r_signup,
       0.0::double precision AS rate
FROM spans;
"""

# Expected events of each user in closed form (active days before the decline plus a geometric sum
# after it), so the rates can be scaled to the requested total before anything is generated.
_SCALE_RATES_SQL = """
WITH expected AS (
    SELECT user_id, rate_raw * (
        GREATEST(LEAST(end_day, decline_start - 1) - start_day + 1, 0)
        + CASE WHEN end_day >= GREATEST(start_day, decline_start)
               THEN power(%(q)s, GREATEST(start_day, decline_start) - decline_start)
                    * (1 - power(%(q)s, end_day - GREATEST(start_day, decline_start) + 1)) / (1 - %(q)s)
               ELSE 0 END) AS events
    FROM bench.profile
)
UPDATE bench.profile p SET rate = p.rate_raw * %(target)s / (SELECT sum(events) FROM expected);
"""

_USERS_SQL = """
INSERT INTO public.users (id, email, name, created_at, stripe_customer_id)
SELECT user_id, 'user' || user_id || '@bench.example.com',
       CASE WHEN user_id %% 10 = 0 THEN NULL ELSE 'User ' || user_id END,
       (%(first_day)s::date + created_day)::timestamp AT TIME ZONE 'UTC'
           + make_interval(secs => 25200 + r_signup * 54000),
       CASE WHEN paying THEN 'cus_b' || user_id END
FROM bench.profile ORDER BY user_id;
"""

_STAGE_DDL = "CREATE UNLOGGED TABLE bench.stage (user_id bigint, ts timestamptz NOT NULL, r double precision NOT NULL)"

# One day: how many events each active user has (mean rate * trend), expanded with generate_series.
_STAGE_DAY_SQL = """
TRUNCATE bench.stage;
INSERT INTO bench.stage (user_id, ts, r)
SELECT c.user_id, %(day_start)s + (random() * 86399999)::bigint * interval '1 millisecond', random()
FROM (
    SELECT user_id,
           floor(rate * CASE WHEN %(d)s < decline_start THEN 1.0 ELSE power(%(q)s, %(d)s - decline_start) END
                 * 2 * random() + random())::int AS n
    FROM bench.profile
    WHERE start_day <= %(d)s AND end_day >= %(d)s
) c
CROSS JOIN LATERAL generate_series(1, c.n)
UNION ALL
SELECT NULL, %(day_start)s + (random() * 86399999)::bigint * interval '1 millisecond', -1.0
FROM generate_series(1, %(orphans)s);
"""

_EVENTS_DAY_SQL = """
INSERT INTO public.events (id, user_id, event_type, occurred_at, properties)
SELECT %(base)s + row_number() OVER (ORDER BY ts, user_id, r), user_id, event_type, ts,
       CASE event_type
           WHEN 'create_task' THEN jsonb_build_object('project_name', 'Project ' || (user_id %% 7 + 1),
                                                      'task_title', 'Task ' || floor(r * 1000)::int)
           WHEN 'complete_task' THEN jsonb_build_object('task_title', 'Task ' || floor(r * 1000)::int)
           WHEN 'comment' THEN jsonb_build_object('project_name', 'Project ' || (user_id %% 7 + 1))
           WHEN 'create_project' THEN jsonb_build_object('project_name', 'Project ' || (user_id %% 7 + 1))
           WHEN 'upload_file' THEN jsonb_build_object('file_name', 'file-' || floor(r * 100)::int || '.pdf',
                                                      'size_kb', floor(r * 5000)::int)
           WHEN 'view_dashboard' THEN jsonb_build_object('dashboard', 'overview')
           WHEN 'view_pricing' THEN jsonb_build_object('referrer', 'google')
       END
FROM (
    SELECT user_id, ts, r,
           CASE WHEN r < 0 THEN 'view_pricing' WHEN r < 0.30 THEN 'view_dashboard' WHEN r < 0.48 THEN 'create_task'
                WHEN r < 0.62 THEN 'complete_task' WHEN r < 0.74 THEN 'comment' WHEN r < 0.82 THEN 'login'
                WHEN r < 0.88 THEN 'upload_file' WHEN r < 0.93 THEN 'create_project'
                WHEN r < 0.97 THEN 'export_report' ELSE 'invite_member' END AS event_type
    FROM bench.stage
) t
ORDER BY ts, user_id, r;
"""

_SESSIONS_DAY_SQL = """
INSERT INTO public.auth_sessions (id, user_id, started_at, last_seen_at)
SELECT %(base)s + row_number() OVER (ORDER BY started_at, user_id), user_id, started_at, last_seen_at
FROM (
    SELECT user_id, min(ts) - (1 + floor(random() * 9)) * interval '1 minute' AS started_at,
           CASE WHEN random() < 0.05 THEN NULL ELSE max(ts) + floor(random() * 20) * interval '1 minute' END AS last_seen_at
    FROM bench.stage WHERE user_id IS NOT NULL GROUP BY user_id
) s
ORDER BY started_at, user_id;
"""

_KEYS_SQL = """
ALTER TABLE public.users ADD PRIMARY KEY (id);
ALTER TABLE public.events ADD PRIMARY KEY (id);
ALTER TABLE public.auth_sessions ADD PRIMARY KEY (id);
"""

_SUBSCRIPTIONS_SQL = """
INSERT INTO retention.stripe_subscriptions (subscription_id, customer_id, user_id, mapped_by, status, plan_name,
    product_name, billing_interval, interval_count, quantity, mrr_cents, currency, cancel_at_period_end,
    current_period_end, canceled_at, ended_at, snapshot_at)
SELECT 'sub_b' || user_id, 'cus_b' || user_id, user_id, 'stripe_customer_id', status, plan, initcap(plan),
       billing_interval, 1, quantity,
       CASE WHEN status IN ('active', 'past_due')
            THEN CASE billing_interval WHEN 'year' THEN round(price * 12 * 0.8 * quantity / 12) ELSE price * quantity END
            ELSE 0 END,
       'usd', random() < 0.05, %(now)s + random() * interval '30 days',
       CASE WHEN status = 'canceled' THEN %(now)s - random() * interval '240 days' END,
       CASE WHEN status = 'canceled' THEN %(now)s - random() * interval '240 days' END,
       %(now)s
FROM (
    SELECT user_id,
           CASE WHEN r1 < 0.80 THEN 'active' WHEN r1 < 0.86 THEN 'past_due' WHEN r1 < 0.90 THEN 'trialing'
                WHEN r1 < 0.98 THEN 'canceled' ELSE 'unpaid' END AS status,
           CASE WHEN r2 < 0.55 THEN 'starter' WHEN r2 < 0.90 THEN 'team' ELSE 'business' END AS plan,
           CASE WHEN r2 < 0.55 THEN 900 WHEN r2 < 0.90 THEN 2900 ELSE 9900 END AS price,
           CASE WHEN r3 < 0.2 THEN 'year' ELSE 'month' END AS billing_interval,
           1 + floor(r3 * 5)::int AS quantity
    FROM (SELECT user_id, random() AS r1, random() AS r2, random() AS r3 FROM bench.profile WHERE paying) r
) s;
"""


def day_start(day: date) -> datetime:
    return datetime.combine(day, clock_time(), UTC)


def existing_params(conn) -> dict | None:
    """The parameters of a completely built dataset in this database, or None."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('bench.params') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute(
            "SELECT users, events, days, seed, as_of, base_max_event_id, base_max_session_id, build_seconds "
            "FROM bench.params WHERE complete"
        )
        row = cur.fetchone()
    if row is None:
        return None
    keys = ("users", "events", "days", "seed", "as_of", "base_max_event_id", "base_max_session_id", "build_seconds")
    return dict(zip(keys, row, strict=False))


def build(conn, spec: DatasetSpec, say: Callable[[str], None], deadline: float | None = None) -> dict:
    """(Re)build the app tables of `spec` in this database; returns timings and counts. Commits."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    q = DECLINE_FACTOR
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")  # the load only; measurements run with the server default
        cur.execute("SET work_mem = '256MB'")
        cur.execute(_TABLES_NO_INDEXES)
        cur.execute("SELECT setseed(%s)", ((spec.seed % 1000) / 1000.0,))
        cur.execute(
            _PROFILE_SQL,
            {
                "users": spec.users,
                "days": spec.days,
                "new_share": NEW_USER_SHARE,
                "churn_share": CHURN_SHARE,
                "alpha": PARETO_ALPHA,
                "rate_cap": RATE_CAP,
                "decline_share": DECLINE_SHARE,
                "paying_share": PAYING_SHARE,
            },
        )
        user_events = int(spec.events * (1 - ORPHAN_SHARE))
        cur.execute(_SCALE_RATES_SQL, {"q": q, "target": user_events})
        cur.execute(_USERS_SQL, {"first_day": spec.first_day})
        cur.execute(_STAGE_DDL)
        conn.commit()
        timings["users"] = time.monotonic() - started

        t0 = time.monotonic()
        event_base = session_base = 0
        orphans_per_day = max(1, round(spec.events * ORPHAN_SHARE / spec.days))
        for d in range(spec.days):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"dataset build passed its time budget at day {d} of {spec.days}")
            day = spec.first_day + timedelta(days=d)
            cur.execute(_STAGE_DAY_SQL, {"day_start": day_start(day), "d": d, "q": q, "orphans": orphans_per_day})
            cur.execute(_EVENTS_DAY_SQL, {"base": event_base})
            event_base += cur.rowcount
            cur.execute(_SESSIONS_DAY_SQL, {"base": session_base})
            session_base += cur.rowcount
            conn.commit()
            if d % 15 == 14 or d == spec.days - 1:
                rate = event_base / (time.monotonic() - t0)
                say(f"    day {d + 1}/{spec.days}: {event_base:,} events, {session_base:,} sessions ({rate:,.0f} events/s)")
        timings["events_and_sessions"] = time.monotonic() - t0

        t0 = time.monotonic()
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute(_KEYS_SQL)
        demo_data.create_app_tables(conn)  # the demo's indexes: events (user_id, occurred_at), (occurred_at), ...
        conn.commit()
        timings["indexes"] = time.monotonic() - t0
    t0 = time.monotonic()
    old_autocommit = conn.autocommit
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) public.users, public.events, public.auth_sessions")
    conn.autocommit = old_autocommit
    timings["vacuum_analyze"] = time.monotonic() - t0
    return {"timings": timings, "events": event_base, "sessions": session_base}


def add_subscriptions(conn, now: datetime) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT setseed(0.5)")
        cur.execute(_SUBSCRIPTIONS_SQL, {"now": now})
        count = cur.rowcount
        cur.execute("DROP TABLE IF EXISTS bench.stage")
    conn.commit()
    return count


def mark_complete(conn, spec: DatasetSpec, counts: dict, build_seconds: float) -> None:
    with conn.cursor() as cur:
        cur.execute("DELETE FROM bench.params")
        cur.execute(
            "INSERT INTO bench.params (users, events, days, seed, as_of, base_max_event_id, base_max_session_id, "
            "built_at, build_seconds, complete) VALUES (%s, %s, %s, %s, %s, "
            "(SELECT max(id) FROM public.events), (SELECT max(id) FROM public.auth_sessions), now(), %s, true)",
            (spec.users, counts["events"], spec.days, spec.seed, spec.as_of, build_seconds),
        )
    conn.commit()


def describe(conn) -> dict:
    """Counts and shape of the dataset, for the report."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT (SELECT count(*) FROM public.users),
                   (SELECT count(*) FROM public.auth_sessions),
                   (SELECT count(*) FROM retention.stripe_subscriptions),
                   pg_total_relation_size('public.events'),
                   pg_database_size(current_database())
        """)
        users, sessions, subscriptions, events_bytes, db_bytes = cur.fetchone()
        cur.execute("SELECT count(*), count(*) FILTER (WHERE user_id IS NULL) FROM public.events")
        events, orphans = cur.fetchone()
        cur.execute("""
            SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY event_count), max(event_count)
            FROM retention.user_activity
        """)
        pct, top = cur.fetchone()
    return {
        "users": users,
        "events": events,
        "orphan_events": orphans,
        "auth_sessions": sessions,
        "stripe_subscriptions": subscriptions,
        "events_table_bytes": events_bytes,
        "database_bytes": db_bytes,
        "events_per_active_user_p50_p90_p99_max": [*(round(p) for p in (pct or [])), top],
    }


def spec_dict(spec: DatasetSpec) -> dict:
    out = asdict(spec)
    out["as_of"] = spec.as_of.isoformat()
    return out
