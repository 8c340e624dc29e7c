"""failed states: on PostgreSQL a partial index of the failed states for halite.state

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

PostgreSQL only (SQLite: nothing; its planner would not use such an index). The index
``(state_id, result, minion, start_time, test_run)`` of ``state_results`` becomes
``ix_state_results_failed``, ``(state_id, minion, start_time, test_run)`` over the rows
whose result is ``failed`` alone. The totals of ``halite.state`` read the same entries as
before; the changed states, most of the rows, no longer cost an entry with every batch.

On PostgreSQL the new index is built in each partition first; while it is built (a read
of ``state_results``, which indexes only its failed rows) the table's writes wait in
halite's journals and its reads go on. The old index is dropped last, which locks the
table out for the moment until the commit.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

OLD = "ix_state_results_state_id_result_minion_start_time_test_run"
NEW = "ix_state_results_failed"
FAILED = sa.text("result = 'failed'")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Built first, the old one dropped last: the build lets reads go on (a SHARE lock),
    # the drop locks the table out, until the commit only.
    op.create_index(
        NEW,
        "state_results",
        ["state_id", "minion", "start_time", "test_run"],
        postgresql_where=FAILED,
    )
    op.drop_index(OLD, table_name="state_results")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        OLD, "state_results", ["state_id", "result", "minion", "start_time", "test_run"]
    )
    op.drop_index(NEW, table_name="state_results")
