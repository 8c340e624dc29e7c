"""pg_search: a pg_trgm index for text search (PostgreSQL only)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

On a large history the index takes a while to build (about a minute per few million jobs);
it is left out, with a warning, when this role may not create the pg_trgm extension.
"""

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

log = logging.getLogger("halite_core.migrations")

# The same statements as halite_core.models.PG_SEARCH_DDL at this revision.
SEARCH_TEXT = (
    "(coalesce(function, '') || ' ' || coalesce(target, '') || ' ' || coalesce(\"user\", ''))"
)
DDL = (
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX ix_jobs_index_search_trgm ON jobs_index USING gin ({SEARCH_TEXT} gin_trgm_ops)",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            for statement in DDL:
                bind.exec_driver_sql(statement)
    except DBAPIError as exc:
        log.warning(
            "halite: no search index on PostgreSQL (%s); search scans the jobs instead. "
            "A database owner can add it with: %s;",
            str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
            "; ".join(DDL),
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_jobs_index_search_trgm")
