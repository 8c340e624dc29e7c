"""search: an FTS5 trigram index of jid, function, target and user (SQLite only)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

# The same statements as halite_core.store.schema.SQLITE_SEARCH_DDL at this revision.
DDL = (
    "CREATE TABLE job_search_keys (id INTEGER PRIMARY KEY, jid VARCHAR(64) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE job_search USING fts5(function, target, user, tokenize='trigram')",
    "CREATE TRIGGER jobs_index_search_insert AFTER INSERT ON jobs_index BEGIN "
    "INSERT INTO job_search_keys (jid) VALUES (new.jid); "
    "INSERT INTO job_search (rowid, function, target, user) VALUES ("
    "(SELECT id FROM job_search_keys WHERE jid = new.jid), "
    "new.function, new.target, new.user); END",
    "CREATE TRIGGER jobs_index_search_update AFTER UPDATE OF function, target, user "
    "ON jobs_index WHEN old.function IS NOT new.function OR old.target IS NOT new.target "
    "OR old.user IS NOT new.user BEGIN "
    "DELETE FROM job_search WHERE rowid = "
    "(SELECT id FROM job_search_keys WHERE jid = old.jid); "
    "INSERT INTO job_search (rowid, function, target, user) VALUES ("
    "(SELECT id FROM job_search_keys WHERE jid = new.jid), "
    "new.function, new.target, new.user); END",
    "CREATE TRIGGER jobs_index_search_delete AFTER DELETE ON jobs_index BEGIN "
    "DELETE FROM job_search WHERE rowid = "
    "(SELECT id FROM job_search_keys WHERE jid = old.jid); "
    "DELETE FROM job_search_keys WHERE jid = old.jid; END",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for statement in DDL:
        op.execute(statement)
    op.execute("INSERT INTO job_search_keys (jid) SELECT jid FROM jobs_index ORDER BY start_time")
    op.execute(
        "INSERT INTO job_search (rowid, function, target, user) "
        "SELECT k.id, j.function, j.target, j.user "
        "FROM job_search_keys AS k JOIN jobs_index AS j ON j.jid = k.jid"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for name in ("jobs_index_search_insert", "jobs_index_search_update",
                 "jobs_index_search_delete"):  # fmt: skip
        op.execute(f"DROP TRIGGER {name}")
    op.execute("DROP TABLE job_search")
    op.execute("DROP TABLE job_search_keys")
