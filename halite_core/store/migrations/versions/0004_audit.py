"""audit: the audit_log table; jobs_index listed by master

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

JSONDoc = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_index(
        op.f("ix_jobs_index_master_id_start_time_jid"),
        "jobs_index",
        ["master_id", "start_time", "jid"],
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("resource", sa.String(length=255), nullable=True),
        sa.Column("jid", sa.String(length=64), nullable=True),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("outcome", JSONDoc, nullable=True),
        sa.Column("arguments", JSONDoc, nullable=True),
        sa.Column("master_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    for columns in (["at", "id"], ["user", "at", "id"], ["action", "at", "id"],
                    ["decision", "at", "id"]):  # fmt: skip
        op.create_index(op.f(f"ix_audit_log_{'_'.join(columns)}"), "audit_log", columns)


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_jobs_index_master_id_start_time_jid"), table_name="jobs_index")
