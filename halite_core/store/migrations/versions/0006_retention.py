"""retention: jobs_index.created_at, cleaned_jobs for returns that arrive late, and
audit_log.entry_id so that a replayed journal appends no entry twice

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Existing jobs get their start time as ``created_at`` (one UPDATE of the whole table: on a
large PostgreSQL history it rewrites every row, about a minute per few million jobs, and
holds the table's write lock meanwhile; Salt keeps working, the writes wait in the
journals and the spool).
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs_index") as batch:
        batch.add_column(sa.Column("created_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs_index SET created_at = start_time WHERE created_at IS NULL")
    op.create_index(op.f("ix_jobs_index_created_at"), "jobs_index", ["created_at"])
    op.create_table(
        "cleaned_jobs",
        sa.Column("jid", sa.String(length=64), nullable=False),
        sa.Column("cleaned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jid", name=op.f("pk_cleaned_jobs")),
    )
    op.create_index(op.f("ix_cleaned_jobs_cleaned_at"), "cleaned_jobs", ["cleaned_at"])
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("entry_id", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_audit_log_entry_id"), "audit_log", ["entry_id"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_log_entry_id"), table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("entry_id")
    op.drop_table("cleaned_jobs")
    op.drop_index(op.f("ix_jobs_index_created_at"), table_name="jobs_index")
    with op.batch_alter_table("jobs_index") as batch:
        batch.drop_column("created_at")
