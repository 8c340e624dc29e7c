"""initial schema: jobs_index and job_returns

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs_index",
        sa.Column("jid", sa.String(length=64), nullable=False),
        sa.Column("function", sa.String(length=255), nullable=True),
        sa.Column("target", sa.Text(), nullable=True),
        sa.Column("target_type", sa.String(length=32), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("arguments", JSON_DOC, nullable=True),
        sa.Column("kwargs", JSON_DOC, nullable=True),
        sa.Column("start_time", UTC_TIME, nullable=False),
        sa.Column("end_time", UTC_TIME, nullable=True),
        sa.Column("last_return_at", UTC_TIME, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("minions_targeted", sa.Integer(), nullable=False),
        sa.Column("minions_returned", sa.Integer(), nullable=False),
        sa.Column("minions_failed", sa.Integer(), nullable=False),
        sa.Column("master_id", sa.String(length=255), nullable=True),
        sa.Column("load", JSON_DOC, nullable=True),
        sa.PrimaryKeyConstraint("jid", name=op.f("pk_jobs_index")),
    )
    for columns in (
        ["start_time", "jid"],
        ["function", "start_time", "jid"],
        ["user", "start_time", "jid"],
        ["target", "start_time", "jid"],
        ["status", "start_time", "jid"],
    ):
        op.create_index(op.f("ix_jobs_index_" + "_".join(columns)), "jobs_index", columns)

    op.create_table(
        "job_returns",
        sa.Column("jid", sa.String(length=64), nullable=False),
        sa.Column("minion", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("expected", sa.Boolean(), nullable=False),
        sa.Column("function", sa.String(length=255), nullable=True),
        sa.Column("start_time", UTC_TIME, nullable=False),
        sa.Column("returned_at", UTC_TIME, nullable=True),
        sa.Column("return_value", JSON_DOC, nullable=True),
        sa.Column("return_truncated", sa.Boolean(), nullable=False),
        sa.Column("retcode", sa.Integer(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("out", sa.String(length=64), nullable=True),
        sa.Column("states_total", sa.Integer(), nullable=True),
        sa.Column("states_passed", sa.Integer(), nullable=True),
        sa.Column("states_failed", sa.Integer(), nullable=True),
        sa.Column("states_changed", sa.Integer(), nullable=True),
        sa.Column("states_duration_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["jid"],
            ["jobs_index.jid"],
            name=op.f("fk_job_returns_jid_jobs_index"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("jid", "minion", name=op.f("pk_job_returns")),
    )
    op.create_index(
        op.f("ix_job_returns_minion_start_time_jid"),
        "job_returns",
        ["minion", "start_time", "jid"],
    )


def downgrade() -> None:
    op.drop_table("job_returns")
    op.drop_table("jobs_index")
