"""lz4: the large JSON columns compressed with lz4 on PostgreSQL

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

PostgreSQL 14 on (SQLite: nothing): ``job_returns.return_value`` and ``jobs_index.load``,
in each table and each of its partitions, are compressed with lz4 instead of pglz. A 1 MB
state run's return is stored several times faster (pglz took most of the time PostgreSQL
spent on it) and read back faster, at about the same size. Later partitions take their
parent's method.

It changes the catalogue only, in a moment: values already stored keep pglz until they are
rewritten. It locks the two tables for that moment (writes wait in halite's journals). A
server before 14, or built without lz4, keeps pglz (a note in the log). The downgrade puts
the columns back to the server's default method.
"""

from alembic import op

from halite_core.store.schema import set_pg_compression

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

# The same columns as halite_core.store.schema.PG_LZ4_COLUMNS at this revision.
COLUMNS = (("job_returns", "return_value"), ("jobs_index", "load"))


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        set_pg_compression(bind, COLUMNS)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        set_pg_compression(bind, COLUMNS, method="default")
