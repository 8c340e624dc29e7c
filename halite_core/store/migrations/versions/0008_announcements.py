"""announcements: when the engine announced each job's completion on the master's bus

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

``jobs_index.announced_at`` is set once the engine has fired ``halite/job/<jid>/complete``
for a job (or decided not to: a bookkeeping job, one that completed too long ago). Jobs
complete before this revision count as announced (their ``end_time``, else their
``start_time``): an upgrade fires nothing for the history. The partial index holds only the
complete jobs still to announce, so the engine's look for them costs nothing on a large
history. On a large PostgreSQL history the UPDATE rewrites every complete job's row (about
a minute per few million jobs); Salt keeps working meanwhile, its writes wait in the
journals.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

UNANNOUNCED = "announced_at IS NULL AND status = 'complete'"


def upgrade() -> None:
    with op.batch_alter_table("jobs_index") as batch:
        batch.add_column(sa.Column("announced_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE jobs_index SET announced_at = coalesce(end_time, start_time)"
        " WHERE status = 'complete'"
    )
    op.create_index(
        op.f("ix_jobs_index_unannounced"),
        "jobs_index",
        ["end_time"],
        postgresql_where=sa.text(UNANNOUNCED),
        sqlite_where=sa.text(UNANNOUNCED),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_index_unannounced"), table_name="jobs_index")
    with op.batch_alter_table("jobs_index") as batch:
        batch.drop_column("announced_at")
