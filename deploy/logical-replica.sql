-- The pipeline's heavy reads off the app's primary: a separate PostgreSQL ("analytics") receives the
-- app's three tables and the trigger's queue (retention.activity_queue) by logical replication, and hosts the
-- pipeline's own schema. The pipeline then needs no change: RETENTION_DATABASE_URL points at the
-- analytics server. Why not a physical hot standby: every asset writes its table in the `retention`
-- schema, and a standby accepts no writes. Run the sections in order; names in <> are yours.

-- 1. On the primary. postgresql.conf (restart): wal_level = logical, and max_slot_wal_keep_size
--    (e.g. '50GB') so a subscriber that stops cannot fill the primary's disk with retained WAL.
--
--    The trigger stays here: it runs inside the app's INSERTs, and on a subscriber it would never
--    fire (the apply worker fires row triggers only, and this one is per statement). Install it
--    against the primary, once:
--      RETENTION_DATABASE_URL=postgresql://<owner>@<primary>/<app> uv run retention-pipeline trigger install
--    This also creates the `retention` schema on the primary; only the trigger's queue is written
--    there, and its inserts alone are published. Nobody drains it on the primary: delete what it holds
--    now and then (a delete is not published; the analytics server drains its own copy), e.g. daily:
--      psql "$PRIMARY_URL" -c 'DELETE FROM retention.activity_queue'

CREATE ROLE retention_replication WITH LOGIN REPLICATION PASSWORD '<secret>';
GRANT USAGE ON SCHEMA retention TO retention_replication;
GRANT SELECT ON public.users, public.events, public.auth_sessions, retention.activity_queue TO retention_replication;

-- Only what the pipeline reads. Tables need a primary key (the default replica identity) for their
-- updates and deletes to replicate; events are only inserted.
CREATE PUBLICATION retention_source
    FOR TABLE public.users, public.events, public.auth_sessions;
-- The queue: inserts only (it has no key, and the primary's deletes must not reach the analytics server).
CREATE PUBLICATION retention_queue FOR TABLE retention.activity_queue WITH (publish = 'insert');

-- 2. On the analytics server, as the pipeline's own role (ANALYTICS_URL): it must own the `retention`
--    schema, whose comment fingerprints its DDL. The table definitions come from the primary; the
--    dump of events carries the trigger, whose function is not there yet: drop that line (step 5
--    installs it).
--      psql "$ANALYTICS_URL" -c 'CREATE SCHEMA IF NOT EXISTS retention'
--      pg_dump --schema-only --no-owner --no-acl -t public.users -t public.events \
--          -t public.auth_sessions -t retention.activity_queue "$PRIMARY_URL" \
--        | grep -v 'retention_track_user_activity' | psql "$ANALYTICS_URL"

-- 3. On the analytics server. The indexes the pipeline reads through (docs/deployment.md: "What the pipeline
--    needs from the app database"), if the app's own dump did not bring them. Here they cost the
--    app's inserts nothing: only the subscriber's apply worker maintains them.
CREATE INDEX IF NOT EXISTS events_occurred_at_idx ON public.events (occurred_at);
CREATE INDEX IF NOT EXISTS events_user_id_occurred_at_idx ON public.events (user_id, occurred_at);
CREATE INDEX IF NOT EXISTS auth_sessions_started_at_idx ON public.auth_sessions (started_at);

-- As a superuser (or a member of pg_create_subscription). The initial copy reads each table once on
-- the primary (100,000,000 events at 1,000,000 users: schedule it off-peak); after that, changes
-- stream as they commit.
CREATE SUBSCRIPTION retention_source
    CONNECTION 'host=<primary> dbname=<app> user=retention_replication password=<secret> sslmode=require'
    PUBLICATION retention_source, retention_queue;

-- 4. Point the pipeline and the Flask blueprint at the analytics server (RETENTION_DATABASE_URL in the
--    retention-pipeline-env secret; the blueprint's AppDatabase url): the ledger, the suppressions and
--    every snapshot live there now. The pipeline's role needs CREATE on that database and SELECT on
--    the replicated tables, as docs/deployment.md "Pointing it at a real app database" says for the primary.
--
-- 5. Once the initial copy is done (every row of pg_subscription_rel in state 'r'), on the analytics
--    server, as the pipeline's role:
--      RETENTION_DATABASE_URL="$ANALYTICS_URL" uv run retention-pipeline trigger install
--    It fills user_activity from the copied events and drops the copied queue rows (their events are
--    among them). Its trigger there never fires (the apply worker fires no statement trigger); the
--    `trigger_health` check finds it. From then on the pipeline's drains fold the queue rows that
--    arrive with their events (one primary transaction is applied as one).
--
-- What to watch, since the pipeline does not check replication lag: a stalled subscription makes the
-- morning run compute yesterday from the rows that had arrived, without an error. Before 09:00:
--   on the analytics server: SELECT subname, latest_end_time FROM pg_stat_subscription;
--   on the primary:          SELECT slot_name, active, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn))
--                            FROM pg_replication_slots;
-- Logical replication copies rows, not DDL: apply the app's migrations to these three tables on the
-- analytics server first (an added column there is harmless until the primary sends it).
