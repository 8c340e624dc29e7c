"""pg_search: a pg_trgm index for text search (PostgreSQL only)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

On a large history the index takes a while to build (about a minute per few million jobs);
it is left out, with a warning, when this role may not create the pg_trgm extension.
"""

from alembic import op

from halite_core.store.schema import create_pg_search_index

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# The same statements as halite_core.store.schema.PG_SEARCH_DDL at this revision.
SEARCH_TEXT = (
    "(coalesce(function, '') || ' ' || coalesce(target, '') || ' ' || coalesce(\"user\", ''))"
)
DDL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX ix_jobs_index_search_trgm ON jobs_index USING gin ({SEARCH_TEXT} gin_trgm_ops)",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        create_pg_search_index(bind, DDL)  # left out, with a warning, if the role may not


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_jobs_index_search_trgm")
