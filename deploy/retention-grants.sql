-- In the app's database, once its tables exist, as a superuser (or as `app` for the last three):
--   psql -d app -f deploy/retention-grants.sql
GRANT CREATE ON DATABASE :"DBNAME" TO retention;         -- it creates and owns the `retention` schema
GRANT USAGE ON SCHEMA public TO retention;
GRANT SELECT ON users, events, auth_sessions TO retention;
GRANT TRIGGER ON events TO retention;                    -- attach its trigger, without owning the table
