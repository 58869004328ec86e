-- Once per PostgreSQL cluster, as a superuser:
--   psql -v app_password=... -v retention_password=... -d postgres -f deploy/roles.sql
CREATE ROLE app LOGIN PASSWORD :'app_password';              -- the app: owns its tables
CREATE ROLE retention LOGIN PASSWORD :'retention_password';  -- retention-pipeline: no superuser, no ownership
