-- Once per PostgreSQL cluster, as a superuser: Dagster's own role and database (run history, event logs,
-- schedule ticks), apart from the app's database. DAGSTER_PG_URL logs in as this role.
--   psql -v dagster_password=... -d postgres -f deploy/dagster-storage.sql
CREATE ROLE dagster LOGIN PASSWORD :'dagster_password';
CREATE DATABASE dagster OWNER dagster;
