"""reruns: the job a job runs again

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

``jobs_index.rerun_of`` holds, for a job published by ``salt-run halite.rerun`` (or the
API's and the page's Re-run), the jid of the job it runs again; NULL for every other job.
It is no foreign key: retention may remove the first job before its re-run, whose link then
names a jid the index no longer holds. The partial index holds only the re-runs, so that a
job's detail finds its re-runs at no cost on a large history.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

RERUNS = "rerun_of IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("jobs_index") as batch:
        batch.add_column(sa.Column("rerun_of", sa.String(64), nullable=True))
    op.create_index(
        op.f("ix_jobs_index_rerun_of"),
        "jobs_index",
        ["rerun_of", "jid"],
        postgresql_where=sa.text(RERUNS),
        sqlite_where=sa.text(RERUNS),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_index_rerun_of"), table_name="jobs_index")
    with op.batch_alter_table("jobs_index") as batch:
        batch.drop_column("rerun_of")
