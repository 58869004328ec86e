"""Alembic's entry point, in code: `retention_pipeline.schema` hands it an open connection (whose
transaction holds the install lock) and the schema; the version table lives in that schema."""

from alembic import context

context.configure(
    connection=context.config.attributes["connection"],
    version_table_schema=context.config.attributes["schema"],
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
